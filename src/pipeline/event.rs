//! The ten Superfone events and the facts derived from one payload: its kind,
//! its Kafka key, and its correlation (group) id.
//!
//! Everything here reads the parsed JSON object only; the Avro conversion lives
//! in `convert`, so a payload that fails conversion can still be keyed and
//! dead-lettered.

use crate::vocabulary::EventKind;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

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
/// way. A task event without a contact (the reference includes contact
/// fields on "most" task events, not all) is keyed by its `task_id` first,
/// so a task's events stay in order. `None` (no key) only when none of them
/// is present. Whole numbers written as floats key like integers (`12345.0`
/// is `12345`), so a lead never changes partition.
pub fn record_key(payload: &Map<String, Value>) -> Option<String> {
    const CALL_ORDER: [&str; 5] = ["contact_id", "cdr_phone", "cdr_uuid", "cdr_id", "task_id"];
    const TASK_ORDER: [&str; 5] = ["contact_id", "task_id", "cdr_phone", "cdr_uuid", "cdr_id"];
    let is_task = payload
        .get("event")
        .and_then(Value::as_str)
        .is_some_and(|event| event.starts_with("TASK_"));
    let order = if is_task { TASK_ORDER } else { CALL_ORDER };
    order
        .into_iter()
        .find_map(|field| id_text(payload.get(field)?))
}

/// An identifying value as text: a non-empty string as it is, a number in
/// its integral form when it is whole (`777.0` and `-0` are `777` and `0`).
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(normal_number(number)),
        _ => None,
    }
}

/// A JSON number in one canonical text: whole floats as integers.
fn normal_number(number: &serde_json::Number) -> String {
    if number.is_f64() {
        if let Some(float) = number.as_f64() {
            if float.fract() == 0.0 && float.abs() < 9.0e15 {
                return (float as i64).to_string();
            }
        }
    }
    number.to_string()
}

/// The delivery's correlation id as the body carries it, if it does.
pub fn body_group_id(payload: &Map<String, Value>) -> Option<&str> {
    payload
        .get("group_id_ref")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

/// An event's identity for duplicate suppression (`dedup`): the entity it is
/// about, and the dedup key of this very event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// `contact_id=555` for CUSTOMER_*, `task_id=4567` for TASK_*, the call
    /// (`cdr_id=...`, else `cdr_uuid=...`) for call events; `body` when the
    /// payload names none; with a notification, prefixed
    /// `notification=<name>|` (`per_notification`).
    pub entity: String,
    /// `<EVENT>|<entity>|<content hash>`: also the `superfone-dedup-key`
    /// header, so consumers can recognise a repeat of the previous record of
    /// the same entity.
    pub key: String,
}

impl DedupKey {
    /// The event as one notification sent it. Superfone fires each
    /// notification of an event on its own, so two of them send the same
    /// event twice on purpose: the dedup window keeps the entity per
    /// notification, and each notification's stream stays complete (a
    /// repeat through one notification is still a repeat). The key, the
    /// event's identity for consumers, stays the same.
    pub fn per_notification(mut self, notification: Option<&str>) -> DedupKey {
        if let Some(name) = notification {
            self.entity = format!("notification={name}|{}", self.entity);
        }
        self
    }
}

/// The identity of an event. Superfone may deliver one event twice; a
/// repeat is recognised only as a copy of the latest event of its entity,
/// so a real change back (lead stage A -> B -> A, or a reminder firing again
/// after its task was rescheduled) is a new event. The content hash is the
/// first 16 hex digits of SHA-256 over the payload as canonical JSON (keys
/// sorted, whole numbers as integers), without `group_id_ref`, which names
/// the delivery rather than the event.
pub fn dedup_key(kind: EventKind, payload: &Map<String, Value>) -> DedupKey {
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
    let entity = id_fields
        .iter()
        .find_map(|field| Some(format!("{field}={}", id_text(payload.get(*field)?)?)))
        .unwrap_or_else(|| "body".to_owned());
    // The canonical JSON is hashed as it is written, never held in memory.
    let mut content = Sha256::new();
    write_canonical_members(payload, &["group_id_ref"], &mut content);
    let key = format!("{kind}|{entity}|{}", short_hex(content));
    DedupKey { entity, key }
}

/// The first 16 hex digits of the hash.
fn short_hex(hash: Sha256) -> String {
    let mut hex = String::with_capacity(16);
    for byte in &hash.finalize()[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// JSON with object keys sorted and whole numbers as integers, so equal
/// values hash equally whatever the key order or number spelling.
fn write_canonical(value: &Value, out: &mut Sha256) {
    match value {
        Value::Object(object) => write_canonical_members(object, &[], out),
        Value::Array(items) => {
            out.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        Value::Number(number) => out.update(normal_number(number).as_bytes()),
        scalar => write_json(scalar, out),
    }
}

fn write_canonical_members(object: &Map<String, Value>, skip: &[&str], out: &mut Sha256) {
    let mut members: Vec<_> = object
        .iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.update(b"{");
    for (index, (key, member)) in members.into_iter().enumerate() {
        if index > 0 {
            out.update(b",");
        }
        write_json(key, out);
        out.update(b":");
        write_canonical(member, out);
    }
    out.update(b"}");
}

/// Compact JSON of a string or scalar, as `serde_json` writes it.
fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Sha256) {
    serde_json::to_writer(out, value).expect("JSON of a string or scalar");
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
    fn dedup_keys_name_the_entity_and_hash_the_content() {
        let key = |kind, v: Value| dedup_key(kind, v.as_object().unwrap());
        let call = key(
            EventKind::AllCalls,
            json!({"cdr_id": 9876543, "contact_id": 1}),
        );
        assert_eq!(call.entity, "cdr_id=9876543");
        assert!(call.key.starts_with("ALL_CALLS|cdr_id=9876543|"));
        assert_eq!(call.key.len(), "ALL_CALLS|cdr_id=9876543|".len() + 16);
        assert_eq!(
            key(EventKind::CdrSummaryReady, json!({"cdr_uuid": "8f4e"})).entity,
            "cdr_uuid=8f4e"
        );
        assert_eq!(
            key(EventKind::TaskDueTime, json!({"task_id": 4567})).entity,
            "task_id=4567"
        );
        assert_eq!(
            key(EventKind::CustomerChange, json!({"contact_id": 555})).entity,
            key(EventKind::CustomerCreate, json!({"contact_id": 555})).entity,
            "a lead's create and changes are one entity"
        );
        let change = |value: Value| {
            key(
                EventKind::CustomerChange,
                json!({"contact_id": 555, "updated_key": "lead_stage", "updated_value": value}),
            )
            .key
        };
        assert_eq!(
            change(json!({"a": 1, "b": 2})),
            change(json!({"b": 2, "a": 1})),
            "key order does not matter"
        );
        assert_ne!(change(json!("Interested")), change(json!("Not interested")));
        let no_id = key(EventKind::AllCalls, json!({"cdr_phone": "+91"}));
        assert_eq!(no_id.entity, "body");
    }

    #[test]
    fn a_notification_keeps_its_own_entity_and_the_same_key() {
        let payload = json!({"contact_id": 555, "updated_key": "city"});
        let plain = dedup_key(EventKind::CustomerChange, payload.as_object().unwrap());
        let sales = plain.clone().per_notification(Some("sales"));
        let support = plain.clone().per_notification(Some("support"));
        assert_eq!(sales.entity, "notification=sales|contact_id=555");
        assert_ne!(sales.entity, support.entity);
        assert_eq!((&sales.key, &support.key), (&plain.key, &plain.key));
        assert_eq!(plain.clone().per_notification(None), plain);
    }

    #[test]
    fn the_content_hash_is_sha256_of_the_documented_canonical_json() {
        // Keys stored in spools and on topics stay valid only while this
        // text is what is hashed: sorted keys, whole numbers as integers,
        // serde_json's escaping, no group_id_ref.
        let payload = json!({
            "tags": [true, null, "x"], "cdr_id": 9876543, "contact_id": 1.0,
            "group_id_ref": "delivery-1", "note": "a\"b\u{e9}", "n": {"z": 1, "a": 2.5}
        });
        let canonical = r#"{"cdr_id":9876543,"contact_id":1,"n":{"a":2.5,"z":1},"note":"a\"bé","tags":[true,null,"x"]}"#;
        let digest = Sha256::digest(canonical.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            dedup_key(EventKind::AllCalls, payload.as_object().unwrap()).key,
            format!("ALL_CALLS|cdr_id=9876543|{hex}")
        );
    }

    #[test]
    fn the_delivery_id_and_number_spelling_do_not_change_the_identity() {
        let key = |v: Value| dedup_key(EventKind::TaskChange, v.as_object().unwrap());
        assert_eq!(
            key(json!({"task_id": 777, "contact_id": 1, "group_id_ref": "a"})),
            key(json!({"task_id": 777.0, "contact_id": 1.0, "group_id_ref": "b"})),
        );
        assert_eq!(key(json!({"task_id": -0.0})).entity, "task_id=0");
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
        assert_eq!(key(json!({"task_id": 4567})).as_deref(), Some("4567"));
        assert_eq!(
            key(json!({"event": "TASK_DUE_TIME", "cdr_phone": "+91", "task_id": 4567})).as_deref(),
            Some("4567"),
            "a task without a contact is keyed by its task"
        );
        assert_eq!(key(json!({"event": "X"})), None);
        assert_eq!(
            key(json!({"contact_id": 12345.0})).as_deref(),
            Some("12345"),
            "a whole float keys like the integer, on the same partition"
        );
        assert_eq!(key(json!({"contact_id": -0.0})).as_deref(), Some("0"));
    }
}
