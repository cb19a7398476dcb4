//! What the soak samples every second while it runs: the bridge's RSS (the
//! bridge of the moment: a restart changes its pid), its spool as
//! `/metrics` reports it (`superfone_spool_bytes`, `superfone_spool_records`)
//! and as the spool directory's size on disk, and whether the broker is frozen.

use crate::processes::get;
use crate::procstat;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One sample; `None` where the bridge was down or did not answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub secs: f64,
    pub bridge_pid: u32,
    pub rss_mib: Option<f64>,
    pub spool_bytes: Option<u64>,
    pub spool_records: Option<u64>,
    pub spool_dir_bytes: u64,
    pub broker_frozen: bool,
}

/// What the watcher and the fault schedule share.
#[derive(Default)]
pub struct Now {
    /// The running bridge's pid, 0 while none runs.
    pub bridge_pid: AtomicU32,
    pub broker_frozen: AtomicBool,
    pub stop: AtomicBool,
}

/// Samples every second until `now.stop`; returns the samples.
pub async fn watch(now: Arc<Now>, admin: String, spool_dir: PathBuf) -> Vec<Sample> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while !now.stop.load(Ordering::Relaxed) {
        let pid = now.bridge_pid.load(Ordering::Relaxed);
        let rss_mib = (pid != 0)
            .then(|| procstat::rss_kib(pid).ok())
            .flatten()
            .map(|kib| kib as f64 / 1024.0);
        let metrics =
            tokio::time::timeout(Duration::from_secs(1), get(&format!("{admin}/metrics"))).await;
        let metrics = match metrics {
            Ok(Ok((200, text))) => Some(text),
            _ => None,
        };
        let gauge = |name: &str| metrics.as_deref().and_then(|text| gauge(text, name));
        samples.push(Sample {
            secs: started.elapsed().as_secs_f64(),
            bridge_pid: pid,
            rss_mib,
            spool_bytes: gauge("superfone_spool_bytes"),
            spool_records: gauge("superfone_spool_records"),
            spool_dir_bytes: dir_bytes(&spool_dir),
            broker_frozen: now.broker_frozen.load(Ordering::Relaxed),
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples
}

/// A gauge's value in a Prometheus exposition.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Bytes of the regular files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
