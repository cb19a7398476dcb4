//! The hyper accept loop: one task per connection, and what bounds what a
//! client can make the server hold.
//!
//! Every connection is tracked (`Connections`): a connection that sends no
//! request within the header-read timeout, or sits idle between requests for
//! longer than the idle timeout, is closed, whatever its protocol (hyper's own
//! HTTP/1 header timeout does not cover the HTTP/1-vs-HTTP/2 sniffing, and
//! HTTP/2 has none). When every connection permit is taken, room is made for
//! the new one by closing, oldest first, connections that have not sent a
//! byte yet (closing those resets no request on its way), and only when there
//! are none, connections idle for a while; so sockets that never speak cannot
//! lock a real delivery out, nor make it wait. HTTP/2 gets stream,
//! header-list and keep-alive ping limits; HTTP/1 a read-buffer cap.
//!
//! With `server.tls`, the TLS handshake follows the first bytes, under the
//! same first-request deadline (`crate::http::tls`).
//!
//! Shutdown: stop accepting, ask every connection to finish its request in
//! flight and close, and wait for them for at most the drain timeout.

use crate::config::Config;
use crate::http::acceptor::{Acceptor, ACCEPT_QUEUE};
use crate::http::ingest::Ingest;
use crate::http::tls::Tls;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Descriptors the bridge needs besides its connections: spool segments,
/// Kafka and registry sockets, the admin listener and its clients, logs.
const RESERVED_FILES: u64 = 256;

/// Raises the soft open-file limit to the hard one (a login session's soft
/// limit is often 1024, below the default `delivery.max_connections`, and
/// an accept past it fails with EMFILE), and warns when even the hard
/// limit leaves too few descriptors for `max_connections`. Returns the soft
/// limit now in effect (`None`: unlimited).
pub fn raise_open_file_limit(max_connections: usize) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            let raised = rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = soft, to = hard, "open-file limit raised");
                    limit = raised;
                }
                Err(error) => {
                    tracing::warn!(%error, soft, hard, "cannot raise the open-file limit")
                }
            }
        }
    }
    let needed = (max_connections + ACCEPT_QUEUE) as u64 + RESERVED_FILES;
    if let Some(soft) = limit.current.filter(|soft| *soft < needed) {
        tracing::warn!(
            open_file_limit = soft,
            max_connections,
            needed,
            "the open-file limit is below delivery.max_connections plus {ACCEPT_QUEUE} queued \
             plus {RESERVED_FILES}: connections past it fail to be accepted; raise the hard \
             limit (ulimit -Hn, LimitNOFILE) or lower delivery.max_connections"
        );
    }
    limit.current
}

/// HTTP/2 streams one connection may have open at once (Superfone sends one
/// request at a time; this only bounds a misbehaving client).
const H2_MAX_CONCURRENT_STREAMS: u32 = 64;
/// Largest HTTP/2 header list, and the HTTP/1 read buffer: request headers
/// of a webhook are a few hundred bytes.
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// HTTP/2 keep-alive pings find peers that vanished without closing.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often connections are checked against their deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a new connection waits for the permit a shed connection frees
/// before the accept loop sheds again.
const SHED_WAIT: Duration = Duration::from_millis(100);
/// Connections that have spoken are shed only once silent for at least this
/// long: a younger one may be a client whose request is on its way, and
/// closing a socket with unread bytes resets it (seen: a webhook accepted in
/// the first burst of a flood was shed before its request was parsed, and the
/// client got a reset). Connections that never sent a byte need no such wait:
/// they are checked for unread bytes as they close.
const SHED_MIN_SILENCE: Duration = Duration::from_millis(250);
/// Idle connections closed at once when every permit is taken, so a burst
/// of new connections finds permits free instead of each waiting for one
/// connection to close (a webhook queued behind a flood waited seconds).
const SHED_BATCH: usize = 64;

/// Bounds on what clients can make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// On shutdown, how long in-flight requests may take.
    pub drain_timeout: Duration,
    /// Slow-loris guard: a connection's first request (and on HTTP/1 every
    /// request's headers) must arrive within this time.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; when all are taken, the oldest idle one
    /// is closed for a new one, so a flood cannot exhaust memory or file
    /// descriptors, nor lock real clients out.
    pub max_connections: usize,
}

impl Limits {
    /// The limits `config` sets (`[server]` and `[delivery]`).
    pub fn of(config: &Config) -> Limits {
        Limits {
            drain_timeout: config.server.drain_timeout_ms,
            header_read_timeout: config.delivery.header_read_timeout_ms,
            idle_timeout: config.delivery.idle_timeout_ms,
            max_connections: config.delivery.max_connections,
        }
    }
}

/// One open connection, as the accept loop and the sweeper see it.
struct Tracked {
    /// When the last request finished, or the connection was accepted.
    idle_since_ms: AtomicU64,
    /// Requests being handled.
    active: AtomicU32,
    /// Whether a request has reached the service: decides which deadline
    /// applies while idle (first request, or idle between requests).
    served: AtomicBool,
    /// Whether the connection has sent a byte; until then it is the first
    /// to be shed.
    spoke: AtomicBool,
    /// Asks a connection that has not spoken to close, unless its first
    /// bytes have just arrived.
    shed_silent: CancellationToken,
    close: CancellationToken,
}

impl Tracked {
    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }
}

/// The open connections.
struct Connections {
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Connections {
    fn new() -> Self {
        Connections {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn open(&self, close: CancellationToken) -> (u64, Arc<Tracked>) {
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

    fn closed(&self, id: u64) {
        self.live.lock().expect("connections lock").remove(&id);
    }

    /// Asks up to `count` connections to close to make room, in the order
    /// least likely to cost a delivery: those that never sent a byte, oldest
    /// first; when there are none, those stalled inside their first request;
    /// when there are none, keep-alive connections between requests. The
    /// last two only once silent for `SHED_MIN_SILENCE`. Returns how many
    /// were asked.
    fn shed_oldest_idle(&self, count: usize) -> usize {
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
    fn sweep(&self, limits: &Limits) {
        let now = self.now_ms();
        let first_request = limits.header_read_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
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
async fn first_bytes(stream: &TcpStream, tracked: &Tracked) -> bool {
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

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// The TLS handshake of a connection that has spoken; `None` when it fails
/// or the connection is asked to close first (shutdown, shed, or past the
/// first-request deadline, which covers the handshake).
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    tracked: &Tracked,
    peer: std::net::SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let accepted = tokio::select! {
        accepted = tls.acceptor().accept(stream) => accepted,
        () = tracked.close.cancelled() => return None,
    };
    match accepted {
        Ok(stream) => Some(stream),
        Err(error) => {
            metrics::counter!(crate::observe::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for at
/// most `drain_timeout`. With `tls`, every connection is HTTPS.
pub async fn serve(
    mut acceptor: Acceptor,
    ingest: Arc<Ingest>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
) {
    let builder = Arc::new(builder(&limits));
    let connections = Arc::new(Connections::new());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let stopping = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(sweep_until(
        Arc::clone(&connections),
        limits,
        stopping.clone(),
    ));
    // Connections asked to close whose permits have not come back yet.
    let mut shed_underway: usize = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = acceptor.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // The socket could not join the runtime's reactor:
                    // back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Full: make room by closing the longest-silent connections, and
        // keep the new one waiting (never dropped: it may carry a delivery)
        // until a permit frees. The connections asked free their permits one
        // by one as their tasks run; until they have, or `SHED_WAIT` passes,
        // the next new connections wait for those permits instead of asking
        // (and scanning every connection) again: a single busy worker freed
        // them one at a time, and a scan per connection made the accept loop
        // the bottleneck of a flood.
        let permit = loop {
            if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                shed_underway = shed_underway.saturating_sub(1);
                break Some(permit);
            }
            if shed_underway == 0 {
                shed_underway = connections.shed_oldest_idle(SHED_BATCH);
            }
            tokio::select! {
                permit = tokio::time::timeout(SHED_WAIT, Arc::clone(&permits).acquire_owned()) => {
                    match permit {
                        Ok(permit) => {
                            shed_underway = shed_underway.saturating_sub(1);
                            break Some(permit.expect("semaphore never closed"));
                        }
                        // Those asked did not all close in time: ask again.
                        Err(_) => shed_underway = 0,
                    }
                }
                () = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else {
            break;
        };
        let (id, tracked) = connections.open(stopping.child_token());
        let service = {
            let (ingest, tracked, connections) = (
                Arc::clone(&ingest),
                Arc::clone(&tracked),
                Arc::clone(&connections),
            );
            service_fn(move |request| {
                tracked.active.fetch_add(1, Ordering::AcqRel);
                tracked.served.store(true, Ordering::Relaxed);
                let (ingest, tracked, connections) = (
                    Arc::clone(&ingest),
                    Arc::clone(&tracked),
                    Arc::clone(&connections),
                );
                // Boxed so the delivery path's state (about 4 KB) is freed when the
                // answer is sent: hyper keeps the slot of the service's future for
                // the connection's life, so inline it stayed with every idle
                // keep-alive connection (measured: 400 connections held ~1.5 MB more).
                let delivery = Box::pin(async move {
                    let response = ingest.handle(request).await;
                    tracked
                        .idle_since_ms
                        .store(connections.now_ms(), Ordering::Relaxed);
                    tracked.active.fetch_sub(1, Ordering::AcqRel);
                    response
                });
                async move { Ok::<_, Infallible>(delivery.await) }
            })
        };
        let (builder, connections) = (Arc::clone(&builder), Arc::clone(&connections));
        let tls = tls.clone();
        let drain_timeout = limits.drain_timeout;
        tasks.spawn(async move {
            if !first_bytes(&stream, &tracked).await {
                connections.closed(id);
                drop(permit);
                return;
            }
            let stream = match &tls {
                None => Either::Left(stream),
                Some(tls) => match handshake(tls, stream, &tracked, peer).await {
                    Some(stream) => Either::Right(stream),
                    None => {
                        connections.closed(id);
                        drop(permit);
                        return;
                    }
                },
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = tracked.close.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if tracked.is_idle() {
                        // No request in the service, and only this task polls the
                        // connection, so none can arrive before the drop: one poll
                        // to send HTTP/2's GOAWAY, then close. (Waiting for hyper
                        // would wait out the header timeout of a half-sent request.)
                        futures::future::poll_immediate(connection.as_mut())
                            .await
                            .unwrap_or(Ok(()))
                    } else {
                        // Finish the request in flight, then close.
                        tokio::time::timeout(drain_timeout, connection)
                            .await
                            .unwrap_or(Ok(()))
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            connections.closed(id);
            drop(permit);
        });
    }
    drop(acceptor);
    tracing::info!("stopped accepting; draining in-flight requests");
    stopping.cancel();
    tasks.close();
    tokio::select! {
        () = tasks.wait() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.drain_timeout) => tracing::warn!(drain_timeout = ?limits.drain_timeout, "drain timeout: closing remaining connections"),
    }
}

async fn sweep_until(connections: Arc<Connections>, limits: Limits, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => connections.sweep(&limits),
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let lowered = Rlimit {
            current: Some(512),
            maximum: hard,
        };
        setrlimit(Resource::Nofile, lowered).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(512));
        assert_eq!(raise_open_file_limit(2_048), hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }
}
