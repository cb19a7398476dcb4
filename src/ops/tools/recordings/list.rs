//! `recordings list --pending | --failed`: the recordings not copied yet,
//! and those whose latest pointer record is not `stored`, one JSON line
//! each. Links are shown without their signature.

use crate::config::Config;
use crate::ops::tools::recordings::history::{self, seconds_left, Pointer, Recording};
use crate::ops::tools::ToolError;
use crate::pipeline::recording_link::rfc3339;
use crate::recordings::source;
use serde_json::{json, Value};
use std::io::Write;
use time::OffsetDateTime;

/// Which recordings `recordings list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingsList {
    /// A recording event and no pointer record yet: copying, or waiting
    /// to try again.
    Pending,
    /// The latest pointer record is `expired`, `refused` or `failed`.
    Failed,
}

/// What `recordings list` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub listed: usize,
    /// Records of either topic that could not be read (not listed).
    pub unreadable: usize,
}

/// Prints the pending or the failed recordings as JSON lines, ordered by
/// `cdr_id` then `cdr_uuid`.
pub async fn list_recordings(
    config: &Config,
    which: RecordingsList,
    mut out: impl Write,
) -> Result<Listed, ToolError> {
    let history = history::read(config).await?;
    let now = OffsetDateTime::now_utc();
    let lines: Vec<Value> = match which {
        RecordingsList::Pending => history
            .recordings
            .values()
            .filter_map(|recording| pending(recording, now))
            .collect(),
        RecordingsList::Failed => history
            .recordings
            .values()
            .filter_map(|recording| failed(recording, recording.pointer.as_ref()?, now))
            .chain(
                history
                    .nameless
                    .iter()
                    .filter_map(|pointer| failed(&Recording::default(), pointer, now)),
            )
            .collect(),
    };
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(Listed {
        listed: lines.len(),
        unreadable: history.unreadable,
    })
}

fn pending(recording: &Recording, now: OffsetDateTime) -> Option<Value> {
    if recording.pointer.is_some() {
        return None;
    }
    let (job, seen) = recording.event.as_ref()?;
    Some(json!({
        "cdr_id": job.cdr_id,
        "cdr_uuid": job.cdr_uuid,
        "contact_id": job.contact_id,
        "group_id": job.group_id,
        "link": source::redact(&job.url),
        "expires_at": job.expires_at.map(rfc3339),
        "time_left_secs": seconds_left(job.expires_at, now),
        "event": seen.json(),
    }))
}

fn failed(recording: &Recording, pointer: &Pointer, now: OffsetDateTime) -> Option<Value> {
    if pointer.stored() {
        return None;
    }
    let fields = &pointer.fields;
    let expires_at = recording.expires_at();
    let time_left = seconds_left(expires_at, now);
    let event = recording.event.as_ref();
    Some(json!({
        "cdr_id": fields["cdr_id"],
        "cdr_uuid": fields["cdr_uuid"],
        "contact_id": fields["contact_id"],
        "group_id": pointer.group_id,
        "status": pointer.status(),
        "error": fields["error"],
        "link": event.map(|(job, _)| source::redact(&job.url)),
        "expires_at": expires_at.map(rfc3339),
        "time_left_secs": time_left,
        // What `recordings retry` can act on: an event to copy from, and
        // a link still alive.
        "retryable": event.is_some() && time_left.is_some_and(|left| left > 0),
        "pointer": pointer.seen.json(),
    }))
}
