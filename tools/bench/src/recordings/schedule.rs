//! When each recording of a phase is started: all at once with a fixed
//! number in flight (a burst: the rate a target sustains), or one every
//! 1/rate seconds whatever the earlier ones are doing (open loop: the
//! latency of a target that keeps up, measured from the scheduled start so
//! a stall is not hidden by the schedule waiting for it).

use crate::recordings::Recording;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// Every recording queued at once, `in_flight` of them running at a time.
    Burst { in_flight: usize },
    /// `rate` starts a second; past `in_flight` running, a start waits (and
    /// its wait counts in its latency).
    Open { rate: f64, in_flight: usize },
}

/// One recording copied by the ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub seq: u64,
    pub bytes: u64,
    /// From when it was asked for (`Schedule::run`) to its file closed.
    pub latency: Duration,
    pub done: Instant,
}

impl Schedule {
    /// Runs `action(recording, asked)` for every recording, `asked` being
    /// when the recording was asked for: the phase's start in a burst (a
    /// latency then includes the wait in the queue, as a burst of webhooks
    /// waits in the bridge's), its scheduled start in open loop. The
    /// results come in no particular order.
    pub async fn run<T, F, Fut>(self, recordings: &[Recording], action: F) -> anyhow::Result<Vec<T>>
    where
        F: Fn(Recording, Instant) -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let in_flight = match self {
            Schedule::Burst { in_flight } | Schedule::Open { in_flight, .. } => in_flight,
        };
        let slots = Arc::new(Semaphore::new(in_flight));
        let first = Instant::now();
        let mut running = JoinSet::new();
        for (index, recording) in recordings.iter().enumerate() {
            let scheduled = match self {
                Schedule::Burst { .. } => None,
                Schedule::Open { rate, .. } => {
                    let at = first + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    Some(at)
                }
            };
            let slots = Arc::clone(&slots);
            let action = action(recording.clone(), scheduled.unwrap_or(first));
            running.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("never closed");
                action.await
            });
        }
        let mut results = Vec::with_capacity(recordings.len());
        while let Some(result) = running.join_next().await {
            results.push(result??);
        }
        Ok(results)
    }
}
