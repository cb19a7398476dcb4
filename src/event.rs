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

/// The identity of an event for duplicate suppression, also put on the record
/// as the `superfone-dedup-key` header so consumers can drop repeats too.
///
/// `<EVENT>|<id field>=<value>` from the first identifying field present:
/// call events `cdr_id` (else `cdr_uuid`), CDR_SUMMARY_READY `cdr_uuid` (else
/// `cdr_id`), CUSTOMER_* `contact_id`, TASK_* `task_id`. The *_CHANGE events add
/// `updated_key` and a hash of `updated_value`, so successive changes of one
/// lead or task stay distinct. Without an identifying field: `<EVENT>|body#<hash
/// of the canonical body>`. Hashes are the first 16 hex digits of SHA-256 over
/// JSON with object keys sorted.
pub fn dedup_key(kind: EventKind, payload: &Map<String, Value>) -> String {
    let id_fields: &[&str] = match kind {
        EventKind::AllCalls | EventKind::MissedCall | EventKind::CdrRecordingAvailable => {
            &["cdr_id", "cdr_uuid"]
        }
        EventKind::CdrSummaryReady => &["cdr_uuid", "cdr_id"],
        EventKind::CustomerCreate | EventKind::CustomerChange => &["contact_id"],
        EventKind::TaskCreate
        | EventKind::TaskChange
        | EventKind::TaskNotifyTime
        | EventKind::TaskDueTime => &["task_id"],
    };
    let identity = id_fields.iter().find_map(|field| {
        let value = payload.get(*field).filter(|value| !value.is_null())?;
        Some(match value {
            Value::String(text) => format!("{field}={text}"),
            other => format!("{field}={other}"),
        })
    });
    let Some(identity) = identity else {
        return format!(
            "{kind}|body#{}",
            canonical_hash(&Value::Object(payload.clone()))
        );
    };
    match kind {
        EventKind::CustomerChange | EventKind::TaskChange => {
            let updated_key = payload
                .get("updated_key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let updated_value = payload.get("updated_value").unwrap_or(&Value::Null);
            format!(
                "{kind}|{identity}|updated_key={updated_key}|updated_value#{}",
                canonical_hash(updated_value)
            )
        }
        _ => format!("{kind}|{identity}"),
    }
}

fn canonical_hash(value: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    write_canonical(value, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// JSON with object keys sorted, so equal values hash equally whatever the key order.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut members: Vec<_> = object.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, member)) in members.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
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
    fn dedup_keys_use_identifying_fields_then_the_body() {
        let key = |kind, v: Value| dedup_key(kind, v.as_object().unwrap());
        assert_eq!(
            key(
                EventKind::AllCalls,
                json!({"cdr_id": 9876543, "contact_id": 1})
            ),
            "ALL_CALLS|cdr_id=9876543"
        );
        assert_eq!(
            key(EventKind::CdrSummaryReady, json!({"cdr_uuid": "8f4e"})),
            "CDR_SUMMARY_READY|cdr_uuid=8f4e"
        );
        assert_eq!(
            key(EventKind::TaskDueTime, json!({"task_id": 4567})),
            "TASK_DUE_TIME|task_id=4567"
        );
        let change = |value: Value| {
            key(
                EventKind::TaskChange,
                json!({"task_id": 1, "updated_key": "task_status", "updated_value": value}),
            )
        };
        assert_eq!(
            change(json!({"a": 1, "b": 2})),
            change(json!({"b": 2, "a": 1})),
            "key order does not matter"
        );
        assert_ne!(change(json!("PENDING")), change(json!("COMPLETED")));
        assert!(change(json!(1))
            .starts_with("TASK_CHANGE|task_id=1|updated_key=task_status|updated_value#"));
        let body = key(EventKind::AllCalls, json!({"cdr_phone": "+91"}));
        assert!(body.starts_with("ALL_CALLS|body#") && body.len() == "ALL_CALLS|body#".len() + 16);
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
