//! The phases of a recordings run: each copies one size class of
//! recordings, through the copy ceiling or the bridge, in a burst or open
//! loop, and becomes a row of the report once its copies are checked.

use crate::procstat::{self, ProcessWatch};
use crate::recordings::bridge::CopyingBridge;
use crate::recordings::ceiling::Ceiling;
use crate::recordings::checks::{self, Checked};
use crate::recordings::pointers::{now_ms, Pointers};
use crate::recordings::report::{quantile, PhaseReport, RecordingsReport};
use crate::recordings::schedule::Schedule;
use crate::recordings::source::{Pattern, RecordingSource};
use crate::recordings::{figures, Classes, Options, Recording};
use anyhow::Context;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use superfone_bridge::config::Config;

/// Events posted at once in a burst: enough that posting takes a small
/// part of a phase (the webhook answers in milliseconds).
const POSTS_IN_FLIGHT: usize = 16;
/// Events posted open loop that may wait for an answer at once.
const OPEN_POSTS_IN_FLIGHT: usize = 1024;
/// A `cdr_id` is `<class index> * CDR_ID_BLOCK + seq`: unique in a run.
const CDR_ID_BLOCK: i64 = 1_000_000;
/// The warm-up recording's class index.
const WARM_UP: i64 = 9;

/// Recordings of one size, `count` to a phase.
#[derive(Debug, Clone)]
pub struct SizeClass {
    /// Picks the recordings' `cdr_id`s (and so their bytes): a ceiling and
    /// a bridge phase of one class copy the same recordings.
    pub index: i64,
    pub count: usize,
    pub bytes: u64,
    /// `1mb`, `50mb`, `rss-500mb`, `latency-1mb`: the phases' names end
    /// with it, so two classes of one size keep apart.
    pub label: String,
    /// `1 MB`, `50 MB`, `500 MB`: the figures name it so.
    pub size: String,
}

impl SizeClass {
    /// A class for `role` (`""` for the throughput bursts, `rss`,
    /// `latency`, `warmup`).
    pub fn new(index: i64, role: &str, count: usize, bytes: u64) -> SizeClass {
        let size = match bytes {
            b if b % 1_000_000 == 0 => format!("{} MB", b / 1_000_000),
            b if b % 1_000 == 0 => format!("{} kB", b / 1_000),
            b => format!("{b} B"),
        };
        SizeClass {
            index,
            count,
            bytes,
            label: [role, &size.replace(' ', "").to_lowercase()]
                .iter()
                .filter(|part| !part.is_empty())
                .map(|part| part.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            size,
        }
    }

    /// The name of this class's phase on `target` (`bridge`, `ceiling`, ...).
    pub fn phase(&self, target: &str) -> String {
        format!("{target}-{}", self.label)
    }
}

/// A run in progress: its name and folder, the source, the ceiling's client.
pub struct Bench {
    pub options: Options,
    pub run: String,
    pub out: PathBuf,
    pattern: Pattern,
    source: RecordingSource,
    ceiling: Arc<Ceiling>,
}

impl Bench {
    /// Names the run, makes its folder and starts the source.
    pub async fn start(options: Options) -> anyhow::Result<Bench> {
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
        let run = format!("recordings{}", unix.as_secs());
        let out = options.out.join(&run);
        std::fs::create_dir_all(&out)?;
        let pattern = Pattern::default();
        let source = RecordingSource::start(pattern.clone()).await?;
        let ceiling = Ceiling::new(&out.join("ceiling"))?;
        Ok(Bench {
            options,
            run,
            out,
            pattern,
            source,
            ceiling,
        })
    }

    /// The fixture CDR_RECORDING_AVAILABLE event the posted events vary.
    pub fn event_template(&self) -> anyhow::Result<Value> {
        let path = self.options.fixtures.join("cdr_recording_available.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn recordings(&self, class: &SizeClass) -> Vec<Recording> {
        (0..class.count as u64)
            .map(|seq| {
                let cdr_id = class.index * CDR_ID_BLOCK + seq as i64;
                let name = format!("{cdr_id}.mp3");
                Recording {
                    seq,
                    cdr_id,
                    url: self.source.link(&name, class.bytes),
                    name,
                    size: class.bytes,
                }
            })
            .collect()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.options.timeout_secs)
    }

    pub async fn ceiling_burst(&self, class: &SizeClass) -> anyhow::Result<PhaseReport> {
        let in_flight = self.options.concurrency;
        let load = format!("burst of {}, {in_flight} at a time", class.count);
        let schedule = Schedule::Burst { in_flight };
        self.ceiling_phase(class.phase("ceiling"), load, class, schedule)
            .await
    }

    pub async fn ceiling_open(&self, class: &SizeClass, rate: f64) -> anyhow::Result<PhaseReport> {
        let in_flight = self.options.concurrency;
        let load = format!("open, {rate:.1}/s, {in_flight} at a time");
        let schedule = Schedule::Open { rate, in_flight };
        self.ceiling_phase(class.phase("ceiling"), load, class, schedule)
            .await
    }

    async fn ceiling_phase(
        &self,
        name: String,
        load: String,
        class: &SizeClass,
        schedule: Schedule,
    ) -> anyhow::Result<PhaseReport> {
        let recordings = self.recordings(class);
        let started = Instant::now();
        let copied = self.ceiling.copy_all(&recordings, schedule).await?;
        let last = copied.iter().map(|copy| copy.done).max().unwrap_or(started);
        let dir = self.out.join("ceiling");
        let keep = self.options.keep_copies;
        let checked =
            tokio::task::spawn_blocking(move || checks::ceiling_copies(&recordings, &dir, keep))
                .await?;
        let mut latencies: Vec<f64> = copied
            .iter()
            .map(|copy| copy.latency.as_secs_f64() * 1e3)
            .collect();
        let span = "asked for → file closed";
        let elapsed = (last - started).as_secs_f64();
        Ok(row(name, "copy ceiling", load, class, checked, elapsed)
            .with_latency(&mut latencies, span))
    }

    /// One recording through the bridge before anything is measured: the
    /// copier has joined its group and opened its store.
    pub async fn warm_up(
        &self,
        bridge: &Arc<CopyingBridge>,
        pointers: &Pointers,
        like: &SizeClass,
    ) -> anyhow::Result<()> {
        let class = SizeClass::new(WARM_UP, "warmup", 1, like.bytes);
        let burst = Schedule::Burst { in_flight: 1 };
        let warm_up = self
            .bridge_phase(
                bridge,
                pointers,
                class.phase("bridge"),
                "".into(),
                &class,
                burst,
            )
            .await?;
        anyhow::ensure!(
            warm_up.checked.intact == 1,
            "the warm-up recording was not copied: {:?}",
            warm_up.checked.problems
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    pub async fn bridge_burst(
        &self,
        bridge: &Arc<CopyingBridge>,
        pointers: &Pointers,
        class: &SizeClass,
    ) -> anyhow::Result<PhaseReport> {
        let events = match class.count {
            1 => "1 event".to_owned(),
            count => format!("{count} events"),
        };
        let load = format!(
            "burst of {events}, {} copies at a time",
            self.options.concurrency
        );
        let schedule = Schedule::Burst {
            in_flight: POSTS_IN_FLIGHT,
        };
        let name = class.phase("bridge");
        self.bridge_phase(bridge, pointers, name, load, class, schedule)
            .await
    }

    pub async fn bridge_open(
        &self,
        bridge: &Arc<CopyingBridge>,
        pointers: &Pointers,
        class: &SizeClass,
        rate: f64,
    ) -> anyhow::Result<PhaseReport> {
        let load = format!(
            "open, {rate:.1}/s ({}% of the burst's copies/s)",
            (self.options.latency_fraction * 100.0).round()
        );
        let schedule = Schedule::Open {
            rate,
            in_flight: OPEN_POSTS_IN_FLIGHT,
        };
        let name = class.phase("bridge");
        self.bridge_phase(bridge, pointers, name, load, class, schedule)
            .await
    }

    /// Posts the class's events as `schedule` says, waits for their pointer
    /// records while sampling the bridge's memory, and checks the copies.
    async fn bridge_phase(
        &self,
        bridge: &Arc<CopyingBridge>,
        pointers: &Pointers,
        name: String,
        load: String,
        class: &SizeClass,
        schedule: Schedule,
    ) -> anyhow::Result<PhaseReport> {
        let recordings = self.recordings(class);
        let idle_kib = procstat::rss_kib(bridge.pid())?;
        let watch = ProcessWatch::start(vec![bridge.pid()]);
        let started_ms = now_ms();
        let answered = bridge
            .post_all(&self.run, &name, &recordings, schedule)
            .await?;
        let found = pointers
            .wait_for(&name, recordings.len(), self.timeout())
            .await;
        let peak_kib = watch.peak_kib().max(idle_kib);
        drop(watch);
        // The copy is complete at `stored_at`; its record is stamped (by
        // the producer, CreateTime) within a millisecond of it, in the same
        // task, so the latencies run to `stored_at`.
        let mut latencies: Vec<f64> = found
            .iter()
            .filter_map(|(seq, pointer)| Some(pointer.stored_at_ms? - answered.get(seq)?))
            .collect();
        let last_ms = found
            .values()
            .map(|pointer| pointer.stored_at_ms.unwrap_or(pointer.kafka_ms))
            .fold(started_ms, f64::max);
        let checked = self.check_bridge(recordings, found).await?;
        let elapsed = (last_ms - started_ms) / 1e3;
        let mut row = row(name, "bridge", load, class, checked, elapsed)
            .with_latency(&mut latencies, "webhook answered → `stored_at`");
        row.idle_rss_mib = Some(idle_kib as f64 / 1024.0);
        row.peak_rss_mib = Some(peak_kib as f64 / 1024.0);
        Ok(row)
    }

    async fn check_bridge(
        &self,
        recordings: Vec<Recording>,
        found: std::collections::BTreeMap<u64, crate::recordings::pointers::PointerRecord>,
    ) -> anyhow::Result<Checked> {
        let pattern = self.pattern.clone();
        let (every, keep) = (self.options.sha256_every, self.options.keep_copies);
        Ok(tokio::task::spawn_blocking(move || {
            checks::bridge_copies(&recordings, &found, &pattern, every, keep)
        })
        .await?)
    }

    pub fn report(
        &self,
        phases: Vec<PhaseReport>,
        config: &Config,
        rate: f64,
        timestamp_kind: &str,
    ) -> RecordingsReport {
        let options = &self.options;
        let classes = options.classes();
        let figures = figures::figures(&phases, &classes, options.concurrency, rate);
        RecordingsReport {
            run: self.run.clone(),
            label: options.label.clone(),
            settings: json!({
                "concurrency": options.concurrency,
                "classes": class_settings(&classes),
                "latency_count": options.latency_count,
                "latency_fraction": options.latency_fraction,
                "latency_rate_per_s": rate,
                "sha256_every": options.sha256_every,
                "pointer_timestamps": timestamp_kind,
                "recordings": config.recordings,
                "kafka": config.kafka,
                "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
            }),
            phases,
            figures,
        }
    }
}

fn class_settings(classes: &Classes) -> Value {
    let all = [
        &classes.small,
        &classes.large,
        &classes.rss,
        &classes.latency,
    ];
    all.iter()
        .map(|class| json!({"label": class.label, "count": class.count, "bytes": class.bytes}))
        .collect()
}

/// A phase's row with its throughput; latencies and memory to add.
fn row(
    phase: String,
    target: &str,
    load: String,
    class: &SizeClass,
    checked: Checked,
    elapsed_s: f64,
) -> PhaseReport {
    let intact = checked.intact as f64;
    PhaseReport {
        phase,
        target: target.to_owned(),
        load,
        recordings: class.count as u64,
        bytes_each: class.bytes,
        checked,
        elapsed_s,
        copies_per_s: intact / elapsed_s,
        mb_per_s: intact * class.bytes as f64 / 1e6 / elapsed_s,
        latency_span: String::new(),
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        idle_rss_mib: None,
        peak_rss_mib: None,
    }
}

impl PhaseReport {
    fn with_latency(mut self, latencies_ms: &mut [f64], span: &str) -> PhaseReport {
        self.latency_span = span.to_owned();
        self.p50_ms = quantile(latencies_ms, 0.5);
        self.p99_ms = quantile(latencies_ms, 0.99);
        self.max_ms = quantile(latencies_ms, 1.0);
        self
    }
}
