//! Every open connection, and what closes one: a connection that sends no
//! request within the header-read timeout, or sits idle between requests for
//! longer than the idle timeout, is closed, whatever its protocol (hyper's own
//! HTTP/1 header timeout does not cover the HTTP/1-vs-HTTP/2 sniffing, and
//! HTTP/2 has none). When every connection permit is taken, room is made for
//! the new one by closing, oldest first, connections that have not sent a
//! byte yet (closing those resets no request on its way), and only when there
//! are none, connections idle for a while; so sockets that never speak cannot
//! lock a real delivery out, nor make it wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How often connections are checked against their deadlines.
/// How long a connection may stay silent before it is closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// For its first request (and, on HTTP/1, hyper applies it to every
    /// request's headers too).
    pub(super) first_request: Duration,
    /// Between requests.
    pub(super) idle: Duration,
}

const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Connections that have spoken are shed only once silent for at least this
/// long: a younger one may be a client whose request is on its way, and
/// closing a socket with unread bytes resets it (seen: a webhook accepted in
/// the first burst of a flood was shed before its request was parsed, and the
/// client got a reset). Connections that never sent a byte need no such wait:
/// they are checked for unread bytes as they close.
const SHED_MIN_SILENCE: Duration = Duration::from_millis(250);

/// One open connection, as the accept loop and the sweeper see it.
pub(super) struct Tracked {
    /// When the last request finished, or the connection was accepted.
    pub(super) idle_since_ms: AtomicU64,
    /// Requests being handled.
    pub(super) active: AtomicU32,
    /// Whether a request has reached the service: decides which deadline
    /// applies while idle (first request, or idle between requests).
    pub(super) served: AtomicBool,
    /// Whether the connection has sent a byte; until then it is the first
    /// to be shed.
    pub(super) spoke: AtomicBool,
    /// Asks a connection that has not spoken to close, unless its first
    /// bytes have just arrived.
    pub(super) shed_silent: CancellationToken,
    pub(super) close: CancellationToken,
}

impl Tracked {
    pub(super) fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }
}

/// The open connections.
pub(super) struct Connections {
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Connections {
    pub(super) fn new() -> Self {
        Connections {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn open(&self, close: CancellationToken) -> (u64, Arc<Tracked>) {
        let tracked = Arc::new(Tracked {
            idle_since_ms: AtomicU64::new(self.now_ms()),
            active: AtomicU32::new(0),
            served: AtomicBool::new(false),
            spoke: AtomicBool::new(false),
            shed_silent: CancellationToken::new(),
            close,
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .expect("connections lock")
            .insert(id, Arc::clone(&tracked));
        (id, tracked)
    }

    pub(super) fn closed(&self, id: u64) {
        self.live.lock().expect("connections lock").remove(&id);
    }

    /// Asks up to `count` connections to close to make room, in the order
    /// least likely to cost a delivery: those that never sent a byte, oldest
    /// first; when there are none, those stalled inside their first request;
    /// when there are none, keep-alive connections between requests. The
    /// last two only once silent for `SHED_MIN_SILENCE`. Returns how many
    /// were asked.
    pub(super) fn shed_oldest_idle(&self, count: usize) -> usize {
        let live = self.live.lock().expect("connections lock");
        let open: Vec<&Arc<Tracked>> = live
            .values()
            .filter(|tracked| !tracked.close.is_cancelled())
            .collect();
        let (never_spoke, spoke): (Vec<_>, Vec<_>) = open
            .into_iter()
            .partition(|tracked| !tracked.spoke.load(Ordering::Acquire));
        let shed = if never_spoke.is_empty() {
            let silent_since = self
                .now_ms()
                .saturating_sub(SHED_MIN_SILENCE.as_millis() as u64);
            let (keep_alive, first_request): (Vec<_>, Vec<_>) = spoke
                .into_iter()
                .filter(|tracked| {
                    tracked.is_idle()
                        && tracked.idle_since_ms.load(Ordering::Relaxed) <= silent_since
                })
                .partition(|tracked| tracked.served.load(Ordering::Relaxed));
            let idle = if first_request.is_empty() {
                keep_alive
            } else {
                first_request
            };
            let idle = oldest(idle, count);
            for tracked in &idle {
                tracked.close.cancel();
            }
            idle.len()
        } else {
            // Those already asked are closing: their permits are on the way.
            let not_asked = never_spoke
                .into_iter()
                .filter(|tracked| !tracked.shed_silent.is_cancelled())
                .collect();
            let not_asked = oldest(not_asked, count);
            for tracked in &not_asked {
                tracked.shed_silent.cancel();
            }
            not_asked.len()
        };
        metrics::counter!(crate::observe::metrics::CONNECTIONS_SHED).increment(shed as u64);
        shed
    }

    /// Closes connections past their deadlines: no first request within the
    /// header-read timeout, or idle for longer than the idle timeout.
    pub(super) fn sweep(&self, deadlines: Deadlines) {
        let now = self.now_ms();
        let first_request = deadlines.first_request.as_millis() as u64;
        let idle = deadlines.idle.as_millis() as u64;
        let live = self.live.lock().expect("connections lock");
        for tracked in live.values() {
            if !tracked.is_idle() || tracked.close.is_cancelled() {
                continue;
            }
            let deadline = if tracked.served.load(Ordering::Relaxed) {
                idle
            } else {
                first_request
            };
            let overdue =
                now.saturating_sub(tracked.idle_since_ms.load(Ordering::Relaxed)) >= deadline;
            if overdue {
                tracked.close.cancel();
                metrics::counter!(crate::observe::metrics::CONNECTIONS_TIMED_OUT).increment(1);
            }
        }
    }
}

/// The `count` connections idle the longest.
fn oldest(mut connections: Vec<&Arc<Tracked>>, count: usize) -> Vec<&Arc<Tracked>> {
    let idle_since = |tracked: &&Arc<Tracked>| tracked.idle_since_ms.load(Ordering::Relaxed);
    if connections.len() > count {
        connections.select_nth_unstable_by_key(count, idle_since);
        connections.truncate(count);
    }
    connections
}

/// Waits for a new connection's first bytes; false when it must close
/// without a word instead (shut down, past the first-request deadline, or
/// shed while silent). A shed connection whose bytes arrived meanwhile is
/// kept: closing a socket with unread bytes would reset its request.
pub(super) async fn first_bytes(stream: &TcpStream, tracked: &Tracked) -> bool {
    let mut byte = [0u8; 1];
    let spoke = tokio::select! {
        // Peeked, not `readable()`: tokio reports a new socket readable
        // before anything has arrived.
        peeked = stream.peek(&mut byte) => matches!(peeked, Ok(read) if read > 0),
        () = tracked.close.cancelled() => false,
        () = tracked.shed_silent.cancelled() => {
            let mut byte = [0u8; 1];
            matches!(
                futures::future::poll_immediate(stream.peek(&mut byte)).await,
                Some(Ok(read)) if read > 0
            )
        }
    };
    if spoke {
        tracked.spoke.store(true, Ordering::Release);
    }
    spoke
}

pub(super) async fn sweep_until(
    connections: Arc<Connections>,
    deadlines: Deadlines,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => connections.sweep(deadlines),
            () = stop.cancelled() => return,
        }
    }
}
