//! `recordings retry`: copies recordings again while their links live (after
//! `recordings.max_bytes` was raised, a host allowed, the store mended),
//! through the copier's own `Finisher`: the same source guard, store and
//! limits, and a new pointer record, which becomes the recording's latest.

use crate::config::Config;
use crate::durability::kafka::{Publisher, TopicSpec};
use crate::ops::tools::recordings::history::{self, seconds_left, History, RecordingId};
use crate::ops::tools::ToolError;
use crate::pipeline::recording_link::rfc3339;
use crate::recordings::finish::Finisher;
use crate::recordings::job::RecordingJob;
use crate::recordings::pointer::CopyStatus;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Which recordings `recordings retry` copies again, and how patiently.
#[derive(Debug, Clone)]
pub struct RetryOptions {
    /// The `cdr_id` (or `cdr_uuid`) of each recording to copy again.
    pub ids: Vec<String>,
    /// Also every recording whose latest pointer record is not `stored`
    /// and whose link still lives.
    pub failed: bool,
    /// How long one recording's transient failures (the source's 5xx, the
    /// store down) are tried again before its pointer record says `failed`.
    pub give_up_after: Duration,
}

/// What `recordings retry` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retried {
    pub stored: usize,
    /// Copied again but not stored, or not tried: no event, a dead link.
    pub not_stored: usize,
    /// With `--failed`: failed recordings whose link has died, not tried.
    pub left_alone: usize,
}

/// One recording to copy again, or an id that names none.
enum Target<'a> {
    Recording(&'a RecordingJob),
    Unknown(&'a str),
}

/// Copies the chosen recordings again and publishes their pointer records;
/// prints one JSON line per recording.
pub async fn retry_recordings(
    config: &Config,
    options: &RetryOptions,
    mut out: impl Write,
) -> Result<Retried, ToolError> {
    let history = history::read(config).await?;
    let now = OffsetDateTime::now_utc();
    let (targets, mut retried) = targets(&history, options, now);
    if targets.is_empty() {
        return Ok(retried);
    }
    let publisher = Arc::new(Publisher::new(&config.kafka, config.max_record_bytes())?);
    if config.kafka.create_topics {
        let pointers = TopicSpec {
            names: vec![config.topics.recording_copies_topic()],
            ..TopicSpec::of(config)
        };
        let timeout = config.kafka.startup_timeout_ms;
        publisher.create_topics(&pointers, timeout).await?;
    }
    let finisher = Finisher::open(config, publisher).await?;
    for target in targets {
        let (stored, line) = match target {
            Target::Recording(job) => retry_one(&finisher, job, options.give_up_after).await,
            Target::Unknown(id) => (
                false,
                json!({"id": id, "status": "not_retried", "reason": format!(
                    "no recording event with cdr_id or cdr_uuid {id} on {}", history.events_topic
                )}),
            ),
        };
        if stored {
            retried.stored += 1;
        } else {
            retried.not_stored += 1;
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(retried)
}

/// The recordings `options` name, in the order given, then (`--failed`)
/// the failed ones whose link lives, each once.
fn targets<'a>(
    history: &'a History,
    options: &'a RetryOptions,
    now: OffsetDateTime,
) -> (Vec<Target<'a>>, Retried) {
    let mut chosen: BTreeSet<&RecordingId> = BTreeSet::new();
    let mut targets = Vec::new();
    let mut retried = Retried::default();
    for id in &options.ids {
        let cdr_id = id.parse::<i64>().ok();
        let named = history.recordings.iter().filter(|((by_id, by_uuid), _)| {
            (cdr_id.is_some() && *by_id == cdr_id) || by_uuid.as_deref() == Some(id)
        });
        let mut found = false;
        for (key, recording) in named {
            let Some((job, _)) = &recording.event else {
                continue;
            };
            found = true;
            if chosen.insert(key) {
                targets.push(Target::Recording(job));
            }
        }
        if !found {
            targets.push(Target::Unknown(id));
        }
    }
    if options.failed {
        for (key, recording) in &history.recordings {
            let (Some(pointer), Some((job, _))) = (&recording.pointer, &recording.event) else {
                continue;
            };
            if pointer.stored() || chosen.contains(key) {
                continue;
            }
            if seconds_left(job.expires_at, now).is_some_and(|left| left <= 0) {
                retried.left_alone += 1;
            } else if chosen.insert(key) {
                targets.push(Target::Recording(job));
            }
        }
    }
    (targets, retried)
}

/// Copies one recording again, unless its link has died; returns whether
/// it ended `stored`, and its line.
async fn retry_one(
    finisher: &Finisher,
    job: &RecordingJob,
    give_up_after: Duration,
) -> (bool, Value) {
    let now = OffsetDateTime::now_utc();
    if let Some(at) = job.expires_at.filter(|at| *at <= now) {
        let reason = format!(
            "the link expired at {}: the recording can no longer be copied from it",
            rfc3339(at)
        );
        return (
            false,
            json!({"cdr_id": job.cdr_id, "cdr_uuid": job.cdr_uuid, "contact_id": job.contact_id,
                   "status": "not_retried", "reason": reason}),
        );
    }
    let (report, delivered) = finisher.finish(job, Some(now + give_up_after)).await;
    let line = json!({
        "cdr_id": report.cdr_id,
        "cdr_uuid": report.cdr_uuid,
        "contact_id": report.contact_id,
        "status": report.status.as_str(),
        "object_url": report.object_url,
        "bytes": report.bytes,
        "sha256": report.sha256,
        "error": report.error,
        "pointer": delivered.map(|at| json!({"partition": at.partition, "offset": at.offset})),
    });
    (report.status == CopyStatus::Stored, line)
}
