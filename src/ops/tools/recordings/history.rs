//! What became of each recording, as the topics tell it: the recording
//! events and the pointer records, each topic read from its oldest record
//! to its end (the high watermark its fetch reports), joined by recording
//! (`cdr_id` + `cdr_uuid`, the ids a pointer record carries from its event).

use crate::config::Config;
use crate::ops::tools::topics::read_to_end;
use crate::ops::tools::ToolError;
use crate::pipeline::{avro_json, registry};
use crate::recordings::job::{Position, RecordingJob};
use crate::recordings::pointer::CopyStatus;
use crate::vocabulary::headers::{GROUP_ID_HEADER, RECORDING_URL_EXPIRES_AT_HEADER};
use crate::vocabulary::EventKind;
use rdkafka::message::{Headers, Message, OwnedMessage};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use serde_json::Value;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A recording's ids: `cdr_id` and `cdr_uuid`, either may be missing.
pub(super) type RecordingId = (Option<i64>, Option<String>);

/// Where a record was read, and when it was written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub partition: i32,
    pub offset: i64,
    timestamp: i64,
}

impl Seen {
    fn of(message: &OwnedMessage) -> Seen {
        Seen {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis().unwrap_or(0),
        }
    }

    /// Written after `other`: by offset in one partition (the log's own
    /// order), else by timestamp.
    fn after(&self, other: &Seen) -> bool {
        if self.partition == other.partition {
            self.offset > other.offset
        } else {
            self.timestamp >= other.timestamp
        }
    }

    pub(super) fn json(&self) -> Value {
        serde_json::json!({"partition": self.partition, "offset": self.offset})
    }
}

/// A pointer record as read back: its fields, and its group id.
#[derive(Debug, Clone)]
pub(super) struct Pointer {
    pub fields: Value,
    pub group_id: String,
    pub seen: Seen,
}

impl Pointer {
    pub(super) fn status(&self) -> &str {
        self.fields["status"].as_str().unwrap_or_default()
    }

    pub(super) fn stored(&self) -> bool {
        self.status() == CopyStatus::Stored.as_str()
    }

    fn id(&self) -> Option<RecordingId> {
        let id = (
            self.fields["cdr_id"].as_i64(),
            self.fields["cdr_uuid"].as_str().map(str::to_owned),
        );
        (id != (None, None)).then_some(id)
    }
}

/// One recording: its latest event and its latest pointer record.
#[derive(Debug, Default)]
pub(super) struct Recording {
    /// The latest recording event, read into a job whose expiry is the
    /// event's `superfone-recording-url-expires-at`.
    pub event: Option<(RecordingJob, Seen)>,
    pub pointer: Option<Pointer>,
}

impl Recording {
    /// When the link dies: the event's header, else the pointer's field.
    pub(super) fn expires_at(&self) -> Option<OffsetDateTime> {
        self.event
            .as_ref()
            .and_then(|(job, _)| job.expires_at)
            .or_else(|| {
                let pointer = self.pointer.as_ref()?;
                instant(pointer.fields["source_url_expires_at"].as_str())
            })
    }
}

#[derive(Debug, Default)]
pub(super) struct History {
    pub recordings: BTreeMap<RecordingId, Recording>,
    /// Pointer records that name no recording (their event had no id, or
    /// did not decode): each stands alone.
    pub nameless: Vec<Pointer>,
    /// Records of either topic that could not be read.
    pub unreadable: usize,
    pub events_topic: String,
}

/// Reads both topics to their end and joins them. A pointer topic that does
/// not exist yet (the copier never ran) holds no records.
pub(super) async fn read(config: &Config) -> Result<History, ToolError> {
    let decoder = AvroDecoder::new(registry::settings(&config.registry)?);
    let events_topic = config.topics.topic_for(EventKind::CdrRecordingAvailable);
    let events = read_to_end(config, &events_topic).await?;
    let pointers = match read_to_end(config, &config.topics.recording_copies_topic()).await {
        Err(ToolError::NoSuchTopic(_)) => Vec::new(),
        read => read?,
    };
    let mut history = History {
        events_topic,
        ..History::default()
    };
    for message in &events {
        // The one topic of `topics.single` carries the other events too.
        if !RecordingJob::is_recording_event(&headers_of(message)) {
            continue;
        }
        let seen = Seen::of(message);
        let Some(job) = event_job(&decoder, message).await else {
            history.unreadable += 1;
            continue;
        };
        let recording = history
            .recordings
            .entry((job.cdr_id, job.cdr_uuid.clone()))
            .or_default();
        if recording
            .event
            .as_ref()
            .is_none_or(|(_, was)| seen.after(was))
        {
            recording.event = Some((job, seen));
        }
    }
    for message in &pointers {
        let Some(fields) = decoded(&decoder, message).await else {
            history.unreadable += 1;
            continue;
        };
        let headers = headers_of(message);
        let pointer = Pointer {
            fields,
            group_id: header(&headers, GROUP_ID_HEADER)
                .unwrap_or_default()
                .to_owned(),
            seen: Seen::of(message),
        };
        let Some(id) = pointer.id() else {
            history.nameless.push(pointer);
            continue;
        };
        let recording = history.recordings.entry(id).or_default();
        if recording
            .pointer
            .as_ref()
            .is_none_or(|was| pointer.seen.after(&was.seen))
        {
            recording.pointer = Some(pointer);
        }
    }
    Ok(history)
}

async fn decoded(decoder: &AvroDecoder, message: &OwnedMessage) -> Option<Value> {
    let decoded = decoder.decode(message.payload()).await.ok()?;
    Some(avro_json::to_json(&decoded.value))
}

/// The job of a recording event, its expiry the one stamped on the record
/// (the copier's own reading of the link, when the header is missing).
async fn event_job(decoder: &AvroDecoder, message: &OwnedMessage) -> Option<RecordingJob> {
    let value = decoded(decoder, message).await?;
    let headers = headers_of(message);
    let position = Position {
        partition: message.partition(),
        offset: message.offset(),
    };
    let key = message
        .key()
        .map(|key| String::from_utf8_lossy(key).into_owned());
    let mut job = RecordingJob::from_event(position, key, &value, &headers).ok()?;
    if let Some(at) = instant(header(&headers, RECORDING_URL_EXPIRES_AT_HEADER)) {
        job.expires_at = Some(at);
    }
    Some(job)
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    let value = header.value.unwrap_or_default();
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Seconds until `at`, negative once it has passed.
pub(super) fn seconds_left(at: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<i64> {
    at.map(|at| (at - now).whole_seconds())
}

fn instant(text: Option<&str>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text?, &Rfc3339).ok()
}
