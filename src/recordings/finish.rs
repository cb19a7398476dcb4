//! One recording brought to its end: its copy (or the reason there is
//! none), then its pointer record on `<prefix>recording_copies`,
//! acknowledged by Kafka. The copier does this with every job it reads;
//! `recordings retry` with the recordings an operator names.

use crate::config::Config;
use crate::durability::kafka::{Delivered, Publisher};
use crate::observe::telemetry;
use crate::pipeline::registry::RegistryError;
use crate::recordings::copy::{Copies, CopiesError};
use crate::recordings::job::RecordingJob;
use crate::recordings::pointer::{CopyReport, CopyStatus, PointerRecords};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How long a pointer record's publish waits before trying again.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CopierError {
    #[error("recordings: {0}")]
    Copies(#[from] CopiesError),
    #[error("recordings: the pointer record's schema: {0}")]
    Registry(#[from] RegistryError),
    #[error("recordings: Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// A recording's end: its pointer report, and what its record must carry.
#[derive(Debug, Clone)]
pub struct Finished {
    pub key: Option<String>,
    pub group_id: String,
    pub trace_headers: Vec<(String, String)>,
    pub report: CopyReport,
}

impl Finished {
    /// The end of a record that is no job (undecodable, no link, no id).
    pub fn failed(key: Option<String>, group_id: String, error: String) -> Finished {
        Finished {
            key,
            group_id,
            trace_headers: Vec::new(),
            report: CopyReport {
                status: CopyStatus::Failed,
                cdr_id: None,
                cdr_uuid: None,
                contact_id: None,
                object_url: None,
                bytes: None,
                sha256: None,
                content_type: None,
                source_url_expires_at: None,
                stored_at: None,
                error: Some(error),
            },
        }
    }
}

/// Copies recordings and publishes their pointer records: the store, the
/// guarded source and the limits of `[recordings]`, the pointer schema's
/// registry id, and the bridge's producer.
pub struct Finisher {
    copies: Copies,
    pointers: PointerRecords,
    publisher: Arc<Publisher>,
}

impl Finisher {
    /// Opens the store and registers the pointer schema.
    pub async fn open(config: &Config, publisher: Arc<Publisher>) -> Result<Finisher, CopierError> {
        Ok(Finisher {
            copies: Copies::open(&config.recordings)?,
            pointers: PointerRecords::register(config).await?,
            publisher,
        })
    }

    pub fn copies(&self) -> &Copies {
        &self.copies
    }

    /// Copies `job`'s recording (trying again until its link expires, or
    /// `give_up_at`) and publishes its pointer record; returns the outcome
    /// and where the record went, once Kafka acknowledged it.
    pub async fn finish(
        &self,
        job: &RecordingJob,
        give_up_at: Option<OffsetDateTime>,
    ) -> (CopyReport, Option<Delivered>) {
        let report = self.copies.copy(job, give_up_at).await;
        let done = Finished {
            key: job.key.clone(),
            group_id: job.group_id.clone(),
            trace_headers: job.trace_headers.clone(),
            report,
        };
        let delivered = self.publish(&done).await;
        (done.report, delivered)
    }

    /// Publishes a recording's pointer record, trying again until Kafka
    /// acknowledges it; `None` only for a report its schema cannot carry.
    pub async fn publish(&self, done: &Finished) -> Option<Delivered> {
        metrics::counter!(crate::observe::metrics::RECORDINGS, "status" => done.report.status.as_str())
            .increment(1);
        let trace = telemetry::continue_trace(&done.trace_headers);
        let made = self.pointers.record(
            &done.report,
            done.key.clone(),
            &done.group_id,
            trace.clone(),
        );
        // A report its schema cannot carry still ends its recording: as
        // `failed`, with ids only (the offset must not pass it unrecorded).
        let record = made.or_else(|error| {
            tracing::error!(%error, "recordings: pointer record does not fit its schema; publishing it failed");
            let mut report = Finished::failed(None, String::new(), format!("the pointer record did not fit its schema: {error}")).report;
            report.cdr_id = done.report.cdr_id;
            report.cdr_uuid = done.report.cdr_uuid.clone();
            report.contact_id = done.report.contact_id;
            self.pointers.record(&report, done.key.clone(), &done.group_id, trace)
        });
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%error, "recordings: not even a failed pointer record fits; the offset stays");
                return None;
            }
        };
        loop {
            match self.publisher.publish(&record).await {
                Ok(delivered) => return Some(delivered),
                Err(error) => {
                    self.publisher.recover(&error);
                    tracing::warn!(%error, topic = self.pointers.topic(), "recordings: pointer record not published; trying again");
                    tokio::time::sleep(PUBLISH_RETRY).await;
                }
            }
        }
    }
}
