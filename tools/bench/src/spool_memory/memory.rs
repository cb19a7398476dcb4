//! The bridge's resident memory as the spool-memory run reports it: the
//! peak of a phase from the kernel's high-water mark (`VmHWM`, reset at the
//! phase's start, so no peak between two samples is missed) beside the
//! largest `VmRSS` sampled every 10 ms, and the steady figure as the median
//! of a quiet window.

use crate::procstat;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The timeline keeps one sample in this many (every 250 ms).
const TIMELINE_EVERY: u32 = 25;

/// What a phase's sampling saw, in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peak {
    /// `VmHWM` at the phase's end: the true peak since the reset.
    pub hwm_kib: u64,
    /// The largest `VmRSS` of the 10 ms samples.
    pub sampled_kib: u64,
    pub samples: u64,
    /// (seconds since the phase started, VmRSS KiB), every 250 ms.
    pub timeline: Vec<(f64, u64)>,
}

impl Peak {
    pub fn mib(&self) -> f64 {
        self.hwm_kib.max(self.sampled_kib) as f64 / 1024.0
    }
}

/// Samples one process's memory until `finish`.
pub struct Watch {
    pid: u32,
    seen: Arc<Mutex<Peak>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Starts a phase: resets the process's high-water mark (a process just
    /// spawned has none to reset) and samples from now on.
    pub fn start(pid: u32, reset: bool) -> anyhow::Result<Watch> {
        if reset {
            procstat::reset_hwm(pid)?;
        }
        let seen = Arc::new(Mutex::new(Peak::default()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u32;
            loop {
                // Both read while the process lives: the last readings before
                // it exits are its figures.
                let (Ok(rss), Ok(hwm)) = (procstat::rss_kib(pid), procstat::hwm_kib(pid)) else {
                    return;
                };
                {
                    let mut peak = shared.lock().expect("peak lock");
                    peak.hwm_kib = hwm;
                    peak.sampled_kib = peak.sampled_kib.max(rss);
                    peak.samples += 1;
                    if n.is_multiple_of(TIMELINE_EVERY) {
                        let at = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
                        peak.timeline.push((at, rss));
                    }
                }
                n = n.wrapping_add(1);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Ok(Watch { pid, seen, task })
    }

    /// Ends the phase: one last reading (if the process still lives), and
    /// what the phase saw.
    pub fn finish(self) -> Peak {
        self.task.abort();
        let mut peak = self.seen.lock().expect("peak lock").clone();
        if let (Ok(rss), Ok(hwm)) = (procstat::rss_kib(self.pid), procstat::hwm_kib(self.pid)) {
            peak.hwm_kib = hwm;
            peak.sampled_kib = peak.sampled_kib.max(rss);
        }
        peak
    }
}

/// The steady figure: after `settle`, `VmRSS` sampled every 100 ms for
/// `window`; the median, in KiB.
pub async fn steady_kib(pid: u32, settle: Duration, window: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    let until = Instant::now() + window;
    let mut samples = vec![procstat::rss_kib(pid)?];
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push(procstat::rss_kib(pid)?);
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
