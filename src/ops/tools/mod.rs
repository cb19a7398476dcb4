//! The operator and data-engineer commands, one file each: `send` and
//! `healthcheck` talk to a running bridge (`send.rs`); `tail` prints a
//! topic decoded through the registry (`tail.rs`); `dead-letter replay`
//! re-submits dead letters after a schema fix (`dead_letter.rs`); `spool
//! parked` lists, exports and retries the records Kafka refused for good
//! (`parked.rs`); `recordings list` and `recordings retry` show and mend
//! the copies of call recordings (`recordings/`); `schema drift` reports
//! the members the schemas do not know and drafts the schema patch
//! (`drift.rs`). `topics.rs` holds what
//! the Kafka readers share.

mod dead_letter;
mod drift;
mod parked;
mod recordings;
mod send;
mod tail;
mod topics;

pub use dead_letter::{replay_dead_letters, ReplayOptions, REPLAY_GROUP};
pub use drift::{drift, DriftOptions};
pub use parked::{parked, retry_parked, ParkedFormat};
pub use recordings::{
    list_recordings, retry_recordings, Listed, RecordingsList, Retried, RetryOptions,
};
pub use send::{healthcheck, local_ingest_url, send};
pub use tail::{tail, TailOptions};
pub use topics::resolve_topic;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Auth(#[from] crate::http::auth::AuthError),
    #[error("no auth secret configured to send with")]
    NoSecret,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use {path} as a CA certificate: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("reading {topic} stopped short of its end: {partitions} partition(s) sent nothing for {seconds} s")]
    Stalled {
        topic: String,
        partitions: usize,
        seconds: u64,
    },
    #[error(transparent)]
    Registry(#[from] crate::pipeline::registry::RegistryError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Routes(#[from] crate::pipeline::route::RouteError),
    #[error(transparent)]
    Schema(#[from] crate::pipeline::schema::SchemaError),
    #[error(transparent)]
    Publish(#[from] crate::durability::kafka::PublishError),
    #[error(transparent)]
    Spool(#[from] crate::durability::spool::SpoolError),
    #[error(transparent)]
    Recordings(#[from] crate::recordings::finish::CopierError),
}
