//! Vendor schema drift as a schema patch: an event schema (`.avsc` text)
//! with the members Superfone sent but the schema did not know added as
//! nullable fields (default `null`), typed from the JSON seen, each with a
//! `doc` saying when it was first seen. `superfone-bridge schema drift
//! --write-patch` writes the result for review; adding a field with a
//! default is BACKWARD compatible, so the registry accepts it.

use crate::pipeline::convert::{ABSENT_FIELD, UNMAPPED_FIELD};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The JSON type name of `value`: `integer` for whole numbers.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

/// One unknown member, as seen on a topic.
#[derive(Debug, Clone)]
pub struct SeenMember {
    /// Its JSON Pointer, e.g. `/call_tag`.
    pub pointer: String,
    pub count: u64,
    pub types: BTreeSet<&'static str>,
    /// When it was first and last received (RFC 3339).
    pub first_seen: String,
    pub last_seen: String,
}

/// The Avro type for the JSON types seen (null aside): `string`, `long`,
/// `double` or `boolean` when they agree (integers and numbers: `double`);
/// anything else (objects, arrays, mixed) a string holding the JSON text,
/// marked `"superfone.json": true` as `updated_value` is. The second value
/// says whether it is JSON text.
pub fn avro_type(types: &BTreeSet<&'static str>) -> (&'static str, bool) {
    let seen: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
    match seen.as_slice() {
        ["string"] => ("string", false),
        ["integer"] => ("long", false),
        ["number"] | ["integer", "number"] => ("double", false),
        ["boolean"] => ("boolean", false),
        _ => ("string", true),
    }
}

/// What patching one event schema did.
#[derive(Debug, Default)]
pub struct Patched {
    /// The patched `.avsc` text (pretty-printed as the repository's are).
    pub text: String,
    /// The pointers added as fields.
    pub added: Vec<String>,
    /// The pointers left out, and why.
    pub skipped: Vec<(String, String)>,
}

/// Adds each top-level member of `members` to the event schema `text` as a
/// nullable field before `unmapped_fields_json`. Nested members (their
/// type is a shared type or an inner record) and names Avro does not allow
/// are left out, with the reason.
pub fn patch_event(text: &str, members: &[SeenMember]) -> Result<Patched, serde_json::Error> {
    let mut schema: Value = serde_json::from_str(text)?;
    let mut patched = Patched::default();
    let Some(fields) = schema.get_mut("fields").and_then(Value::as_array_mut) else {
        return Ok(patched);
    };
    for member in members {
        let name = match top_level_name(&member.pointer) {
            Ok(name) => name,
            Err(reason) => {
                patched.skipped.push((member.pointer.clone(), reason));
                continue;
            }
        };
        if fields.iter().any(|field| field["name"] == name) {
            let reason = "the schema has a field of that name already".to_owned();
            patched.skipped.push((member.pointer.clone(), reason));
            continue;
        }
        let at = fields
            .iter()
            .position(|f| f["name"] == UNMAPPED_FIELD || f["name"] == ABSENT_FIELD)
            .unwrap_or(fields.len());
        fields.insert(at, new_field(&name, member));
        patched.added.push(member.pointer.clone());
    }
    patched.text = serde_json::to_string_pretty(&schema)? + "\n";
    Ok(patched)
}

/// The member name of a top-level pointer, if it can be an Avro field name.
fn top_level_name(pointer: &str) -> Result<String, String> {
    let Some(name) = pointer.strip_prefix('/').filter(|rest| !rest.contains('/')) else {
        return Err("nested member: add it to its record (or shared type) by hand".into());
    };
    let name = name.replace("~1", "/").replace("~0", "~");
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err("not a valid Avro field name: keep it in unmapped_fields_json".into())
    }
}

fn new_field(name: &str, member: &SeenMember) -> Value {
    let (avro, json_text) = avro_type(&member.types);
    let types: Vec<&str> = member.types.iter().copied().collect();
    let mut doc = format!(
        "Added from vendor schema drift: first seen {}, last seen {}, {} time(s) before this schema version, as JSON {}.",
        member.first_seen,
        member.last_seen,
        member.count,
        types.join(", ")
    );
    // A number or boolean member keeps a JSON-text branch: seen as integers
    // so far, a later 1.5 or "12" must still go out, not fail the whole
    // event (a 422, which Superfone never retries) as it did not before.
    let (union, json_branch) = match (json_text, avro) {
        (true, _) | (false, "string") => (json!(["null", "string"]), json_text),
        (false, typed) => (json!(["null", typed, "string"]), true),
    };
    if json_text {
        doc.push_str(" Carried as its JSON text; parse it with any JSON parser.");
    } else if json_branch {
        doc.push_str(
            " A value of another JSON type arrives as its JSON text, in the string branch.",
        );
    }
    doc.push_str(" null when the payload has null or omits it.");
    let mut field = Map::new();
    field.insert("name".into(), json!(name));
    field.insert("type".into(), union);
    field.insert("doc".into(), json!(doc));
    field.insert("default".into(), Value::Null);
    if json_branch {
        field.insert("superfone.json".into(), json!(true));
    }
    Value::Object(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pointer: &str, types: &[&'static str]) -> SeenMember {
        SeenMember {
            pointer: pointer.into(),
            count: 3,
            types: types.iter().copied().collect(),
            first_seen: "2026-12-01T10:00:00Z".into(),
            last_seen: "2026-12-02T10:00:00Z".into(),
        }
    }

    #[test]
    fn types_follow_what_was_seen_and_anything_else_is_json_text() {
        let of = |types: &[&'static str]| avro_type(&types.iter().copied().collect());
        assert_eq!(of(&["string", "null"]), ("string", false));
        assert_eq!(of(&["integer"]), ("long", false));
        assert_eq!(of(&["integer", "number"]), ("double", false));
        assert_eq!(of(&["boolean"]), ("boolean", false));
        assert_eq!(of(&["object"]), ("string", true));
        assert_eq!(of(&["string", "integer"]), ("string", true));
        assert_eq!(of(&["null"]), ("string", true));
    }

    #[test]
    fn top_level_members_become_nullable_fields_before_the_unmapped_one() {
        let text = r#"{"type":"record","name":"E","fields":[
            {"name":"event","type":"string"},
            {"name":"unmapped_fields_json","type":["null","string"],"default":null},
            {"name":"absent_fields","type":{"type":"array","items":"string"},"default":[]}]}"#;
        let members = [
            seen("/call_tag", &["string"]),
            seen("/meta", &["object"]),
            seen("/summary/sentiment", &["string"]),
            seen("/bad-name", &["string"]),
            seen("/event", &["string"]),
        ];
        let patched = patch_event(text, &members).unwrap();
        assert_eq!(patched.added, ["/call_tag", "/meta"]);
        let skipped: Vec<&str> = patched.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, ["/summary/sentiment", "/bad-name", "/event"]);
        let schema: Value = serde_json::from_str(&patched.text).unwrap();
        let names: Vec<&str> = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "event",
                "call_tag",
                "meta",
                "unmapped_fields_json",
                "absent_fields"
            ]
        );
        let tag = &schema["fields"][1];
        assert_eq!(tag["type"], json!(["null", "string"]));
        assert_eq!(tag["default"], Value::Null);
        assert!(tag["doc"]
            .as_str()
            .unwrap()
            .contains("first seen 2026-12-01T10:00:00Z"));
        assert_eq!(schema["fields"][2]["superfone.json"], json!(true));
        apache_avro::Schema::parse_str(&patched.text).unwrap();
    }

    /// Seen as integers, then sent as 1.5 or "12": still encoded (as JSON
    /// text), where a plain ["null","long"] would fail the event.
    #[test]
    fn a_typed_member_takes_a_later_value_of_another_type_as_json_text() {
        let text = r#"{"type":"record","name":"E","fields":[
            {"name":"event","type":"string"},
            {"name":"unmapped_fields_json","type":["null","string"],"default":null}]}"#;
        let patched = patch_event(text, &[seen("/call_tag", &["integer"])]).unwrap();
        let schema = apache_avro::Schema::parse_str(&patched.text).unwrap();
        let converter = crate::pipeline::convert::Converter::new(schema);
        for value in [json!(7), json!(1.5), json!("12"), json!(null)] {
            let payload = json!({"event": "X", "call_tag": value});
            let encoded = converter.encode(1, payload.as_object().unwrap());
            assert!(encoded.is_ok(), "{value}: {encoded:?}");
        }
    }
}
