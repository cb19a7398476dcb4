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
use crate::recordings::source;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;

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
    /// The W3C trace context its record carries (already continued).
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
        let span = copy_span(job, self.pointers.topic());
        // The pointer record continues the event's trace through this span.
        let trace_headers = telemetry::continue_trace_in(&span, &job.trace_headers);
        let report = self
            .copies
            .copy(job, give_up_at)
            .instrument(span.clone())
            .await;
        let done = Finished {
            key: job.key.clone(),
            group_id: job.group_id.clone(),
            trace_headers,
            report,
        };
        let delivered = self.publish(&done).instrument(span.clone()).await;
        record_outcome(&span, &done.report, delivered);
        (done.report, delivered)
    }

    /// Publishes a recording's pointer record, trying again until Kafka
    /// acknowledges it; `None` only for a report its schema cannot carry.
    pub async fn publish(&self, done: &Finished) -> Option<Delivered> {
        metrics::counter!(crate::observe::metrics::RECORDINGS, "status" => done.report.status.as_str())
            .increment(1);
        let trace = done.trace_headers.clone();
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

/// The span of one recording's copy and pointer record, for traces only
/// (its fields never reach a log line): the link without its signature.
fn copy_span(job: &RecordingJob, pointer_topic: &str) -> tracing::Span {
    tracing::info_span!(
        "superfone.recording_copy",
        otel.kind = "consumer",
        superfone.group_id = %job.group_id,
        superfone.cdr_id = job.cdr_id,
        superfone.cdr_uuid = job.cdr_uuid.as_deref(),
        superfone.contact_id = job.contact_id,
        url.full = %source::redact(&job.url),
        messaging.source.partition.id = job.position.partition,
        messaging.kafka.offset = job.position.offset,
        superfone.pointer.topic = pointer_topic,
        superfone.pointer.partition = tracing::field::Empty,
        superfone.pointer.offset = tracing::field::Empty,
        superfone.recording.status = tracing::field::Empty,
        superfone.recording.bytes = tracing::field::Empty,
        superfone.recording.object_url = tracing::field::Empty,
        error.message = tracing::field::Empty,
    )
}

/// Writes how the copy ended, and where its pointer record went, on its span.
fn record_outcome(span: &tracing::Span, report: &CopyReport, delivered: Option<Delivered>) {
    span.record("superfone.recording.status", report.status.as_str());
    if let Some(bytes) = report.bytes {
        span.record("superfone.recording.bytes", bytes);
    }
    if let Some(object_url) = &report.object_url {
        span.record("superfone.recording.object_url", object_url.as_str());
    }
    if let Some(error) = &report.error {
        span.record("error.message", error.as_str());
    }
    if let Some(delivered) = delivered {
        span.record("superfone.pointer.partition", delivered.partition);
        span.record("superfone.pointer.offset", delivered.offset);
    }
}
