//! superfone-bridge: Superfone event notifications (JSON webhooks) -> Avro ->
//! Kafka, one topic per event, keyed by lead.
//!
//! `App::build` does every start-up check (schemas, broker, topics, registry)
//! and binds the listener; `App::run_until_stopped` serves until the shutdown
//! future resolves, drains, and flushes the producer.

pub mod auth;
pub mod config;
pub mod convert;
pub mod dead_letter;
pub mod event;
pub mod ingest;
pub mod kafka;
pub mod registry;
pub mod response;
pub mod schema;
pub mod server;
pub mod spool;
pub mod telemetry;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::convert::Converter;
use crate::event::EventKind;
use crate::ingest::{EventRoute, Ingest, IngestSettings};
use crate::kafka::{PublishError, Publisher};
use crate::registry::RegistryError;
use crate::schema::{SchemaError, SchemaSource};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    #[error("invalid server.group_id_header")]
    GroupIdHeader,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    ingest: Arc<Ingest>,
    publisher: Arc<Publisher>,
    drain_timeout: Duration,
}

impl App {
    pub async fn build(config: Config, auth: Authenticator) -> Result<App, StartupError> {
        let source = match &config.registry.schemas_dir {
            Some(dir) => SchemaSource::Dir(dir.clone()),
            None => SchemaSource::Embedded,
        };
        let schemas = schema::load_all(&source)?;

        let publisher = Arc::new(Publisher::new(&config.kafka)?);
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
                    startup_timeout,
                )
                .await?;
        }

        let registered = registry::register_all(&config.registry, &config.topics, &schemas).await?;
        let routes = schemas
            .into_iter()
            .zip(registered)
            .map(|(schema, registered)| EventRoute {
                kind: schema.kind,
                topic: config.topics.topic_for(schema.kind),
                schema_id: registered.id,
                converter: Converter::new(schema.schema),
            })
            .collect();

        let settings = IngestSettings {
            ingest_path: config.server.ingest_path.clone(),
            max_body_bytes: config.server.max_body_bytes,
            group_id_header: config
                .server
                .group_id_header
                .parse()
                .map_err(|_| StartupError::GroupIdHeader)?,
            dead_letter_topic,
        };
        let ingest = Arc::new(Ingest::new(settings, auth, routes, Arc::clone(&publisher)));
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.server.listen,
                source,
            })?;
        Ok(App {
            listener,
            ingest,
            publisher,
            drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then drains requests and flushes the producer.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        server::serve(self.listener, self.ingest, shutdown, self.drain_timeout).await;
        if let Err(error) = self.publisher.flush(FLUSH_TIMEOUT).await {
            tracing::error!(%error, "producer flush at shutdown did not complete");
        }
        tracing::info!("stopped");
    }
}
