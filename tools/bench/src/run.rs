//! One benchmark run against a running broker and registry: the HTTP ceiling
//! (a trivial hyper server), the broker ceiling (the bridge's own producer
//! with the bridge's records, no HTTP), then the release bridge, closed loop
//! for its maximum rate and open loop at fractions of it, each open-loop rate
//! also sent to the broker directly, then closed loops at other client counts
//! (the bridge, then the producer alone). Afterwards every topic is read back and
//! only records found there count.

use crate::load::{self, PhaseResult, Target};
use crate::payloads::Payloads;
use crate::processes::{
    free_local_address, spawn, stop, wait_for_empty_spool, wait_for_port, wait_until_ready, SECRET,
};
use crate::procstat::{self, ProcessWatch};
use crate::report::{closed_phase, PhaseReport, Report, Summary};
use crate::verify;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use superfone_bridge::config::Config;
use superfone_bridge::durability::kafka::{Publisher, TopicSpec};
use superfone_bridge::pipeline::event;
use superfone_bridge::pipeline::route::{self, EventRoute};
use superfone_bridge::vocabulary::EventKind;
use superfone_bridge::vocabulary::Record;
use tokio::process::Command;

/// Distinct pre-converted records the broker ceiling cycles through.
const BROKER_RECORDS: u64 = 2_000;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Kafka bootstrap servers (a fresh broker per run: tansu keeps records in memory).
    #[arg(long, default_value = "127.0.0.1:29092")]
    pub brokers: String,
    /// Schema registry URL.
    #[arg(long, default_value = "http://127.0.0.1:28081")]
    pub registry_url: String,
    /// The superfone-bridge binary to measure (the release build).
    #[arg(long, default_value = "target/release/superfone-bridge")]
    pub bridge_bin: PathBuf,
    /// A command the bridge runs under, for profiling (e.g. "valgrind
    /// --tool=callgrind"); its figures then describe the profiled bridge.
    #[arg(long)]
    pub bridge_prefix: Option<String>,
    /// Seed payloads, rotated.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Results go to `<out>/<run>/bench.{json,md}`.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Seconds each measured phase lasts.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Seconds of unmeasured load before each closed-loop phase.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Clients of the closed-loop phases.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Leads (contact ids, so Kafka keys) the events spread over.
    #[arg(long, default_value_t = 5_000)]
    pub contacts: u64,
    /// Open-loop rates, as fractions of the bridge's closed-loop maximum.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "0.25,0.5,0.75")]
    pub fractions: Vec<f64>,
    /// Free text stored with the results (what was changed for this run).
    #[arg(long)]
    pub label: Option<String>,
    /// Closed-loop client counts at which the bridge and the Python peer are
    /// compared (the bridge's run at `--concurrency` is reused).
    #[arg(long, value_delimiter = ',', default_value = "8,64,256")]
    pub compare_concurrency: Vec<usize>,
    /// Worker processes of the Python peer to try (one port, SO_REUSEPORT);
    /// each is measured, and the report keeps the best. Empty: no peer.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2")]
    pub peer_workers: Vec<usize>,
    /// Producers the broker ceiling spreads its records over, by key (each
    /// with its own broker connection and its own five requests in flight):
    /// tells whether the ceiling is the producer's in-flight limit or the
    /// work per produce request.
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub ceiling_producers: usize,
    /// The Python that runs the peer (needs uvicorn, uvloop, httptools,
    /// orjson, confluent-kafka: scripts/requirements-test.txt).
    #[arg(long, default_value = ".venv/bin/python")]
    pub peer_python: PathBuf,
    /// The peer: tools/python-peer/peer.py.
    #[arg(long, default_value = "tools/python-peer/peer.py")]
    pub peer_script: PathBuf,
}

/// The Python peer's report target name.
const PEER: &str = "Python peer";

/// What a phase is, as the report names it.
struct Phase {
    target: &'static str,
    load: String,
    offered_per_s: Option<f64>,
    /// Whether the target writes records that must be found on the broker.
    writes_records: bool,
}

impl Phase {
    fn new(target: &'static str, load: &str, offered_per_s: Option<f64>) -> Phase {
        Phase {
            target,
            load: load.to_owned(),
            offered_per_s,
            writes_records: target != "HTTP ceiling",
        }
    }
}

/// A phase as measured, on its way to the report.
struct Measured {
    phase: Phase,
    result: PhaseResult,
    /// CPU seconds, peak RSS and peak descriptors of the watched process.
    cpu_seconds: f64,
    peak_rss_kib: u64,
    peak_fds: u64,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let run = format!("bench{}", unix.as_secs());
    let out = options.out.join(&run);
    std::fs::create_dir_all(&out)?;
    let duration = Duration::from_secs_f64(options.duration_secs);
    let warmup = Duration::from_secs_f64(options.warmup_secs);
    let payloads = Arc::new(Payloads::load(&options.fixtures, options.contacts)?);

    // The bridge's config: its defaults (and any SUPERFONE_BRIDGE_* override,
    // e.g. a producer setting under test) with this run's addresses. The broker
    // ceiling uses the same `[kafka]` section, so the same producer settings.
    let mut config = Config::load(None).context("loading the bridge config")?;
    config.kafka.brokers = options.brokers.clone();
    config.registry.url = options.registry_url.clone();
    config.server.listen = free_local_address()?;
    config.admin.listen = free_local_address()?;
    config.spool.dir = out.join("spool");
    config.topics.prefix = format!("{run}.");
    let config_path = out.join("bridge.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;

    let publisher = Publisher::new(&config.kafka, config.max_record_bytes())?;
    publisher.check_broker(Duration::from_secs(10)).await?;
    let topics: Vec<String> = EventKind::ALL
        .iter()
        .map(|kind| config.topics.topic_for(*kind))
        .collect();
    publisher
        .create_topics(&TopicSpec::of(&config), Duration::from_secs(10))
        .await?;
    // The peer's topics: the same spec (partitions, size limit), its own names.
    let mut peer_prefixes = Vec::new();
    let mut peer_topics = Vec::new();
    for workers in &options.peer_workers {
        let mut peer_config = config.clone();
        peer_config.topics.prefix = format!("{run}.peer{workers}.");
        let spec = TopicSpec::of(&peer_config);
        publisher
            .create_topics(&spec, Duration::from_secs(10))
            .await?;
        peer_topics.extend(spec.names);
        peer_prefixes.push((*workers, peer_config.topics.prefix));
    }
    let routes = route::event_routes(&config).await?;
    let records = broker_records(&routes, &payloads)?;
    let mut measured = Vec::new();
    let closed_load = format!("closed, {} clients", options.concurrency);

    eprintln!("[bench] {run}: HTTP ceiling");
    let sink_address = free_local_address()?;
    let mut sink = spawn(
        Command::new(std::env::current_exe()?).args([
            "http-sink",
            "--listen",
            &sink_address.to_string(),
        ]),
        &out.join("http-sink.log"),
    )?;
    wait_for_port(sink_address).await?;
    let sink_pid = sink.id().context("sink pid")?;
    let http = http_target(&format!("http://{sink_address}/"), &config, &payloads)?;
    load::closed_loop(http.clone(), &run, "warmup", options.concurrency, warmup).await;
    measured.push(
        measure(
            &[sink_pid],
            Phase::new("HTTP ceiling", &closed_load, None),
            || load::closed_loop(http, &run, "http", options.concurrency, duration),
        )
        .await?,
    );
    sink.kill().await?;

    eprintln!("[bench] {run}: broker ceiling");
    let mut publishers = vec![publisher];
    for _ in 1..options.ceiling_producers {
        publishers.push(Publisher::new(&config.kafka, config.max_record_bytes())?);
    }
    let ceiling_load = |load: &str| match options.ceiling_producers {
        1 => load.to_owned(),
        producers => format!("{load}, {producers} producers"),
    };
    let broker = Arc::new(Target::Kafka {
        publishers,
        records,
    });
    let own_pid = std::process::id();
    load::closed_loop(broker.clone(), &run, "warmup", options.concurrency, warmup).await;
    measured.push(
        measure(
            &[own_pid],
            Phase::new("broker ceiling", &ceiling_load(&closed_load), None),
            || {
                load::closed_loop(
                    broker.clone(),
                    &run,
                    "broker",
                    options.concurrency,
                    duration,
                )
            },
        )
        .await?,
    );

    eprintln!("[bench] {run}: bridge {}", options.bridge_bin.display());
    let mut prefix = options
        .bridge_prefix
        .as_deref()
        .unwrap_or_default()
        .split_whitespace();
    let mut command = match prefix.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(prefix).arg(&options.bridge_bin);
            command
        }
        None => Command::new(&options.bridge_bin),
    };
    let mut bridge = spawn(
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("SUPERFONE_AUTH_SECRETS", SECRET),
        &out.join("bridge.log"),
    )?;
    let mut bridge_pid = bridge.id().context("bridge pid")?;
    let admin = format!("http://{}", config.admin.listen);
    wait_until_ready(&admin, &mut bridge).await?;
    if options.bridge_prefix.is_some() {
        // A profiler that runs the bridge as its child (perf) is not what is
        // measured; one that becomes the bridge (env, valgrind) is.
        bridge_pid = procstat::child_of(bridge_pid).unwrap_or(bridge_pid);
    }
    let idle_rss_kib = procstat::rss_kib(bridge_pid)?;
    let ingest = http_target(
        &format!(
            "http://{}{}",
            config.server.listen, config.server.ingest_path
        ),
        &config,
        &payloads,
    )?;
    load::closed_loop(ingest.clone(), &run, "warmup", options.concurrency, warmup).await;
    let closed = measure(
        &[bridge_pid],
        Phase::new("bridge", &closed_load, None),
        || {
            load::closed_loop(
                ingest.clone(),
                &run,
                "bridge",
                options.concurrency,
                duration,
            )
        },
    )
    .await?;
    let max_rate = closed.result.accepted.len() as f64 / closed.result.elapsed.as_secs_f64();
    measured.push(closed);

    for fraction in &options.fractions {
        let rate = (max_rate * fraction).max(1.0);
        let percent = (fraction * 100.0).round();
        let load = format!("open, {rate:.0}/s ({percent}% of max)");
        eprintln!("[bench] {run}: open loop {load}");
        let phase = format!("bridge-open-{percent}");
        measured.push(
            measure(
                &[bridge_pid],
                Phase::new("bridge", &load, Some(rate)),
                || load::open_loop(ingest.clone(), &run, &phase, rate, duration),
            )
            .await?,
        );
        let phase = format!("broker-open-{percent}");
        measured.push(
            measure(
                &[own_pid],
                Phase::new("broker ceiling", &ceiling_load(&load), Some(rate)),
                || load::open_loop(broker.clone(), &run, &phase, rate, duration),
            )
            .await?,
        );
    }

    for &clients in &options.compare_concurrency {
        if clients == options.concurrency {
            continue;
        }
        let load = format!("closed, {clients} clients");
        // The bridge, then the floor at this client count: the producer alone.
        for (name, target, pid, label, load) in [
            ("bridge", &ingest, bridge_pid, "bridge", load.clone()),
            (
                "broker",
                &broker,
                own_pid,
                "broker ceiling",
                ceiling_load(&load),
            ),
        ] {
            eprintln!("[bench] {run}: {label}, {load}");
            let phase = closed_phase(name, clients, options.concurrency);
            load::closed_loop(target.clone(), &run, "warmup", clients, warmup).await;
            measured.push(
                measure(&[pid], Phase::new(label, &load, None), || {
                    load::closed_loop(target.clone(), &run, &phase, clients, duration)
                })
                .await?,
            );
        }
    }

    wait_for_empty_spool(&admin).await?;
    let status = stop(&mut bridge).await?;
    // A profiler in front of the bridge may report the SIGTERM as its status.
    if !status.success() && options.bridge_prefix.is_none() {
        bail!("the bridge exited with {status}; see its bridge.log");
    }

    for (workers, prefix) in &peer_prefixes {
        eprintln!("[bench] {run}: Python peer, {workers} worker(s)");
        measured.extend(
            measure_peer(&options, &config, &out, *workers, prefix, &payloads, &run).await?,
        );
    }

    eprintln!("[bench] {run}: reading every topic back");
    let found = {
        let topics: Vec<String> = topics.into_iter().chain(peer_topics).collect();
        let (brokers, run) = (options.brokers.clone(), run.clone());
        tokio::task::spawn_blocking(move || verify::records_on_broker(&brokers, &topics, &run))
            .await??
    };
    let phases: Vec<PhaseReport> = measured
        .into_iter()
        .map(|phase| phase.report(&found))
        .collect();
    let summary = Summary::new(
        &phases,
        idle_rss_kib as f64 / 1024.0,
        &options.compare_concurrency,
        options.concurrency,
    )
    .context("a phase is missing")?;
    let report = Report {
        run: run.clone(),
        label: options.label.clone(),
        settings: serde_json::json!({
            "duration_secs": options.duration_secs,
            "warmup_secs": options.warmup_secs,
            "concurrency": options.concurrency,
            "contacts": options.contacts,
            "kafka": config.kafka,
            "delivery": config.delivery,
            "dedup": config.dedup,
            "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        }),
        phases,
        summary,
    };
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("bench.md"), report.markdown())?;
    eprintln!("[bench] results in {}", out.display());
    Ok(report)
}

impl Measured {
    fn report(self, found: &verify::Found) -> PhaseReport {
        let (phase, result) = (self.phase, self.result);
        let accepted = result.accepted.len() as u64;
        let missing: Vec<u64> = if phase.writes_records {
            let on_broker = found.get(&result.name);
            result
                .accepted
                .iter()
                .filter(|seq| !on_broker.is_some_and(|on_broker| on_broker.contains(seq)))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        let verified = phase
            .writes_records
            .then(|| accepted - missing.len() as u64);
        let counted = verified.unwrap_or_else(|| result.statuses.get("200").copied().unwrap_or(0));
        let millis = |quantile: f64| result.latency.value_at_quantile(quantile) as f64 / 1000.0;
        PhaseReport {
            phase: result.name.clone(),
            target: phase.target.into(),
            load: phase.load,
            offered_per_s: phase.offered_per_s,
            sent: result.sent,
            accepted,
            verified,
            missing: missing.len() as u64,
            missing_seqs: missing.into_iter().take(20).collect(),
            statuses: result.statuses.clone(),
            elapsed_s: result.elapsed.as_secs_f64(),
            deliveries_per_s: counted as f64 / result.elapsed.as_secs_f64(),
            p50_ms: millis(0.5),
            p99_ms: millis(0.99),
            p999_ms: millis(0.999),
            max_ms: result.latency.max() as f64 / 1000.0,
            cpu_ms_per_1000: (counted > 0).then(|| self.cpu_seconds * 1e6 / counted as f64),
            peak_rss_mib: Some(self.peak_rss_kib as f64 / 1024.0),
            peak_open_fds: Some(self.peak_fds),
        }
    }
}

/// Runs a phase while watching the CPU time, memory and descriptors of the
/// serving processes `pids` (summed).
async fn measure<F, Fut>(pids: &[u32], phase: Phase, run: F) -> anyhow::Result<Measured>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = PhaseResult>,
{
    let watch = ProcessWatch::start(pids.to_vec());
    let cpu_before = procstat::total_cpu_seconds(pids)?;
    let result = run().await;
    let cpu_seconds = procstat::total_cpu_seconds(pids)? - cpu_before;
    Ok(Measured {
        phase,
        result,
        cpu_seconds,
        peak_rss_kib: watch.peak_kib(),
        peak_fds: watch.peak_fds(),
    })
}

/// Starts the Python peer with `workers` processes on one port, runs a
/// closed loop at each compared client count against it, and stops it.
async fn measure_peer(
    options: &Options,
    config: &Config,
    out: &Path,
    workers: usize,
    topic_prefix: &str,
    payloads: &Arc<Payloads>,
    run: &str,
) -> anyhow::Result<Vec<Measured>> {
    let address = free_local_address()?;
    let mut peers = Vec::new();
    for worker in 0..workers {
        peers.push(spawn(
            Command::new(&options.peer_python)
                .arg(&options.peer_script)
                .args(["--listen", &address.to_string()])
                .args(["--brokers", &options.brokers])
                .args(["--registry-url", &options.registry_url])
                .args(["--topic-prefix", topic_prefix])
                .args(["--secret", SECRET])
                .args([
                    "--linger-ms",
                    &config.kafka.linger_ms.as_millis().to_string(),
                ])
                .args(["--compression", config.kafka.compression.as_str()]),
            &out.join(format!("peer{workers}-{worker}.log")),
        )?);
        // Only the first start is seen here: later workers share its port.
        // A worker takes connections only once its server listens, so one
        // still starting gets no load before it is ready.
        wait_for_port(address).await?;
    }
    let pids: Vec<u32> = peers
        .iter()
        .map(|peer| peer.id().context("peer pid"))
        .collect::<anyhow::Result<_>>()?;
    let target = http_target(&format!("http://{address}/"), config, payloads)?;
    let warmup = Duration::from_secs_f64(options.warmup_secs);
    let duration = Duration::from_secs_f64(options.duration_secs);
    let mut measured = Vec::new();
    for &clients in &options.compare_concurrency {
        let load = format!("closed, {clients} clients, {workers} worker(s)");
        let phase = format!("peer{workers}-c{clients}");
        load::closed_loop(target.clone(), run, "warmup", clients, warmup).await;
        measured.push(
            measure(&pids, Phase::new(PEER, &load, None), || {
                load::closed_loop(target.clone(), run, &phase, clients, duration)
            })
            .await?,
        );
    }
    for peer in &mut peers {
        stop(peer).await?;
    }
    Ok(measured)
}

/// The ten event records exactly as the bridge would produce them from the
/// first `BROKER_RECORDS` requests, for the broker ceiling.
fn broker_records(routes: &[EventRoute], payloads: &Payloads) -> anyhow::Result<Vec<Record>> {
    (0..BROKER_RECORDS)
        .map(|seq| {
            let body: serde_json::Value = serde_json::from_slice(&payloads.body(seq))?;
            let kind = event::dispatch(&body)?;
            let object = body.as_object().context("payload is an object")?;
            Ok(routes[kind as usize].record(object, "", "2026-01-01T00:00:00Z")?)
        })
        .collect()
}

/// The load generator's target for an HTTP endpoint: the benchmark's secret
/// and the bridge's group id header, over the shared payloads.
fn http_target(
    uri: &str,
    config: &Config,
    payloads: &Arc<Payloads>,
) -> anyhow::Result<Arc<Target>> {
    Ok(Arc::new(Target::http(
        uri.parse()?,
        SECRET,
        &config.server.group_id_header,
        payloads.clone(),
    )?))
}
