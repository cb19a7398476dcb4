//! Serving the ingest listener, in the manner of mini-redis: the `Listener`
//! accepts a connection, admits it under the connection limit (shedding
//! silent ones when full, `crate::http::connections`), and hands it to a
//! `Handler` task that waits for its first bytes, does the TLS handshake if
//! `server.tls` is set (under the same first-request deadline), and serves
//! it with hyper. HTTP/2 gets stream, header-list and keep-alive ping
//! limits; HTTP/1 a read-buffer cap.
//!
//! Shutdown: stop accepting, ask every connection to finish its request in
//! flight and close, and wait for them for at most the drain timeout.

use crate::config::Config;
use crate::http::acceptor::{Acceptor, ACCEPT_QUEUE};
use crate::http::connections::{first_bytes, sweep_until, Connections, Deadlines, Tracked};
use crate::http::ingest::Ingest;
use crate::http::tls::Tls;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
/// How long a new connection waits for the permit a shed connection frees
/// before the accept loop sheds again.
const SHED_WAIT: Duration = Duration::from_millis(100);
/// Idle connections closed at once when every permit is taken, so a burst
/// of new connections finds permits free instead of each waiting for one
/// connection to close (a webhook queued behind a flood waited seconds).
const SHED_BATCH: usize = 64;
/// How long the accept loop waits after a socket failed to join the reactor.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    acceptor: Acceptor,
    ingest: Arc<Ingest>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
) {
    let mut listener = Listener::new(acceptor, ingest, limits, tls);
    listener.run(shutdown).await;
    listener.drain().await;
}

/// The accept loop's state: what every connection shares, and the permits
/// that bound how many are open.
struct Listener {
    acceptor: Acceptor,
    ingest: Arc<Ingest>,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Connections>,
    permits: Arc<Semaphore>,
    /// Connections asked to close whose permits have not come back yet.
    shed_underway: usize,
    /// Cancelled at shutdown: every connection's `close` is a child of it.
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Listener {
    fn new(acceptor: Acceptor, ingest: Arc<Ingest>, limits: Limits, tls: Option<Arc<Tls>>) -> Self {
        let connections = Arc::new(Connections::new());
        let stopping = CancellationToken::new();
        let tasks = TaskTracker::new();
        let deadlines = Deadlines {
            first_request: limits.header_read_timeout,
            idle: limits.idle_timeout,
        };
        tasks.spawn(sweep_until(
            Arc::clone(&connections),
            deadlines,
            stopping.clone(),
        ));
        Listener {
            acceptor,
            ingest,
            tls,
            builder: Arc::new(builder(&limits)),
            connections,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            shed_underway: 0,
            stopping,
            tasks,
        }
    }

    /// Accepts, admits and hands off connections until `shutdown` resolves.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let Some((stream, peer)) = self.accept(&mut shutdown).await else {
                return;
            };
            let Some(permit) = self.admit(&mut shutdown).await else {
                return;
            };
            self.spawn_handler(stream, peer, permit);
        }
    }

    /// The next connection, or `None` once `shutdown` resolves.
    async fn accept<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                accepted = self.acceptor.accept() => match accepted {
                    Ok(accepted) => return Some(accepted),
                    Err(error) => {
                        // The socket could not join the runtime's reactor:
                        // back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                () = shutdown.as_mut() => return None,
            }
        }
    }

    /// A permit for a new connection; `None` once `shutdown` resolves.
    ///
    /// Full: make room by closing the longest-silent connections, and keep
    /// the new one waiting (never dropped: it may carry a delivery) until a
    /// permit frees. The connections asked free their permits one by one as
    /// their tasks run; until they have, or `SHED_WAIT` passes, the next new
    /// connections wait for those permits instead of asking (and scanning
    /// every connection) again: a single busy worker freed them one at a
    /// time, and a scan per connection made the accept loop the bottleneck
    /// of a flood.
    async fn admit<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                self.shed_underway = self.shed_underway.saturating_sub(1);
                return Some(permit);
            }
            if self.shed_underway == 0 {
                self.shed_underway = self.connections.shed_oldest_idle(SHED_BATCH);
            }
            let freed = tokio::time::timeout(SHED_WAIT, Arc::clone(&self.permits).acquire_owned());
            tokio::select! {
                freed = freed => match freed {
                    Ok(permit) => {
                        self.shed_underway = self.shed_underway.saturating_sub(1);
                        return Some(permit.expect("semaphore never closed"));
                    }
                    // Those asked did not all close in time: ask again.
                    Err(_) => self.shed_underway = 0,
                },
                () = shutdown.as_mut() => return None,
            }
        }
    }

    fn spawn_handler(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let (id, tracked) = self.connections.open(self.stopping.child_token());
        let handler = Handler {
            stream,
            peer,
            tracked,
            ingest: Arc::clone(&self.ingest),
            tls: self.tls.clone(),
            builder: Arc::clone(&self.builder),
            drain_timeout: self.limits.drain_timeout,
            _slot: Slot {
                id,
                connections: Arc::clone(&self.connections),
                _permit: permit,
            },
        };
        self.tasks.spawn(handler.run());
    }

    /// Stops accepting, asks every connection to close after its request in
    /// flight, and waits for them for at most the drain timeout.
    async fn drain(self) {
        drop(self.acceptor);
        tracing::info!("stopped accepting; draining in-flight requests");
        self.stopping.cancel();
        self.tasks.close();
        let drain_timeout = self.limits.drain_timeout;
        tokio::select! {
            () = self.tasks.wait() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(drain_timeout) => tracing::warn!(
                ?drain_timeout,
                "drain timeout: closing remaining connections"
            ),
        }
    }
}

/// A connection's place among the open ones: given back (tracking entry and
/// permit) when its handler ends, however it ends.
struct Slot {
    id: u64,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.closed(self.id);
    }
}

/// One connection's task, from its first bytes to its close.
struct Handler {
    stream: TcpStream,
    peer: SocketAddr,
    tracked: Arc<Tracked>,
    ingest: Arc<Ingest>,
    tls: Option<Arc<Tls>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain_timeout: Duration,
    _slot: Slot,
}

impl Handler {
    async fn run(self) {
        if !first_bytes(&self.stream, &self.tracked).await {
            return;
        }
        let stream = match &self.tls {
            None => Either::Left(self.stream),
            Some(tls) => match handshake(tls, self.stream, &self.tracked, self.peer).await {
                Some(stream) => Either::Right(stream),
                None => return,
            },
        };
        let service = delivery_service(
            Arc::clone(&self.ingest),
            Arc::clone(&self.tracked),
            Arc::clone(&self._slot.connections),
        );
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.tracked.close.cancelled() => {
                connection.as_mut().graceful_shutdown();
                if self.tracked.is_idle() {
                    // No request in the service, and only this task polls the
                    // connection, so none can arrive before the drop: one poll
                    // to send HTTP/2's GOAWAY, then close. (Waiting for hyper
                    // would wait out the header timeout of a half-sent request.)
                    futures::future::poll_immediate(connection.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                } else {
                    // Finish the request in flight, then close.
                    tokio::time::timeout(self.drain_timeout, connection)
                        .await
                        .unwrap_or(Ok(()))
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
        }
    }
}

/// The service of one connection: each request goes to `ingest`, counted
/// as active on `tracked` while it runs, so the sweeper and the shedding
/// never close a connection in the middle of a delivery.
fn delivery_service(
    ingest: Arc<Ingest>,
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> {
    service_fn(move |request| {
        tracked.active.fetch_add(1, Ordering::AcqRel);
        tracked.served.store(true, Ordering::Relaxed);
        let (ingest, tracked, connections) = (
            Arc::clone(&ingest),
            Arc::clone(&tracked),
            Arc::clone(&connections),
        );
        // Boxed so the delivery path's state is freed when the answer is
        // sent: hyper keeps the slot of the service's future for the
        // connection's life, so inline it stayed with every idle keep-alive
        // connection.
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
