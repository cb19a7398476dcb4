//! superfone-bridge: Superfone event notifications (JSON webhooks) -> Avro ->
//! Kafka, one topic per event, keyed by lead.
//!
//! `App::build` does every start-up check (schemas, broker, topics, registry)
//! and binds the listener; `App::run_until_stopped` serves until the shutdown
//! future resolves, drains, and flushes the producer.

pub mod admin;
pub mod auth;
pub mod avro_json;
pub mod config;
pub mod convert;
pub mod dead_letter;
pub mod dedup;
pub mod delivery;
pub mod event;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod registry;
pub mod response;
pub mod schema;
pub mod server;
pub mod spool;
pub mod telemetry;
pub mod tools;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::convert::Converter;
use crate::dedup::Dedup;
use crate::delivery::{Delivery, Durable};
use crate::event::EventKind;
use crate::ingest::DEDUP_KEY_HEADER;
use crate::ingest::{EventRoute, Ingest, IngestSettings};
use crate::kafka::{PublishError, Publisher};
use crate::registry::RegistryError;
use crate::schema::{EventSchema, SchemaError, SchemaSource};
use crate::spool::{Spool, SpoolError, SpoolSettings};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
    #[error("invalid server.group_id_header")]
    GroupIdHeader,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn schema_source(config: &Config) -> SchemaSource {
    match &config.registry.schemas_dir {
        Some(dir) => SchemaSource::Dir(dir.clone()),
        None => SchemaSource::Embedded,
    }
}

/// Loads the ten schemas and registers them (or looks them up): one route per
/// event, in `EventKind::ALL` order. Used by `serve` and `dead-letter replay`.
pub async fn event_routes(config: &Config) -> Result<Vec<EventRoute>, StartupError> {
    let schemas = schema::load_all(&schema_source(config))?;
    register_routes(config, schemas).await
}

/// Registers (or looks up) loaded schemas: one route per event.
async fn register_routes(
    config: &Config,
    schemas: Vec<EventSchema>,
) -> Result<Vec<EventRoute>, StartupError> {
    let registered = registry::register_all(&config.registry, &config.topics, &schemas).await?;
    Ok(schemas
        .into_iter()
        .zip(registered)
        .map(|(schema, registered)| EventRoute {
            kind: schema.kind,
            topic: config.topics.topic_for(schema.kind),
            schema_id: registered.id,
            converter: Converter::new(schema.schema),
        })
        .collect())
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
    listener: TcpListener,
    admin_listener: TcpListener,
    readiness: Arc<admin::Readiness>,
    ingest: Arc<Ingest>,
    publisher: Arc<Publisher>,
    delivery: Arc<Delivery>,
    limits: server::Limits,
}

impl App {
    pub async fn build(config: Config, auth: Authenticator) -> Result<App, StartupError> {
        // Fail fast on broken schema files, before touching Kafka.
        let schemas = schema::load_all(&schema_source(&config))?;
        // Install the recorder before anything records.
        metrics::handle();

        let publisher = Arc::new(Publisher::new(&config.kafka, config.max_record_bytes())?);
        let startup_timeout = Duration::from_millis(config.kafka.startup_timeout_ms);
        publisher.check_broker(startup_timeout).await?;
        let dead_letter_topic = config.topics.dead_letter_topic();
        if config.kafka.create_topics {
            let mut topics: Vec<String> = EventKind::ALL
                .iter()
                .map(|kind| config.topics.topic_for(*kind))
                .collect();
            topics.push(dead_letter_topic.clone());
            publisher
                .create_topics(
                    &topics,
                    config.kafka.topic_partitions,
                    config.kafka.topic_replication_factor,
                    config.max_record_bytes(),
                    startup_timeout,
                )
                .await?;
        }

        let routes = register_routes(&config, schemas).await?;

        let (spool, recovered, recovery) = Spool::open(SpoolSettings {
            dir: config.spool.dir.clone(),
            max_bytes: config.spool.max_bytes,
            segment_bytes: config.spool.segment_bytes,
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
        let dedup = config.dedup.enabled.then(|| {
            Dedup::new(
                Duration::from_secs(config.dedup.window_secs),
                config.dedup.max_entries,
            )
        });
        if let Some(dedup) = &dedup {
            // Events still in the spool were answered 2xx: their repeats are duplicates.
            for entry in &recovered {
                let key = entry.record.header(DEDUP_KEY_HEADER);
                let entity = key.and_then(event::DedupKey::entity_of);
                if let (Some(key), Some(entity)) = (key, entity) {
                    dedup.remember(
                        entity,
                        key,
                        &entry.record.topic,
                        Durable::Spooled(entry.id),
                        entry
                            .record
                            .header(ingest::GROUP_ID_HEADER)
                            .unwrap_or_default(),
                    );
                }
            }
        }
        let delivery = Delivery::new(
            Arc::clone(&publisher),
            spool,
            recovered,
            Duration::from_millis(config.delivery.ack_deadline_ms),
        );

        let settings = IngestSettings {
            ingest_path: config.server.ingest_path.clone(),
            max_body_bytes: config.server.max_body_bytes,
            group_id_header: config
                .server
                .group_id_header
                .parse()
                .map_err(|_| StartupError::GroupIdHeader)?,
            dead_letter_topic,
            body_read_timeout: Duration::from_millis(config.delivery.body_read_timeout_ms),
        };
        let ingest = Arc::new(Ingest::new(
            settings,
            auth,
            routes,
            Arc::clone(&delivery),
            dedup,
        ));
        let listener = listen(config.server.listen)?;
        let admin_listener = listen(config.admin.listen)?;
        let readiness = Arc::new(admin::Readiness::default());
        readiness.set_schemas_registered();
        Ok(App {
            listener,
            admin_listener,
            readiness,
            ingest,
            publisher,
            delivery,
            limits: server::Limits {
                drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
                header_read_timeout: Duration::from_millis(config.delivery.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(config.delivery.idle_timeout_ms),
                max_connections: config.delivery.max_connections,
            },
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

    /// Serves until `shutdown` resolves; then drains requests, stops the
    /// replay, flushes the producer and syncs the spool. Whatever has not
    /// reached Kafka by then stays in the spool for the next start.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let stop_replay = CancellationToken::new();
        let replay = tokio::spawn(Arc::clone(&self.delivery).replay(stop_replay.clone()));
        let stop_background = CancellationToken::new();
        tokio::spawn(Arc::clone(&self.delivery).report_spool(stop_background.clone()));
        tokio::spawn(
            Arc::clone(&self.readiness)
                .watch_broker(Arc::clone(&self.publisher), stop_background.clone()),
        );
        tokio::spawn(admin::serve(
            self.admin_listener,
            Arc::clone(&self.readiness),
            metrics::handle(),
            stop_background.clone(),
        ));
        server::serve(self.listener, self.ingest, shutdown, self.limits).await;
        stop_replay.cancel();
        let _ = replay.await;
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
    }
}
