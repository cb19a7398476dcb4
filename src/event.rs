//! The ten Superfone events and the facts derived from one payload: its kind,
//! its Kafka key, and its correlation (group) id.
//!
//! Everything here reads the parsed JSON object only; the Avro conversion lives
//! in `convert`, so a payload that fails conversion can still be keyed and
//! dead-lettered.

use serde_json::{Map, Value};
use std::fmt;

/// One Superfone event notification type (payload reference, "Available events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    AllCalls,
    MissedCall,
    CdrRecordingAvailable,
    CdrSummaryReady,
    CustomerCreate,
    CustomerChange,
    TaskCreate,
    TaskChange,
    TaskNotifyTime,
    TaskDueTime,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::AllCalls,
        EventKind::MissedCall,
        EventKind::CdrRecordingAvailable,
        EventKind::CdrSummaryReady,
        EventKind::CustomerCreate,
        EventKind::CustomerChange,
        EventKind::TaskCreate,
        EventKind::TaskChange,
        EventKind::TaskNotifyTime,
        EventKind::TaskDueTime,
    ];

    /// The name Superfone puts in the payload's `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AllCalls => "ALL_CALLS",
            EventKind::MissedCall => "MISSED_CALL",
            EventKind::CdrRecordingAvailable => "CDR_RECORDING_AVAILABLE",
            EventKind::CdrSummaryReady => "CDR_SUMMARY_READY",
            EventKind::CustomerCreate => "CUSTOMER_CREATE",
            EventKind::CustomerChange => "CUSTOMER_CHANGE",
            EventKind::TaskCreate => "TASK_CREATE",
            EventKind::TaskChange => "TASK_CHANGE",
            EventKind::TaskNotifyTime => "TASK_NOTIFY_TIME",
            EventKind::TaskDueTime => "TASK_DUE_TIME",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Lower-case name: the default topic suffix and the schema file stem.
    pub fn slug(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a JSON body could not be dispatched to an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("the body is valid JSON but not an object")]
    NotAnObject,
    #[error("the `event` field is missing or not a string")]
    MissingEvent,
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
}

/// Reads the `event` discriminator of a parsed body.
pub fn dispatch(body: &Value) -> Result<EventKind, DispatchError> {
    let object = body.as_object().ok_or(DispatchError::NotAnObject)?;
    let name = object
        .get("event")
        .and_then(Value::as_str)
        .ok_or(DispatchError::MissingEvent)?;
    EventKind::from_name(name).ok_or_else(|| DispatchError::UnknownEvent(name.to_owned()))
}

/// The Kafka key of a payload, so every event of one lead lands on one
/// partition in order: `contact_id` as a decimal string. CDR_SUMMARY_READY has
/// no contact (payload reference), so it falls back to `cdr_phone`, then
/// `cdr_uuid`, then `cdr_id`; a call event without a contact falls back the same
/// way. `None` (no key) only when none of them is present.
pub fn record_key(payload: &Map<String, Value>) -> Option<String> {
    ["contact_id", "cdr_phone", "cdr_uuid", "cdr_id"]
        .into_iter()
        .find_map(|field| match payload.get(field)? {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        })
}

/// The delivery's correlation id as the body carries it, if it does.
pub fn body_group_id(payload: &Map<String, Value>) -> Option<&str> {
    payload
        .get("group_id_ref")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::AllCalls.slug(), "all_calls");
    }

    #[test]
    fn dispatch_names_what_is_wrong() {
        assert_eq!(dispatch(&json!([1])), Err(DispatchError::NotAnObject));
        assert_eq!(dispatch(&json!({})), Err(DispatchError::MissingEvent));
        assert_eq!(
            dispatch(&json!({"event": 3})),
            Err(DispatchError::MissingEvent)
        );
        assert_eq!(
            dispatch(&json!({"event": "CALL_PARKED"})),
            Err(DispatchError::UnknownEvent("CALL_PARKED".into()))
        );
        assert_eq!(
            dispatch(&json!({"event": "TASK_DUE_TIME"})),
            Ok(EventKind::TaskDueTime)
        );
    }

    #[test]
    fn key_prefers_contact_then_falls_back() {
        let key = |v: Value| record_key(v.as_object().unwrap());
        assert_eq!(
            key(json!({"contact_id": 12345, "cdr_phone": "+91"})).as_deref(),
            Some("12345")
        );
        assert_eq!(
            key(json!({"contact_id": null, "cdr_phone": "+91"})).as_deref(),
            Some("+91")
        );
        assert_eq!(
            key(json!({"cdr_phone": null, "cdr_uuid": "8f4e"})).as_deref(),
            Some("8f4e")
        );
        assert_eq!(key(json!({"cdr_id": 9876543})).as_deref(), Some("9876543"));
        assert_eq!(key(json!({"event": "X"})), None);
    }
}
