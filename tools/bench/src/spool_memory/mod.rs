//! `superfone-bench spool-memory`: what a long Kafka outage costs the
//! bridge in memory (issue 28's figures). The bridge is a black box here
//! (spawned, read from /proc and its admin port, stopped with SIGTERM); only
//! the full spool of part (b) is written through the library (`fill`).
//! Kafka is a tansu this run starts when it brings Kafka up: until then
//! nothing listens on its port. Two parts:
//!
//! (a) **Over HTTP**: the bridge started with Kafka unreachable, its idle
//!     RSS; `entries` events over `leads` leads posted, every one answered
//!     202 (spooled); RSS while serving once the load is over. SIGTERM
//!     (Kafka still down, so the spool stays), a restart on that spool and
//!     its peak (`VmHWM`) from spawn to ready, RSS while serving; then Kafka
//!     up, the peak until the backlog is empty, and every event counted on
//!     the broker.
//! (b) **A full spool**: the idle RSS of the bridge on an empty spool; a
//!     spool of `full_bytes` (default: the configured cap less a largest
//!     record and a segment) written in the real format; the bridge reopening it (peak),
//!     serving (steady), replaying it to Kafka (peak), every event counted;
//!     then `spool drain` on a copy of the same spool, to a fresh broker
//!     (peak, every event counted).

pub mod bridge;
pub mod broker;
pub mod fill;
pub mod memory;
pub mod post;
pub mod report;

use crate::payloads::Payloads;
use crate::processes::free_local_address;
use crate::spool_memory::bridge::{Bridge, Started};
use crate::spool_memory::broker::Broker;
use crate::spool_memory::fill::Amount;
use crate::spool_memory::memory::{steady_kib, Peak, Watch};
use crate::spool_memory::report::{
    full_figures, http_figures, Drain, FullPart, Goals, HttpPart, Replay, SpoolMemoryReport,
};
use crate::verify;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use superfone_bridge::config::Config;
use superfone_bridge::vocabulary::EventKind;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Schema registry URL (up all along: only Kafka is down).
    #[arg(long, default_value = "http://127.0.0.1:28081")]
    pub registry_url: String,
    /// The tansu binary this run starts as Kafka (scripts/lib/stack.sh sets TANSU_BIN).
    #[arg(long, env = "TANSU_BIN")]
    pub tansu_bin: PathBuf,
    /// The superfone-bridge binary to measure (the release build).
    #[arg(long, default_value = "target/release/superfone-bridge")]
    pub bridge_bin: PathBuf,
    /// Seed payloads (CUSTOMER_CREATE and CDR_SUMMARY_READY left out: every
    /// event is about one of `--leads`, its Kafka key).
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// The chart whose `resources.requests.memory` the full spool is held to.
    #[arg(long, default_value = "helm/superfone-bridge/values.yaml")]
    pub chart_values: PathBuf,
    /// Results go to `<out>/<run>/bench.{json,md}`, the spools beside them
    /// (deleted at the end unless `--keep-spools`).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Free text stored with the results (what was changed for this run).
    #[arg(long)]
    pub label: Option<String>,
    /// (a) Events posted over HTTP.
    #[arg(long, default_value_t = 200_000)]
    pub entries: u64,
    /// Leads (contact ids, so Kafka keys) the events spread over, both parts.
    #[arg(long, default_value_t = 5_000)]
    pub leads: u64,
    /// (a) Clients posting at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// (a) The bound on RSS growth over the idle bridge, MiB.
    #[arg(long, default_value_t = 8.0)]
    pub growth_goal_mib: f64,
    /// (b) Entries in the full spool; 0: fill it by bytes (`--full-bytes`).
    #[arg(long, default_value_t = 0)]
    pub full_entries: u64,
    /// (b) Segment bytes of the full spool; 0: the configured `spool.max_bytes`
    /// less a largest record and a segment (readiness needs room for a largest record).
    #[arg(long, default_value_t = 0)]
    pub full_bytes: u64,
    /// Keep duplicate suppression on, as the default config has it. Off by
    /// default: its window (bounded by `dedup.max_entries`, ~110 B an
    /// entity) fills with every call and task id and would be counted as
    /// the spool's.
    #[arg(long)]
    pub dedup: bool,
    /// `kafka.startup_timeout_ms` for the bridge (default: its config's):
    /// each start with Kafka unreachable waits it out.
    #[arg(long)]
    pub kafka_startup_timeout_ms: Option<u64>,
    /// Seconds to let the bridge settle before a steady figure...
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// ...and over which its RSS is sampled (the median is reported).
    #[arg(long, default_value_t = 5.0)]
    pub steady_secs: f64,
    /// Seconds a replay or drain may take to empty the spool.
    #[arg(long, default_value_t = 1200)]
    pub replay_timeout_secs: u64,
    #[arg(long)]
    pub skip_http: bool,
    #[arg(long)]
    pub skip_full: bool,
    /// (b) Leave out `spool drain` (and the copy of the spool it drains).
    #[arg(long)]
    pub skip_drain: bool,
    #[arg(long)]
    pub keep_spools: bool,
}

/// What every part shares.
struct Run {
    options: Options,
    name: String,
    out: PathBuf,
    payloads: Arc<Payloads>,
}

/// One part: its folder, its bridge config (written to `bridge.toml`) and
/// the address its Kafka will have.
struct Part<'a> {
    run: &'a Run,
    phase: &'static str,
    dir: PathBuf,
    config: Config,
    config_path: PathBuf,
    kafka: SocketAddr,
}

pub async fn run(options: Options) -> anyhow::Result<SpoolMemoryReport> {
    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let name = format!("spoolmem{}", unix.as_secs());
    let out = options.out.join(&name);
    std::fs::create_dir_all(&out)?;
    let payloads = Payloads::load(&options.fixtures, options.leads)?.existing_leads_only()?;
    let goals = Goals {
        growth_mib: options.growth_goal_mib,
        request: memory_request(&options.chart_values)?,
    };
    let run = Run {
        options,
        name,
        out,
        payloads: Arc::new(payloads),
    };
    let mut figures = Vec::new();
    let http = if run.options.skip_http {
        None
    } else {
        let part = http_part(&Part::new(&run, "http")?).await?;
        figures.extend(http_figures(&part, &goals));
        Some(part)
    };
    let full = if run.options.skip_full {
        None
    } else {
        let part = full_part(&Part::new(&run, "full")?).await?;
        figures.extend(full_figures(&part, &goals));
        Some(part)
    };
    let report = SpoolMemoryReport {
        run: run.name.clone(),
        label: run.options.label.clone(),
        settings: settings(&run, &goals),
        http,
        full,
        figures,
    };
    std::fs::write(
        run.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(run.out.join("bench.md"), report.markdown())?;
    eprintln!("[bench] results in {}", run.out.display());
    Ok(report)
}

fn settings(run: &Run, goals: &Goals) -> serde_json::Value {
    let options = &run.options;
    serde_json::json!({
        "entries": options.entries,
        "leads": options.leads,
        "concurrency": options.concurrency,
        "full_entries": options.full_entries,
        "full_bytes": options.full_bytes,
        "dedup": options.dedup,
        "kafka_startup_timeout_ms": options.kafka_startup_timeout_ms,
        "settle_secs": options.settle_secs,
        "steady_secs": options.steady_secs,
        "memory_request": goals.request.0,
        "bridge_bin": options.bridge_bin,
        "templates": run.payloads.len(),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
    })
}

impl<'a> Part<'a> {
    fn new(run: &'a Run, phase: &'static str) -> anyhow::Result<Part<'a>> {
        let dir = run.out.join(phase);
        std::fs::create_dir_all(&dir)?;
        let options = &run.options;
        let kafka = free_local_address()?;
        let mut config = Config::load(None).context("loading the bridge config")?;
        config.kafka.brokers = kafka.to_string();
        config.registry.url = options.registry_url.clone();
        config.server.listen = free_local_address()?;
        config.admin.listen = free_local_address()?;
        config.spool.dir = std::path::absolute(dir.join("spool"))?;
        config.topics.prefix = format!("{}.{phase}.", run.name);
        config.dedup.enabled = options.dedup;
        if let Some(ms) = options.kafka_startup_timeout_ms {
            config.kafka.startup_timeout_ms = Duration::from_millis(ms);
        }
        let config_path = dir.join("bridge.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        Ok(Part {
            run,
            phase,
            dir,
            config,
            config_path,
            kafka,
        })
    }

    fn admin(&self) -> String {
        format!("http://{}", self.config.admin.listen)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn say(&self, what: &str) {
        eprintln!("[bench] {} {}: {what}", self.run.name, self.phase);
    }

    async fn start_bridge(&self, log: &str) -> anyhow::Result<Started> {
        let options = &self.run.options;
        Bridge::start(
            &options.bridge_bin,
            &self.config_path,
            &self.admin(),
            &self.log(log),
        )
        .await
    }

    async fn steady(&self, bridge: &Bridge) -> anyhow::Result<u64> {
        let options = &self.run.options;
        steady_kib(
            bridge.pid,
            Duration::from_secs_f64(options.settle_secs),
            Duration::from_secs_f64(options.steady_secs),
        )
        .await
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.run.options.replay_timeout_secs)
    }

    /// Brings Kafka up and waits until the bridge's backlog is empty,
    /// watching its memory; the broker is left running for the count.
    async fn replay(&self, bridge: &Bridge) -> anyhow::Result<(Broker, f64, Peak)> {
        self.say("Kafka up, replaying");
        let watch = Watch::start(bridge.pid, true)?;
        let started = Instant::now();
        let broker = self.start_broker("tansu").await?;
        bridge.wait_for_backlog(0, self.timeout()).await?;
        Ok((broker, started.elapsed().as_secs_f64(), watch.finish()))
    }

    async fn start_broker(&self, log: &str) -> anyhow::Result<Broker> {
        Broker::start(&self.run.options.tansu_bin, self.kafka, self.log(log)).await
    }

    /// Reads every event topic of the part back: events `0..expected` found.
    async fn count_on_broker(&self, expected: u64) -> anyhow::Result<(u64, u64)> {
        self.say("counting the events on the broker");
        let topics: Vec<String> = EventKind::ALL
            .iter()
            .map(|kind| self.config.topics.topic_for(*kind))
            .collect();
        let (brokers, run) = (self.kafka.to_string(), self.run.name.clone());
        let found =
            tokio::task::spawn_blocking(move || verify::records_on_broker(&brokers, &topics, &run))
                .await??;
        let seen = found.get(self.phase);
        let delivered = (0..expected)
            .filter(|seq| seen.is_some_and(|seen| seen.contains(seq)))
            .count() as u64;
        Ok((delivered, expected - delivered))
    }

    fn clean_up(&self) -> anyhow::Result<()> {
        if !self.run.options.keep_spools {
            for spool in ["spool", "spool-drain"] {
                let path = self.dir.join(spool);
                if path.exists() {
                    std::fs::remove_dir_all(path)?;
                }
            }
        }
        Ok(())
    }
}

/// Part (a).
async fn http_part(part: &Part<'_>) -> anyhow::Result<HttpPart> {
    let options = &part.run.options;
    let entries = options.entries;
    part.say("the bridge, Kafka unreachable");
    let first = part.start_bridge("bridge-1").await?;
    let idle_kib = part.steady(&first.bridge).await?;
    part.say(&format!(
        "posting {entries} events over {} leads",
        options.leads
    ));
    let target = post::Target {
        uri: format!(
            "http://{}{}",
            part.config.server.listen, part.config.server.ingest_path
        )
        .parse()?,
        group_id_header: part.config.server.group_id_header.parse()?,
        run: part.run.name.clone(),
        phase: part.phase.to_owned(),
    };
    let posted = post::post_all(
        target,
        Arc::clone(&part.run.payloads),
        entries,
        options.concurrency,
    )
    .await?;
    anyhow::ensure!(
        posted.count("202") == entries,
        "not every event was spooled: answers {:?}, the first other: {:?}",
        posted.statuses,
        posted.first_refusal
    );
    first
        .bridge
        .wait_for_backlog(entries, part.timeout())
        .await?;
    let steady = part.steady(&first.bridge).await?;
    part.say("SIGTERM, Kafka still down; restart on the spool");
    first.bridge.stop().await?;
    let second = part.start_bridge("bridge-2").await?;
    second
        .bridge
        .wait_for_backlog(entries, part.timeout())
        .await?;
    let restart_steady_kib = part.steady(&second.bridge).await?;
    let (broker, elapsed_s, peak) = part.replay(&second.bridge).await?;
    second.bridge.stop().await?;
    let (delivered, missing) = part.count_on_broker(entries).await?;
    broker.stop().await?;
    part.clean_up()?;
    Ok(HttpPart {
        entries,
        leads: options.leads,
        body_bytes: posted.body_bytes,
        statuses: posted.statuses,
        post_s: posted.elapsed.as_secs_f64(),
        start_peak: first.peak,
        idle_kib,
        steady_kib: steady,
        restart_ready_s: second.ready_after.as_secs_f64(),
        restart_peak: second.peak,
        restart_steady_kib,
        replay: Replay {
            elapsed_s,
            peak,
            delivered,
            missing,
        },
    })
}

/// Part (b).
async fn full_part(part: &Part<'_>) -> anyhow::Result<FullPart> {
    let options = &part.run.options;
    part.say("the bridge on an empty spool, Kafka unreachable");
    let empty = part.start_bridge("bridge-idle").await?;
    let idle_kib = part.steady(&empty.bridge).await?;
    empty.bridge.stop().await?;
    let amount = match (options.full_entries, options.full_bytes) {
        (0, 0) => {
            // Readiness wants room for a largest record; a segment more
            // keeps the bridge ready however the last segment is counted.
            let room = part.config.max_record_bytes() as u64 + part.config.spool.segment_bytes;
            Amount::Bytes(part.config.spool.max_bytes.saturating_sub(room))
        }
        (0, bytes) => Amount::Bytes(bytes),
        (entries, _) => Amount::Entries(entries),
    };
    part.say(&format!("writing the spool: {amount:?}"));
    let filled = fill::fill(
        &part.config,
        &part.run.payloads,
        &part.run.name,
        part.phase,
        amount,
    )
    .await?;
    let entries = filled.entries;
    if !options.skip_drain {
        copy_dir(&part.config.spool.dir, &part.dir.join("spool-drain"))?;
    }
    part.say(&format!("reopening {entries} entries, Kafka unreachable"));
    let reopened = part.start_bridge("bridge-reopen").await?;
    reopened
        .bridge
        .wait_for_backlog(entries, part.timeout())
        .await?;
    let steady = part.steady(&reopened.bridge).await?;
    let (broker, elapsed_s, peak) = part.replay(&reopened.bridge).await?;
    reopened.bridge.stop().await?;
    let (delivered, missing) = part.count_on_broker(entries).await?;
    broker.stop().await?;
    let drain = if options.skip_drain {
        None
    } else {
        Some(drain(part, entries).await?)
    };
    part.clean_up()?;
    Ok(FullPart {
        filled,
        idle_kib,
        reopen_ready_s: reopened.ready_after.as_secs_f64(),
        reopen_peak: reopened.peak,
        steady_kib: steady,
        replay: Replay {
            elapsed_s,
            peak,
            delivered,
            missing,
        },
        drain,
    })
}

/// `spool drain` of the copy, to a fresh broker.
async fn drain(part: &Part<'_>, entries: u64) -> anyhow::Result<Drain> {
    part.say("`spool drain` of the same spool, to a fresh broker");
    let broker = part.start_broker("tansu-drain").await?;
    let drained = bridge::drain(
        &part.run.options.bridge_bin,
        &part.config_path,
        &std::path::absolute(part.dir.join("spool-drain"))?,
        part.timeout(),
        &part.log("drain"),
    )
    .await?;
    let (delivered, missing) = part.count_on_broker(entries).await?;
    broker.stop().await?;
    Ok(Drain {
        elapsed_s: drained.elapsed.as_secs_f64(),
        peak: drained.peak,
        output: drained.output,
        delivered,
        missing,
    })
}

/// Copies a spool directory (flat: segment files, acks, marks).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The chart's `resources.requests.memory` (top-level `resources:` block of
/// values.yaml), as written and in MiB.
pub fn memory_request(values: &Path) -> anyhow::Result<(String, f64)> {
    let text =
        std::fs::read_to_string(values).with_context(|| format!("reading {}", values.display()))?;
    let mut lines = text
        .lines()
        .skip_while(|line| *line != "resources:")
        .skip(1)
        .take_while(|line| line.starts_with(' ') || line.is_empty());
    lines
        .by_ref()
        .find(|line| line.trim() == "requests:")
        .context("no resources.requests in the chart's values")?;
    let value = lines
        .find_map(|line| line.trim().strip_prefix("memory:"))
        .context("no resources.requests.memory in the chart's values")?
        .trim()
        .trim_matches('"')
        .to_owned();
    let (number, unit) = value.split_at(
        value
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(value.len()),
    );
    let number: f64 = number.parse()?;
    let mib = match unit {
        "Mi" => number,
        "Gi" => number * 1024.0,
        "Ki" => number / 1024.0,
        "M" => number * 1e6 / 1048576.0,
        "G" => number * 1e9 / 1048576.0,
        "" => number / 1048576.0,
        other => anyhow::bail!("unknown memory unit {other} in {value}"),
    };
    Ok((value, mib))
}

#[cfg(test)]
mod tests {
    use super::memory_request;
    use std::path::Path;

    #[test]
    fn the_chart_request_is_read_from_the_top_level_resources() {
        let values =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/superfone-bridge/values.yaml");
        let (written, mib) = memory_request(&values).unwrap();
        assert!(
            written.ends_with("Mi") || written.ends_with("Gi"),
            "{written}"
        );
        assert!(mib > 16.0, "{mib}");
        let dir = tempfile_dir();
        let path = dir.join("values.yaml");
        std::fs::write(
            &path,
            "copier:\n  resources:\n    requests:\n      memory: 1Gi\nresources:\n  requests:\n    cpu: 100m\n    memory: 96Mi\n  limits:\n    memory: 256Mi\n",
        )
        .unwrap();
        assert_eq!(memory_request(&path).unwrap(), ("96Mi".to_owned(), 96.0));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-memory-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
