//! `schema drift`: the members Superfone sends that the event schemas do not
//! know, read back from each event topic's `unmapped_fields_json` (decoded
//! through the registry): per event, each JSON Pointer, how often, the JSON
//! types seen, first and last seen. With `--write-patch DIR`, a schemas
//! directory with those members added as fields (`pipeline::schema_patch`),
//! for review. Reads with a throwaway consumer group and commits nothing.

use crate::config::Config;
use crate::ops::tools::topics::read_to_end_from;
use crate::ops::tools::ToolError;
use crate::pipeline::avro_json;
use crate::pipeline::convert::{DELIVERY_MEMBERS, UNMAPPED_FIELD};
use crate::pipeline::schema::SchemaSource;
use crate::pipeline::schema_patch::{self, json_type, SeenMember};
use crate::vocabulary::headers::{EVENT_HEADER, RECEIVED_AT_HEADER};
use crate::vocabulary::EventKind;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::Offset;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// What `schema drift` reads and writes.
#[derive(Debug, Clone)]
pub struct DriftOptions {
    /// Every record of each topic, not its partitions' last `max`.
    pub from_beginning: bool,
    /// At most this many records per topic.
    pub max: usize,
    /// Write the patched schemas directory here.
    pub write_patch: Option<PathBuf>,
}

/// The unknown members of one event, by pointer.
type EventDrift = BTreeMap<String, SeenMember>;

/// Prints one JSON line per unknown member of each event (and, with
/// `write_patch`, one per patched file); returns how many members.
pub async fn drift(
    config: &Config,
    options: DriftOptions,
    mut out: impl Write,
) -> Result<usize, ToolError> {
    let decoder = AvroDecoder::new(crate::pipeline::registry::settings(&config.registry)?);
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::OffsetTail(options.max as i64)
    };
    let mut drifts = Vec::new();
    for kind in EventKind::ALL {
        let topic = config.topics.topic_for(kind);
        let messages = match read_to_end_from(config, &topic, start, Some(options.max)).await {
            Err(ToolError::NoSuchTopic(_)) => continue,
            read => read?,
        };
        // On a topic shared by every event (`topics.single`), only this
        // event's records say what this event's schema lacks.
        let messages: Vec<&OwnedMessage> = messages
            .iter()
            .filter(|message| {
                header(message, EVENT_HEADER).is_none_or(|event| event == kind.as_str())
            })
            .collect();
        let mut members = EventDrift::new();
        for message in &messages {
            note_unknown_members(&decoder, message, &mut members).await;
        }
        for member in members.values() {
            let line = json!({
                "event": kind.as_str(), "pointer": member.pointer, "count": member.count,
                "types": member.types, "first_seen": member.first_seen,
                "last_seen": member.last_seen, "records_read": messages.len(),
            });
            writeln!(out, "{line}")?;
        }
        if !members.is_empty() {
            drifts.push((kind, members));
        }
    }
    let found = drifts.iter().map(|(_, members)| members.len()).sum();
    if let Some(dir) = &options.write_patch {
        write_patch(config, &drifts, dir, &mut out)?;
    }
    Ok(found)
}

/// Adds the unknown members of one record to `members`; a record that does
/// not decode, or has none, adds nothing.
async fn note_unknown_members(
    decoder: &AvroDecoder,
    message: &OwnedMessage,
    members: &mut EventDrift,
) {
    let Some(payload) = message.payload().filter(|p| p.len() > 5 && p[0] == 0) else {
        return;
    };
    let Ok(decoded) = decoder.decode(Some(payload)).await else {
        return;
    };
    let value = avro_json::to_json(&decoded.value);
    let Some(unmapped) = value.get(UNMAPPED_FIELD).and_then(Value::as_str) else {
        return;
    };
    let Ok(Value::Object(unknown)) = serde_json::from_str::<Value>(unmapped) else {
        return;
    };
    let at = received_at(message);
    for (pointer, member) in unknown {
        if DELIVERY_MEMBERS.contains(&pointer.as_str()) {
            continue;
        }
        let seen = members
            .entry(pointer.clone())
            .or_insert_with(|| SeenMember {
                pointer,
                count: 0,
                types: Default::default(),
                first_seen: at.clone(),
                last_seen: at.clone(),
            });
        seen.count += 1;
        seen.types.insert(json_type(&member));
        if at < seen.first_seen {
            seen.first_seen = at.clone();
        }
        if at > seen.last_seen {
            seen.last_seen = at.clone();
        }
    }
}

/// The record's header `name`, as text.
fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_owned))
    })
}

/// When the bridge received the record (its header, RFC 3339 UTC, which
/// sorts as text), else the record's Kafka timestamp.
fn received_at(message: &OwnedMessage) -> String {
    header(message, RECEIVED_AT_HEADER).unwrap_or_else(|| {
        let millis = message.timestamp().to_millis().unwrap_or_default();
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .ok()
            .and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    })
}

/// Writes the configured schemas into `dir` (a directory usable as
/// `registry.schemas_dir`), each drifted event's file patched; one JSON
/// line per patched file, with what was added and what was left out.
fn write_patch(
    config: &Config,
    drifts: &[(EventKind, EventDrift)],
    dir: &std::path::Path,
    out: &mut impl Write,
) -> Result<(), ToolError> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| ToolError::Write { path, source })
    };
    for (name, text) in SchemaSource::of(&config.registry).files()? {
        let file = |kind: &EventKind| format!("{}.avsc", kind.slug()) == name;
        let Some((kind, members)) = drifts.iter().find(|(kind, _)| file(kind)) else {
            write(&name, &text)?;
            continue;
        };
        let members: Vec<SeenMember> = members.values().cloned().collect();
        let patched = schema_patch::patch_event(&text, &members).map_err(|source| {
            crate::pipeline::schema::SchemaError::Json {
                name: name.clone(),
                source,
            }
        })?;
        write(&name, &patched.text)?;
        let skipped: Vec<Value> = patched
            .skipped
            .iter()
            .map(|(pointer, why)| json!({"pointer": pointer, "reason": why}))
            .collect();
        let line = json!({"patched": dir.join(&name), "event": kind.as_str(),
                          "added": patched.added, "skipped": skipped});
        writeln!(out, "{line}")?;
    }
    Ok(())
}
