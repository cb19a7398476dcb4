//! The Avro schemas of the ten events: loading `schemas/*.avsc` (embedded in
//! the binary, or read from a directory that overrides them) and making each
//! one self-contained.
//!
//! The event schemas refer to shared named types (`schemas/types/*.avsc`) by
//! name. A Confluent registry would need schema references for that, which not
//! every client resolves, so each event schema is registered with the shared
//! types inlined at their first use: one standalone schema per subject.

use crate::config::RegistryConfig;
use crate::vocabulary::EventKind;
use apache_avro::Schema;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Where the `.avsc` files come from.
#[derive(Debug, Clone)]
pub enum SchemaSource {
    /// The schemas compiled into this binary (the repo's `schemas/`).
    Embedded,
    /// A directory laid out like `schemas/`: `<event>.avsc` and `types/*.avsc`.
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema file {name} is not valid JSON: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error("schema {name} is not a valid Avro schema: {source}")]
    Avro {
        name: String,
        source: Box<apache_avro::Error>,
    },
    #[error("schema {0} has no record name")]
    Unnamed(String),
}

/// One event's schema, ready to register and to encode with.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub kind: EventKind,
    /// Full record name, e.g. `com.superfone.events.AllCalls` (RecordNameStrategy subject).
    pub full_name: String,
    /// The standalone schema text sent to the registry.
    pub text: String,
    pub schema: Schema,
}

const EMBEDDED_TYPES: [(&str, &str); 7] = [
    (
        "ContactPhone",
        include_str!("../../schemas/types/ContactPhone.avsc"),
    ),
    ("Label", include_str!("../../schemas/types/Label.avsc")),
    ("Product", include_str!("../../schemas/types/Product.avsc")),
    (
        "IvrInput",
        include_str!("../../schemas/types/IvrInput.avsc"),
    ),
    ("Insight", include_str!("../../schemas/types/Insight.avsc")),
    ("Summary", include_str!("../../schemas/types/Summary.avsc")),
    (
        "TranscriptionTurn",
        include_str!("../../schemas/types/TranscriptionTurn.avsc"),
    ),
];

fn embedded_event(kind: EventKind) -> &'static str {
    match kind {
        EventKind::AllCalls => include_str!("../../schemas/all_calls.avsc"),
        EventKind::MissedCall => include_str!("../../schemas/missed_call.avsc"),
        EventKind::CdrRecordingAvailable => {
            include_str!("../../schemas/cdr_recording_available.avsc")
        }
        EventKind::CdrSummaryReady => include_str!("../../schemas/cdr_summary_ready.avsc"),
        EventKind::CustomerCreate => include_str!("../../schemas/customer_create.avsc"),
        EventKind::CustomerChange => include_str!("../../schemas/customer_change.avsc"),
        EventKind::TaskCreate => include_str!("../../schemas/task_create.avsc"),
        EventKind::TaskChange => include_str!("../../schemas/task_change.avsc"),
        EventKind::TaskNotifyTime => include_str!("../../schemas/task_notify_time.avsc"),
        EventKind::TaskDueTime => include_str!("../../schemas/task_due_time.avsc"),
    }
}

impl SchemaSource {
    /// `registry.schemas_dir` if set, else the schemas built into the binary.
    pub fn of(registry: &RegistryConfig) -> SchemaSource {
        match &registry.schemas_dir {
            Some(dir) => SchemaSource::Dir(dir.clone()),
            None => SchemaSource::Embedded,
        }
    }

    fn event_text(&self, kind: EventKind) -> Result<(String, String), SchemaError> {
        let name = format!("{}.avsc", kind.slug());
        match self {
            SchemaSource::Embedded => Ok((name, embedded_event(kind).to_owned())),
            SchemaSource::Dir(dir) => read(&dir.join(&name)).map(|text| (name, text)),
        }
    }

    fn type_texts(&self) -> Result<Vec<(String, String)>, SchemaError> {
        match self {
            SchemaSource::Embedded => Ok(EMBEDDED_TYPES
                .iter()
                .map(|(name, text)| (format!("types/{name}.avsc"), (*text).to_owned()))
                .collect()),
            SchemaSource::Dir(dir) => {
                let types_dir = dir.join("types");
                let entries =
                    std::fs::read_dir(&types_dir).map_err(|source| SchemaError::Read {
                        path: types_dir.clone(),
                        source,
                    })?;
                let mut texts = Vec::new();
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|ext| ext == "avsc") {
                        texts.push((path.display().to_string(), read(&path)?));
                    }
                }
                Ok(texts)
            }
        }
    }
}

impl SchemaSource {
    /// Every `.avsc` of the source as written (not inlined), named by its
    /// path inside a schemas directory: `all_calls.avsc`, `types/Label.avsc`.
    pub fn files(&self) -> Result<Vec<(String, String)>, SchemaError> {
        let mut files = EventKind::ALL
            .into_iter()
            .map(|kind| self.event_text(kind))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, text) in self.type_texts()? {
            let file = Path::new(&name).file_name().map(|f| f.to_string_lossy());
            files.push((format!("types/{}", file.unwrap_or_default()), text));
        }
        Ok(files)
    }
}

fn read(path: &Path) -> Result<String, SchemaError> {
    std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_json(name: &str, text: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(text).map_err(|source| SchemaError::Json {
        name: name.to_owned(),
        source,
    })
}

fn full_name(name: &str, schema: &Value) -> Result<String, SchemaError> {
    let record = schema
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| SchemaError::Unnamed(name.to_owned()))?;
    Ok(match schema.get("namespace").and_then(Value::as_str) {
        Some(namespace) if !record.contains('.') => format!("{namespace}.{record}"),
        _ => record.to_owned(),
    })
}

/// Loads all ten event schemas, each made standalone and parsed.
pub fn load_all(source: &SchemaSource) -> Result<Vec<EventSchema>, SchemaError> {
    let mut shared = HashMap::new();
    for (name, text) in source.type_texts()? {
        let json = parse_json(&name, &text)?;
        shared.insert(full_name(&name, &json)?, json);
    }
    EventKind::ALL
        .into_iter()
        .map(|kind| {
            let (name, text) = source.event_text(kind)?;
            let mut json = parse_json(&name, &text)?;
            let full_name = full_name(&name, &json)?;
            inline_named_types(&mut json, &shared, &mut HashSet::new());
            let text = json.to_string();
            let schema = Schema::parse_str(&text).map_err(|source| SchemaError::Avro {
                name: name.clone(),
                source: Box::new(source),
            })?;
            Ok(EventSchema {
                kind,
                full_name,
                text,
                schema,
            })
        })
        .collect()
}

/// Replaces the first reference to each shared named type with its definition.
/// Only type positions are visited (`type`, `items`, `values`, union members,
/// `fields`), so a `doc` string that happens to equal a type name is left alone.
fn inline_named_types(
    node: &mut Value,
    shared: &HashMap<String, Value>,
    defined: &mut HashSet<String>,
) {
    match node {
        Value::String(name) => {
            if let Some(definition) = shared.get(name.as_str()) {
                if defined.insert(name.clone()) {
                    let mut definition = definition.clone();
                    inline_named_types(&mut definition, shared, defined);
                    *node = definition;
                }
            }
        }
        Value::Array(members) => members
            .iter_mut()
            .for_each(|member| inline_named_types(member, shared, defined)),
        Value::Object(object) => {
            for key in ["type", "items", "values", "fields"] {
                if let Some(child) = object.get_mut(key) {
                    inline_named_types(child, shared, defined);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn all_embedded_schemas_load_standalone() {
        let schemas = load_all(&SchemaSource::Embedded).expect("embedded schemas load");
        assert_eq!(schemas.len(), 10);
        let all_calls = &schemas[0];
        assert_eq!(all_calls.full_name, "com.superfone.events.AllCalls");
        // Standalone: every shared type is defined in the text, not just named.
        assert!(all_calls.text.contains(r#""name":"ContactPhone""#));
        assert!(schemas[3].text.contains(r#""name":"Insight""#));
    }

    /// A field that appears in several events (contact_id, cdr_start, ...) must
    /// mean the same thing everywhere, or consumers joining topics get surprises.
    #[test]
    fn shared_field_names_have_one_type_across_events() {
        let mut seen: BTreeMap<String, (Value, EventKind)> = BTreeMap::new();
        let optional_on_some_events = ["contact_id", "cdr_id"];
        for kind in EventKind::ALL {
            let json: Value = serde_json::from_str(embedded_event(kind)).unwrap();
            for field in json["fields"].as_array().unwrap() {
                let name = field["name"].as_str().unwrap().to_owned();
                if optional_on_some_events.contains(&name.as_str()) {
                    continue;
                }
                let ty = field["type"].clone();
                if let Some((first, first_kind)) = seen.get(&name) {
                    assert_eq!(first, &ty, "{name}: {first_kind} and {kind} differ");
                } else {
                    seen.insert(name, (ty, kind));
                }
            }
        }
    }

    /// Task events may come without a contact: their `contact_id` became
    /// nullable. A registry with the earlier version under the subject
    /// (BACKWARD, Confluent's default) accepts the change: the new schema
    /// reads what the old one wrote.
    #[test]
    fn task_schemas_accepting_no_contact_read_what_the_earlier_version_wrote() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let schemas = load_all(&SchemaSource::Embedded).expect("embedded schemas load");
        let tasks = [
            EventKind::TaskCreate,
            EventKind::TaskChange,
            EventKind::TaskNotifyTime,
            EventKind::TaskDueTime,
        ];
        for schema in schemas.iter().filter(|s| tasks.contains(&s.kind)) {
            let mut earlier: Value = serde_json::from_str(&schema.text).unwrap();
            let contact_id = earlier["fields"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|field| field["name"] == "contact_id")
                .expect("contact_id field");
            assert_eq!(contact_id["default"], Value::Null, "{}", schema.kind);
            contact_id["type"] = Value::from("long");
            contact_id.as_object_mut().unwrap().remove("default");
            let earlier = Schema::parse(&earlier).unwrap();
            SchemaCompatibility::can_read(&earlier, &schema.schema)
                .unwrap_or_else(|error| panic!("{}: {error}", schema.kind));
        }
    }
}
