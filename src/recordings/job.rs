//! One recording to copy, as read from a CDR_RECORDING_AVAILABLE record:
//! its link, its ids, the date its copy is filed under, when its link
//! expires, and what its pointer record must carry (key, group id, trace).

use crate::pipeline::recording_link as expiry;
use crate::recordings::pointer::{CopyReport, CopyStatus};
use crate::vocabulary::headers::{EVENT_HEADER, GROUP_ID_HEADER, RECEIVED_AT_HEADER};
use crate::vocabulary::EventKind;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// W3C trace context headers, carried from the event to its pointer record.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Where a record was read: its partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A recording event, ready to copy.
#[derive(Debug, Clone)]
pub struct RecordingJob {
    pub position: Position,
    /// The event's Kafka key: the pointer record gets the same one.
    pub key: Option<String>,
    pub group_id: String,
    /// The event's `traceparent` / `tracestate`, if it had them.
    pub trace_headers: Vec<(String, String)>,
    /// The pre-signed link: a credential, never logged whole.
    pub url: String,
    pub cdr_id: Option<i64>,
    pub cdr_uuid: Option<String>,
    pub contact_id: Option<i64>,
    /// The call's start (else when the event was received): the copy's folder.
    pub call_date: OffsetDateTime,
    /// When the link stops working, if that can be told.
    pub expires_at: Option<OffsetDateTime>,
}

/// A record that is no recording event this copier can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the record has no cdr_recording_url")]
    NoUrl,
    #[error("the record has neither cdr_id nor cdr_uuid to name the copy by")]
    NoId,
}

impl RecordingJob {
    /// Whether a record of the recording-event topic is a recording event:
    /// in the one-topic mode (`topics.single`) the topic carries all ten
    /// events, and the others, told by their `superfone-event` header, are
    /// no recording to copy (taken for one, each would end in a `failed`
    /// pointer record: no link). A record without the header is taken for
    /// one, as it always was.
    pub fn is_recording_event(headers: &[(String, String)]) -> bool {
        headers
            .iter()
            .find(|(name, _)| name == EVENT_HEADER)
            .is_none_or(|(_, event)| event == EventKind::CdrRecordingAvailable.as_str())
    }

    /// Reads the job from a decoded event (`value`, its Avro as JSON) and
    /// the record's headers.
    pub fn from_event(
        position: Position,
        key: Option<String>,
        value: &Value,
        headers: &[(String, String)],
    ) -> Result<RecordingJob, JobError> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let url = text("cdr_recording_url").ok_or(JobError::NoUrl)?;
        let cdr_id = value.get("cdr_id").and_then(Value::as_i64);
        let cdr_uuid = text("cdr_uuid");
        if cdr_id.is_none() && cdr_uuid.is_none() {
            return Err(JobError::NoId);
        }
        let received_at = header(RECEIVED_AT_HEADER);
        let instant = |text: Option<&str>| OffsetDateTime::parse(text?, &Rfc3339).ok();
        let call_date = instant(value.get("cdr_start").and_then(Value::as_str))
            .or_else(|| instant(received_at))
            .unwrap_or_else(OffsetDateTime::now_utc);
        Ok(RecordingJob {
            position,
            key,
            group_id: header(GROUP_ID_HEADER).unwrap_or_default().to_owned(),
            trace_headers: headers
                .iter()
                .filter(|(name, _)| TRACE_HEADERS.contains(&name.as_str()))
                .cloned()
                .collect(),
            // Without a signature date or a receipt time (never from this
            // bridge), the vendor's 7 days count from now.
            expires_at: expiry::link_expiry(&url, received_at)
                .or_else(|| Some(OffsetDateTime::now_utc() + expiry::LINK_LIFETIME)),
            url,
            cdr_id,
            cdr_uuid,
            contact_id: value.get("contact_id").and_then(Value::as_i64),
            call_date,
        })
    }

    /// What the copy is named by: `cdr_id`, else `cdr_uuid`.
    pub fn copy_id(&self) -> String {
        self.cdr_id
            .map(|id| id.to_string())
            .or_else(|| self.cdr_uuid.clone())
            .unwrap_or_default()
    }

    /// A pointer report for this recording with `status`, the rest unset.
    pub fn report(&self, status: CopyStatus) -> CopyReport {
        CopyReport {
            status,
            cdr_id: self.cdr_id,
            cdr_uuid: self.cdr_uuid.clone(),
            contact_id: self.contact_id,
            object_url: None,
            bytes: None,
            sha256: None,
            content_type: None,
            source_url_expires_at: self.expires_at,
            stored_at: None,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const AT: Position = Position {
        partition: 2,
        offset: 40,
    };

    #[test]
    fn only_recording_events_are_recordings_on_the_one_topic() {
        let with_event = |event: &str| vec![(EVENT_HEADER.to_owned(), event.to_owned())];
        assert!(RecordingJob::is_recording_event(&with_event(
            "CDR_RECORDING_AVAILABLE"
        )));
        assert!(!RecordingJob::is_recording_event(&with_event("ALL_CALLS")));
        assert!(
            RecordingJob::is_recording_event(&headers()),
            "no event header"
        );
    }

    fn headers() -> Vec<(String, String)> {
        [
            (GROUP_ID_HEADER, "g-7"),
            (RECEIVED_AT_HEADER, "2026-05-15T10:33:00Z"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("superfone-dedup-key", "k"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .to_vec()
    }

    #[test]
    fn a_recording_event_becomes_a_job() {
        let value = json!({
            "cdr_recording_url": "https://recordings.s3.amazonaws.com/a.mp3?X-Amz-Signature=s",
            "cdr_id": 9876543, "cdr_uuid": "u-1", "contact_id": 12345,
            "cdr_start": "2026-05-14T23:59:00Z",
        });
        let job = RecordingJob::from_event(AT, Some("12345".into()), &value, &headers()).unwrap();
        assert_eq!(job.copy_id(), "9876543");
        assert_eq!(job.group_id, "g-7");
        assert_eq!(job.call_date, datetime!(2026-05-14 23:59:00 UTC));
        assert_eq!(job.expires_at, Some(datetime!(2026-05-22 10:33:00 UTC)));
        assert_eq!(job.trace_headers.len(), 1, "{:?}", job.trace_headers);
        assert_eq!(job.report(CopyStatus::Expired).contact_id, Some(12345));
    }

    #[test]
    fn without_a_call_start_the_copy_is_filed_by_receipt_and_named_by_uuid() {
        let value = json!({"cdr_recording_url": "https://h/x", "cdr_uuid": "u-1"});
        let job = RecordingJob::from_event(AT, None, &value, &headers()).unwrap();
        assert_eq!(job.copy_id(), "u-1");
        assert_eq!(job.call_date, datetime!(2026-05-15 10:33:00 UTC));
    }

    #[test]
    fn an_event_without_a_link_or_an_id_is_no_job() {
        let no_url = json!({"cdr_id": 1});
        assert_eq!(
            RecordingJob::from_event(AT, None, &no_url, &[]).unwrap_err(),
            JobError::NoUrl
        );
        let no_id = json!({"cdr_recording_url": "https://h/x"});
        assert_eq!(
            RecordingJob::from_event(AT, None, &no_id, &[]).unwrap_err(),
            JobError::NoId
        );
    }
}
