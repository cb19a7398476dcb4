//! `superfone-bench recordings`: what copying call recordings costs, the
//! figures issue 27 asks for, each against a copy ceiling measured in the
//! same run. A source in this process serves deterministic recordings over
//! plain http on 127.0.0.1, and in order:
//!
//! 1. **Copy ceiling**: a plain streaming HTTP client copies the small and
//!    the large recordings (and one of the RSS size) into files, at the
//!    bridge's concurrency, as fast as they go. No Kafka, no checks.
//! 2. **Bridge** (release build, copier on, `file://` store): one RSS-size
//!    recording with the bridge's resident memory sampled from /proc, then
//!    the same small and large recordings as the ceiling, their events
//!    posted at once; a phase ends when every recording has its pointer
//!    record. Then small recordings posted open loop at a fraction of the
//!    bridge's small-copy rate, for the event-to-`stored` latency, and the
//!    ceiling at that same rate after the bridge has stopped.
//!
//! Every copy is checked (`checks`): a broken one never counts.

pub mod bridge;
pub mod ceiling;
pub mod checks;
pub mod figures;
pub mod phases;
pub mod pointers;
pub mod report;
pub mod schedule;
pub mod source;

use crate::recordings::bridge::CopyingBridge;
use crate::recordings::phases::{Bench, SizeClass};
use crate::recordings::pointers::Pointers;
use crate::recordings::report::RecordingsReport;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use superfone_bridge::config::Config;
use superfone_bridge::durability::kafka::{Publisher, TopicSpec};

/// One recording of a phase: its event's `cdr_id`, its name at the source
/// (`<cdr_id>.mp3`, which picks its bytes), its size and its link.
#[derive(Debug, Clone)]
pub struct Recording {
    pub seq: u64,
    pub cdr_id: i64,
    pub name: String,
    pub size: u64,
    pub url: String,
}

#[derive(Debug, Clone, clap::Args)]
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
    /// Where `cdr_recording_available.json`, the event template, is.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Results go to `<out>/<run>/bench.{json,md}`; the copies to
    /// `<out>/<run>/{store,ceiling}`, deleted once checked.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Free text stored with the results (what was changed for this run).
    #[arg(long)]
    pub label: Option<String>,
    /// Copies at once: the bridge's `recordings.concurrency` and the ceiling's.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Size of the small recordings, in MB (10^6 bytes).
    #[arg(long, default_value_t = 1.0)]
    pub small_mb: f64,
    /// Small recordings per phase.
    #[arg(long, default_value_t = 1000)]
    pub small_count: usize,
    /// Size of the large recordings, in MB.
    #[arg(long, default_value_t = 50.0)]
    pub large_mb: f64,
    /// Large recordings per phase.
    #[arg(long, default_value_t = 40)]
    pub large_count: usize,
    /// Size of the one recording copied while the bridge's RSS is sampled, in MB.
    #[arg(long, default_value_t = 500.0)]
    pub rss_mb: f64,
    /// Small recordings posted open loop for the latency.
    #[arg(long, default_value_t = 1000)]
    pub latency_count: usize,
    /// The open-loop rate, as a fraction of the bridge's small-copy rate.
    #[arg(long, default_value_t = 0.5)]
    pub latency_fraction: f64,
    /// Compare the bytes and SHA-256 of every n-th copy (0: none); every
    /// copy's size is checked.
    #[arg(long, default_value_t = 1)]
    pub sha256_every: u64,
    /// Seconds a bridge phase may take to get all its pointer records.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_secs: f64,
    /// Keep the copies (a run's worth of recordings) instead of deleting them.
    #[arg(long)]
    pub keep_copies: bool,
}

/// The recordings of a run, by what they measure.
pub struct Classes {
    pub small: SizeClass,
    pub large: SizeClass,
    /// The one recording copied while the bridge's memory is sampled.
    pub rss: SizeClass,
    /// Small recordings posted open loop.
    pub latency: SizeClass,
}

impl Options {
    fn classes(&self) -> Classes {
        let mb = |mb: f64| (mb * 1e6).round() as u64;
        Classes {
            small: SizeClass::new(1, "", self.small_count, mb(self.small_mb)),
            large: SizeClass::new(2, "", self.large_count, mb(self.large_mb)),
            rss: SizeClass::new(3, "rss", 1, mb(self.rss_mb)),
            latency: SizeClass::new(4, "latency", self.latency_count, mb(self.small_mb)),
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<RecordingsReport> {
    let bench = Bench::start(options).await?;
    let options = &bench.options;
    let config = bridge::config(
        &options.brokers,
        &options.registry_url,
        &bench.run,
        &bench.out,
        options.concurrency,
    )?;
    create_topics(&config).await?;
    let pointers = Pointers::follow(&config, &bench.run)?;
    let Classes {
        small,
        large,
        rss,
        latency,
    } = options.classes();
    let mut phases = Vec::new();
    for class in [&small, &large, &rss] {
        eprintln!("[bench] {}: copy ceiling, {}", bench.run, class.label);
        phases.push(bench.ceiling_burst(class).await?);
    }

    eprintln!(
        "[bench] {}: bridge {}",
        bench.run,
        options.bridge_bin.display()
    );
    let event = bench.event_template()?;
    let bridge = CopyingBridge::start(&options.bridge_bin, &config, &bench.out, event).await?;
    let bridge = Arc::new(bridge);
    bench.warm_up(&bridge, &pointers, &small).await?;
    for class in [&rss, &small, &large] {
        eprintln!("[bench] {}: bridge, {}", bench.run, class.label);
        phases.push(bench.bridge_burst(&bridge, &pointers, class).await?);
    }
    let small_rate = phases
        .iter()
        .find(|phase| phase.phase == small.phase("bridge"))
        .map_or(0.0, |phase| phase.copies_per_s);
    let rate = (small_rate * options.latency_fraction).max(0.1);
    eprintln!("[bench] {}: open loop, {rate:.1}/s", bench.run);
    phases.push(
        bench
            .bridge_open(&bridge, &pointers, &latency, rate)
            .await?,
    );
    Arc::into_inner(bridge)
        .context("the bridge is still in use")?
        .stop()
        .await?;
    phases.push(bench.ceiling_open(&latency, rate).await?);

    let report = bench.report(phases, &config, rate, pointers.timestamp_kind());
    std::fs::write(
        bench.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(bench.out.join("bench.md"), report.markdown())?;
    eprintln!("[bench] results in {}", bench.out.display());
    Ok(report)
}

/// Creates the run's topics (the pointer topic among them) before the
/// pointer reader and the bridge start.
async fn create_topics(config: &Config) -> anyhow::Result<()> {
    let publisher = Publisher::new(&config.kafka, config.max_record_bytes())?;
    publisher.check_broker(Duration::from_secs(10)).await?;
    publisher
        .create_topics(&TopicSpec::of(config), Duration::from_secs(10))
        .await?;
    Ok(())
}
