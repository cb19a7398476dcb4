//! The running bridge, wired from the layers below: `App::build` needs only
//! the local schemas and the spool: it opens the spool and binds the
//! listeners. `App::run_until_stopped` serves at once and runs the start-up
//! checks behind the open listener: the brokers (topic creation) and the
//! schema registry get one bounded try each, at the same time; whatever is
//! unreachable is finished later while events go to the spool, and a
//! refusal stops the bridge. It serves until the shutdown future resolves,
//! drains, and flushes the producer. `drain_spool` is the same start-up,
//! checks first, for `superfone-bridge spool drain`.

use crate::config::Config;
use crate::durability::dedup::Dedup;
use crate::durability::delivery::{Delivery, Recovered};
use crate::durability::kafka::{PublishError, Publisher, TopicSpec, Topics};
use crate::durability::spool::{Spool, SpoolError, SpoolSettings};
use crate::durability::startup::{Check, StartupGate};
use crate::http::acceptor::Acceptor;
use crate::http::auth::Authenticator;
use crate::http::body::{BodyBudget, SMALL_BODY_BYTES};
use crate::http::ingest::{Ingest, IngestSettings};
use crate::http::response::Outcome;
use crate::http::{server, tls};
use crate::observe::metrics;
use crate::ops::admin;
use crate::ops::health::{CopierHealth, Health};
use crate::pipeline::registry::{RegistryError, SchemaIds};
use crate::pipeline::route::routes;
use crate::pipeline::schema::{self, EventSchema, SchemaError, SchemaSource};
use crate::recordings::copier::{copy_recordings, CopierState};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the final producer flush may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Kafka(#[from] PublishError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("server.tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("invalid server.group_id_header")]
    GroupIdHeader,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the spool: the entries it holds are counted for the replay (per
/// key: nothing is kept per entry). Not to the dedup window: an entry still
/// in the spool is not provably its entity's latest event (dedup.rs).
fn open_spool(config: &Config) -> Result<(Spool, Recovered), StartupError> {
    let mut recovered = Recovered::default();
    let settings = SpoolSettings {
        dir: config.spool.dir.clone(),
        max_bytes: config.spool.max_bytes,
        segment_bytes: config.spool.segment_bytes,
    };
    let (spool, recovery) = Spool::open(settings, |entry, _| {
        recovered.add(&entry.record);
    })?;
    if recovery.torn_bytes > 0 {
        tracing::error!(
            torn_bytes = recovery.torn_bytes,
            "spool had a torn or corrupt tail (crash mid-write); kept the valid prefix"
        );
    }
    if recovery.corrupt_bytes > 0 {
        tracing::error!(
            corrupt_bytes = recovery.corrupt_bytes,
            "spool had damaged frames mid-segment; skipped them and kept the frames after them"
        );
    }
    if recovery.pending > 0 {
        tracing::warn!(
            pending = recovery.pending,
            "replaying events left in the spool"
        );
    }
    Ok((spool, recovered))
}

/// What `drain_spool` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Entries the spool held when it was opened.
    pub found: usize,
    /// Entries still waiting when the drain stopped.
    pub left: usize,
    /// Records Kafka refused for good, parked (`spool parked list`).
    pub parked: u64,
}

/// `superfone-bridge spool drain`: opens the spool of `config` (refused
/// while a bridge has it open), sends every entry to Kafka in spool order
/// within `timeout`, marks those acknowledged delivered, and syncs. For a
/// volume a scaled-in pod left behind.
pub async fn drain_spool(config: &Config, timeout: Duration) -> Result<DrainReport, StartupError> {
    let schemas = schema::load_all(&SchemaSource::of(&config.registry))?;
    let (spool, recovered) = open_spool(config)?;
    let found = recovered.len();
    let publisher = Arc::new(Publisher::new(&config.kafka, config.max_record_bytes())?);
    let startup_timeout = config.kafka.startup_timeout_ms;
    publisher.check_broker(startup_timeout).await?;
    create_topics(config, &publisher, startup_timeout).await?;
    let schema_ids = schema_ids(config, &schemas).await?;
    let delivery = Delivery::new(
        Arc::clone(&publisher),
        spool,
        schema_ids,
        recovered,
        config.delivery.ack_deadline_ms,
        Topics::Ready,
        Arc::new(StartupGate::passed()),
    );
    let left = delivery.drain(timeout).await;
    if let Some(waiting_for) = delivery.waiting_for() {
        tracing::warn!(%waiting_for, left, "spool drain stopped waiting");
    }
    publisher
        .flush(FLUSH_TIMEOUT)
        .await
        .map_err(PublishError::Client)?;
    delivery.spool().sync().await?;
    Ok(DrainReport {
        found,
        left,
        parked: delivery.spool().parked(),
    })
}

/// `superfone-bridge recordings run`: the recording copier alone (its own
/// Deployment), until `shutdown`. Serves the admin endpoints (ready once the
/// copier has started), waits for the brokers, creates the topics (if
/// `kafka.create_topics`), then copies; the producer is flushed at the end.
pub async fn run_recordings(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let admin_listener = listen(config.admin.listen)?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartupError::Bind {
            addr: config.admin.listen,
            source,
        })?;
    let state = Arc::new(CopierState::default());
    let stop = CancellationToken::new();
    let probe = CopierHealth {
        state: Arc::clone(&state),
        group_id: config.recordings.group_id.clone(),
    };
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(probe),
        metrics::handle(),
        stop.clone(),
    ));
    let publisher = Arc::new(Publisher::new(&config.kafka, config.max_record_bytes())?);
    let timeout = config.kafka.startup_timeout_ms;
    publisher.check_broker(timeout).await?;
    create_topics(&config, &publisher, timeout).await?;
    tracing::info!(%admin_addr, group = %config.recordings.group_id, "ready");
    let copier = tokio::spawn(copy_recordings(
        Arc::new(config),
        Arc::clone(&publisher),
        state,
        stop.clone(),
    ));
    shutdown.await;
    stop.cancel();
    let _ = copier.await;
    publisher
        .flush(FLUSH_TIMEOUT)
        .await
        .map_err(PublishError::Client)?;
    Ok(())
}

/// Gives the brokers one bounded try: reachable, the topics are created
/// now and are `Ready`; unreachable, they are `Pending` (if the bridge
/// creates them) and the health watcher creates them once the brokers are
/// back. A broker that answers and refuses is an error.
async fn prepare_topics(config: &Config, publisher: &Publisher) -> Result<Topics, StartupError> {
    let timeout = config.kafka.startup_timeout_ms;
    if let Err(error) = publisher.check_broker(timeout).await {
        tracing::warn!(%error, "Kafka unreachable at start-up; events go to the spool until it is back");
        return Ok(if config.kafka.create_topics {
            Topics::Pending
        } else {
            Topics::Ready
        });
    }
    match create_topics(config, publisher, timeout).await {
        Ok(()) => Ok(Topics::Ready),
        // Brokers that answered the check and then timed out, or have no
        // controller yet: the health watcher creates the topics later.
        Err(StartupError::Kafka(error)) if !error.is_creation_refusal() => {
            tracing::warn!(%error, "cannot create the topics yet; events go to the spool until they exist");
            Ok(Topics::Pending)
        }
        Err(refusal) => Err(refusal),
    }
}

/// On reachable brokers: creates the missing topics (if
/// `kafka.create_topics`) and warns about topics whose limits are too low.
async fn create_topics(
    config: &Config,
    publisher: &Publisher,
    timeout: Duration,
) -> Result<(), StartupError> {
    let spec = TopicSpec::of(config);
    if config.kafka.create_topics {
        publisher.create_topics(&spec, timeout).await?;
    }
    publisher.check_topic_limits(&spec, timeout).await;
    Ok(())
}

/// The registry ids of `schemas`, those kept in the spool directory first,
/// with one try at the registry for the rest (`prepare_schema_ids`).
async fn schema_ids(
    config: &Config,
    schemas: &[EventSchema],
) -> Result<Arc<SchemaIds>, StartupError> {
    let ids = Arc::new(SchemaIds::new(
        &config.registry,
        &config.topics,
        schemas,
        Some(&config.spool.dir),
    ));
    prepare_schema_ids(&ids).await?;
    Ok(ids)
}

/// Gives the registry one try: every id known, or an unreachable registry
/// (the ids kept from the last run are used, the rest registered in the
/// background). A registry that refuses a schema stops the start.
async fn prepare_schema_ids(ids: &SchemaIds) -> Result<(), StartupError> {
    match ids.register_pending().await {
        Ok(()) => Ok(()),
        Err(error) if error.is_refusal() => Err(error.into()),
        Err(error) => {
            tracing::warn!(
                %error, known_ids = ids.subjects().len() - ids.pending(),
                "schema registry unreachable at start-up; events whose schema has no id yet \
                 go to the spool and are stamped once it is back"
            );
            Ok(())
        }
    }
}

/// Connections the kernel queues for `accept`. std's 128 overflowed under a
/// burst of new connections (SYNs dropped, each client stalled a second);
/// the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener (with `SO_REUSEADDR`, as std does) and a deep accept queue.
fn listen(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let bound = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bound().map_err(|source| StartupError::Bind { addr, source })
}

pub struct App {
    listener: Acceptor,
    auth: Arc<Authenticator>,
    admin_listener: TcpListener,
    health: Arc<Health>,
    ingest: Arc<Ingest>,
    publisher: Arc<Publisher>,
    delivery: Arc<Delivery>,
    /// What deliveries wait for while the start-up checks run.
    startup: Arc<StartupGate>,
    limits: server::Limits,
    tls: Option<Arc<tls::Tls>>,
    shutdown_drain: Duration,
    config: Arc<Config>,
}

impl App {
    /// Loads what must be right locally (schemas, TLS files, spool) and
    /// binds the ingest and admin listeners. Nothing here waits for Kafka
    /// or the registry: `run_until_stopped` asks them behind the open
    /// listener.
    pub async fn build(config: Config, auth: Authenticator) -> Result<App, StartupError> {
        // Fail fast on broken schema files and TLS files.
        let schemas = schema::load_all(&SchemaSource::of(&config.registry))?;
        // Install the recorder before anything records (the TLS files'
        // expiry, first).
        metrics::handle();
        metrics::show_every_request_series(&Outcome::NAMES);
        let tls = load_tls(&config)?;
        let dedup = Dedup::of(&config.dedup);
        let (spool, recovered) = open_spool(&config)?;

        let publisher = Arc::new(Publisher::new(&config.kafka, config.max_record_bytes())?);
        let schema_ids = Arc::new(SchemaIds::new(
            &config.registry,
            &config.topics,
            &schemas,
            Some(&config.spool.dir),
        ));
        let routes = routes(&config, schemas, &schema_ids);
        // Ready once the start-up checks have found the topics (`check_dependencies`).
        // A delivery waits for the checks no longer than it would for an ack.
        let startup = Arc::new(StartupGate::new(config.delivery.ack_deadline_ms));
        let delivery = Delivery::new(
            Arc::clone(&publisher),
            spool,
            schema_ids,
            recovered,
            config.delivery.ack_deadline_ms,
            Topics::Pending,
            Arc::clone(&startup),
        );

        let body_budget = BodyBudget::new(config.server.max_body_bytes_in_flight, SMALL_BODY_BYTES);
        let health = health(&config, &delivery, &publisher, &body_budget);
        let auth = Arc::new(auth);
        let settings = IngestSettings::of(&config).map_err(|_| StartupError::GroupIdHeader)?;
        let ingest = Arc::new(Ingest::new(
            settings,
            Arc::clone(&auth),
            routes,
            Arc::clone(&delivery),
            dedup,
            body_budget,
            Arc::clone(&startup),
        ));
        let (listener, admin_listener) = bind_listeners(&config)?;
        Ok(App {
            listener,
            auth,
            admin_listener,
            health,
            ingest,
            publisher,
            delivery,
            startup,
            limits: server::Limits::of(&config),
            tls,
            shutdown_drain: config.spool.shutdown_drain_ms,
            config: Arc::new(config),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// Serves until `shutdown` resolves, with the start-up checks running
    /// behind the open listener (`finish_start_up`); a refusal they find
    /// stops the bridge as `shutdown` would, and is returned. Then drains
    /// requests, stops the replay, sends what is left in the spool to Kafka
    /// (`drain_before_exit`), flushes the producer and syncs the spool.
    /// Whatever has not reached Kafka by then stays in the spool for the
    /// next start.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartupError> {
        let stop_background = CancellationToken::new();
        let checks = tokio::spawn(finish_start_up(
            Arc::clone(&self.config),
            Arc::clone(&self.publisher),
            Arc::clone(&self.delivery),
            Arc::clone(&self.startup),
            stop_background.clone(),
        ));
        let stop_replay = CancellationToken::new();
        let replay = tokio::spawn(Arc::clone(&self.delivery).replay(stop_replay.clone()));
        self.spawn_watchers(&stop_background);
        let stop_recordings = CancellationToken::new();
        let recordings = self.spawn_recordings(&stop_recordings);
        tokio::spawn(admin::serve(
            self.admin_listener,
            Arc::clone(&self.health) as Arc<dyn admin::Probe>,
            metrics::handle(),
            stop_background.clone(),
        ));
        let checks_running = checks.abort_handle();
        let (tell_refusal, refusal) = tokio::sync::oneshot::channel();
        let stopped = async move {
            let _ = tell_refusal.send(until_stopped(shutdown, checks).await);
        };
        server::serve(self.listener, self.ingest, stopped, self.limits, self.tls).await;
        checks_running.abort();
        // Copies not ended are copied again after the restart: their
        // offsets were not committed.
        stop_recordings.cancel();
        if let Some(recordings) = recordings {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, recordings).await;
        }
        // The replay finishes the window it sent, so its acknowledgements are recorded.
        stop_replay.cancel();
        if tokio::time::timeout(FLUSH_TIMEOUT, replay).await.is_err() {
            tracing::warn!("spool replay did not finish its window in time; its records are sent again after the restart");
        }
        drain_before_exit(&self.delivery, &self.health, self.shutdown_drain).await;
        if let Err(error) = self.publisher.flush(FLUSH_TIMEOUT).await {
            tracing::error!(%error, "producer flush at shutdown did not complete");
        }
        // Let acknowledgements that arrived during the flush mark their entries delivered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(error) = self.delivery.spool().sync().await {
            tracing::error!(%error, "spool sync at shutdown failed");
        }
        stop_background.cancel();
        tracing::info!(left_in_spool = self.delivery.backlog_len(), "stopped");
        refusal.await.ok().flatten().map_or(Ok(()), Err)
    }

    /// The recording copier, when it runs inside `serve`, until `stop`. It
    /// joins its group once the brokers have had their start-up check, so
    /// the topic it reads is created by then if they answered.
    fn spawn_recordings(&self, stop: &CancellationToken) -> Option<JoinHandle<()>> {
        let (config, publisher) = (Arc::clone(&self.config), Arc::clone(&self.publisher));
        let (startup, stop) = (Arc::clone(&self.startup), stop.clone());
        self.config.recordings.enabled.then(|| {
            tokio::spawn(async move {
                tokio::select! {
                    () = startup.checked(Check::Kafka) => {}
                    () = stop.cancelled() => return,
                }
                let state = Arc::new(CopierState::default());
                copy_recordings(config, publisher, state, stop).await;
            })
        })
    }

    /// The tasks that keep the gauges, readiness, secrets and certificates
    /// current until `stop`.
    fn spawn_watchers(&self, stop: &CancellationToken) {
        tokio::spawn(Arc::clone(&self.delivery).report_spool(stop.clone()));
        tokio::spawn(Arc::clone(&self.health).watch(stop.clone()));
        tokio::spawn(Arc::clone(&self.auth).watch_secrets_file(stop.clone()));
        if let Some(tls) = &self.tls {
            tokio::spawn(Arc::clone(tls).watch(stop.clone()));
        }
    }
}

/// The start-up checks, behind the open listener: `check_dependencies`,
/// then, for the schemas still without an id from the registry, the
/// registration in the background with backoff until `stop`. Returns a
/// refusal, which stops the bridge.
async fn finish_start_up(
    config: Arc<Config>,
    publisher: Arc<Publisher>,
    delivery: Arc<Delivery>,
    startup: Arc<StartupGate>,
    stop: CancellationToken,
) -> Result<(), StartupError> {
    let started = Instant::now();
    check_dependencies(&config, &publisher, &delivery, &startup).await?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        topics_ready = delivery.topics_ready(),
        schemas_without_id = delivery.schemas().pending(),
        "start-up checks done"
    );
    tokio::spawn(Arc::clone(delivery.schemas()).register_until_done(stop));
    Ok(())
}

/// Gives the brokers (the topics) and the registry (the schema ids) one
/// bounded try each, at the same time, and settles each one's part of the
/// start-up gate as it ends. Unreachable is no error: the events go to the
/// spool until they answer. A refusal is, and ends the other check.
async fn check_dependencies(
    config: &Config,
    publisher: &Publisher,
    delivery: &Delivery,
    startup: &StartupGate,
) -> Result<(), StartupError> {
    // Records wait for the registry even when every id is kept from the
    // last run: a rebuilt registry numbers schemas anew, and an answering
    // one must confirm them first.
    let kafka = async {
        let _settled = startup.settles_on_drop(Check::Kafka);
        if prepare_topics(config, publisher).await? == Topics::Ready {
            delivery.set_topics_ready();
        }
        Ok::<(), StartupError>(())
    };
    let registry = async {
        let _settled = startup.settles_on_drop(Check::Registry);
        prepare_schema_ids(delivery.schemas()).await
    };
    tokio::try_join!(kafka, registry).map(|_| ())
}

/// Resolves when `shutdown` does, or when the start-up checks end in a
/// refusal, which it returns.
async fn until_stopped(
    shutdown: impl Future<Output = ()>,
    checks: JoinHandle<Result<(), StartupError>>,
) -> Option<StartupError> {
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => None,
        ended = checks => {
            if let Ok(Err(refusal)) = ended {
                tracing::error!(error = %refusal, "a start-up check was refused; stopping (the events taken are kept)");
                return Some(refusal);
            }
            shutdown.await;
            None
        }
    }
}

/// The TLS files of `server.tls`, loaded (none: plain HTTP).
fn load_tls(config: &Config) -> Result<Option<Arc<tls::Tls>>, StartupError> {
    let tls = config.server.tls.as_ref().map(tls::Tls::load).transpose()?;
    Ok(tls.map(Arc::new))
}

/// What `/healthz`, `/readyz` and `/status` look at; with
/// `kafka.create_topics`, it creates the topics once Kafka is back.
fn health(
    config: &Config,
    delivery: &Arc<Delivery>,
    publisher: &Arc<Publisher>,
    body_budget: &Arc<BodyBudget>,
) -> Arc<Health> {
    Arc::new(Health::new(
        Arc::clone(delivery),
        Arc::clone(publisher),
        config.max_record_bytes() as u64,
        config.kafka.create_topics.then(|| TopicSpec::of(config)),
        Arc::clone(body_budget),
    ))
}

/// Binds the ingest listener (accepting on a thread of its own, with the
/// open-file limit raised for `delivery.max_connections`) and the admin one.
fn bind_listeners(config: &Config) -> Result<(Acceptor, TcpListener), StartupError> {
    server::raise_open_file_limit(config.delivery.max_connections);
    let addr = config.server.listen;
    let listener =
        Acceptor::start(listen(addr)?).map_err(|source| StartupError::Bind { addr, source })?;
    let admin_listener = listen(config.admin.listen)?;
    Ok((listener, admin_listener))
}

/// At shutdown, sends the spool's backlog to Kafka for at most `limit`
/// (`spool.shutdown_drain_ms`), if Kafka is reachable: a pod scaled in must
/// not leave events on a volume nobody reads.
async fn drain_before_exit(delivery: &Delivery, health: &Health, limit: Duration) {
    let waiting = delivery.backlog_len();
    if waiting == 0 || limit.is_zero() {
        return;
    }
    if !health.check_kafka().await {
        tracing::warn!(
            left_in_spool = waiting,
            "Kafka unreachable at shutdown; the spool is replayed at the next start \
             (or by `superfone-bridge spool drain`)"
        );
        return;
    }
    tracing::info!(
        waiting,
        limit_ms = limit.as_millis() as u64,
        "sending the spool to Kafka before exiting"
    );
    let left = delivery.drain(limit).await;
    if left == 0 {
        tracing::info!(sent = waiting, "spool drained");
    } else {
        tracing::warn!(
            sent = waiting.saturating_sub(left),
            left_in_spool = left,
            waiting_for = delivery.waiting_for().as_deref().unwrap_or("time"),
            "spool not drained before the deadline; the rest is replayed at the next start"
        );
    }
}
