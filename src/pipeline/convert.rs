//! Superfone JSON -> Avro `Value`, driven by the event's schema, and the
//! Confluent wire framing of the result.
//!
//! The schema is the single source of truth: the converter walks it and takes
//! from the payload what each field asks for. Three mappings are not one-to-one
//! and are documented in the schemas' `doc` strings:
//! - ISO 8601 strings -> `timestamp-millis` (UTC milliseconds);
//! - fields marked `"superfone.json": true` (`updated_value`, the values of
//!   `contact_custom_fields`) carry any JSON losslessly as its JSON text;
//! - payload members the schema does not know are not dropped: they go to
//!   `unmapped_fields_json`, keyed by their JSON Pointer.

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;

/// The top-level field that collects members unknown to the schema.
pub const UNMAPPED_FIELD: &str = "unmapped_fields_json";
/// Field attribute marking a subtree whose strings hold JSON text.
const JSON_TEXT_ATTRIBUTE: &str = "superfone.json";
/// First byte of a Confluent-framed value.
pub const WIRE_MAGIC_BYTE: u8 = 0;

/// A payload that does not fit its event's schema; `field` is the path at fault
/// (`cdr_start`, `contact_phones[0].phone`), so the vendor's log names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct ConvertError {
    pub field: String,
    pub problem: String,
}

/// Converts payloads of one event. Built once per event at start-up.
pub struct Converter {
    /// Leaked on purpose: one per event, alive as long as the process, so the
    /// writer below can keep its resolved names instead of resolving the
    /// schema again for every record (seen in the profile).
    schema: &'static Schema,
    named: HashMap<String, Schema>,
    /// Writes without apache-avro's validation pass: the value was built by
    /// walking this very schema, so a second walk would only repeat it.
    writer: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converter")
            .field("schema", &self.schema.name().map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

/// Where the walk is: path segments, for error messages and JSON Pointers.
#[derive(Default)]
struct Walk {
    path: Vec<String>,
    unmapped: Map<String, Json>,
}

impl Walk {
    fn field_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            if segment.parse::<usize>().is_ok() {
                out.push_str(&format!("[{segment}]"));
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(segment);
            }
        }
        out
    }

    fn pointer_to(&self, member: &str) -> String {
        self.path
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(member))
            .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
            .collect()
    }

    fn error(&self, problem: impl Into<String>) -> ConvertError {
        ConvertError {
            field: self.field_path(),
            problem: problem.into(),
        }
    }

    fn nested<T>(&mut self, segment: String, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(segment);
        let out = f(self);
        self.path.pop();
        out
    }
}

impl Converter {
    pub fn new(schema: Schema) -> Self {
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let mut named = HashMap::new();
        collect_named(schema, &mut named);
        let writer = GenericDatumWriter::builder(schema)
            .validate(false)
            .build()
            .expect("a parsed schema resolves its own names");
        Converter {
            schema,
            named,
            writer,
        }
    }

    pub fn schema(&self) -> &Schema {
        self.schema
    }

    /// Converts a whole payload (a JSON object) into the event's record.
    pub fn to_avro(&self, payload: &Map<String, Json>) -> Result<Avro, ConvertError> {
        let Schema::Record(record) = self.schema else {
            return Err(Walk::default().error("event schema is not a record"));
        };
        let mut walk = Walk::default();
        let mut value = self.record(record, payload, &mut walk, true)?;
        if let Avro::Record(fields) = &mut value {
            if let Some((_, slot)) = fields.iter_mut().find(|(name, _)| name == UNMAPPED_FIELD) {
                if !walk.unmapped.is_empty() {
                    let text = Json::Object(std::mem::take(&mut walk.unmapped)).to_string();
                    *slot = Avro::Union(1, Box::new(Avro::String(text)));
                }
            }
        }
        Ok(value)
    }

    /// Converts and frames a payload: `0x00 | schema id (u32 BE) | Avro datum`.
    pub fn encode(
        &self,
        schema_id: u32,
        payload: &Map<String, Json>,
    ) -> Result<Vec<u8>, ConvertError> {
        let value = self.to_avro(payload)?;
        frame(&self.writer, schema_id, &value).map_err(|error| ConvertError {
            field: String::new(),
            problem: format!("Avro encoding failed: {error}"),
        })
    }

    fn record(
        &self,
        record: &RecordSchema,
        object: &Map<String, Json>,
        walk: &mut Walk,
        top_level: bool,
    ) -> Result<Avro, ConvertError> {
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            if top_level && field.name == UNMAPPED_FIELD {
                fields.push((field.name.clone(), Avro::Union(0, Box::new(Avro::Null))));
                continue;
            }
            let json_text =
                field.custom_attributes.get(JSON_TEXT_ATTRIBUTE) == Some(&Json::Bool(true));
            let value = walk.nested(field.name.clone(), |walk| {
                self.value(&field.schema, object.get(&field.name), json_text, walk)
            })?;
            fields.push((field.name.clone(), value));
        }
        for (member, value) in object {
            let known =
                record.lookup.contains_key(member) && !(top_level && member == UNMAPPED_FIELD);
            if !known {
                let pointer = walk.pointer_to(member);
                walk.unmapped.insert(pointer, value.clone());
            }
        }
        Ok(Avro::Record(fields))
    }

    fn value(
        &self,
        schema: &Schema,
        json: Option<&Json>,
        json_text: bool,
        walk: &mut Walk,
    ) -> Result<Avro, ConvertError> {
        if let Schema::Union(union) = schema {
            let variants = union.variants();
            let null_index = variants.iter().position(|v| matches!(v, Schema::Null));
            return match (json, null_index) {
                (None | Some(Json::Null), Some(index)) => {
                    Ok(Avro::Union(index as u32, Box::new(Avro::Null)))
                }
                (None, None) => Err(walk.error("required field is missing")),
                (Some(json), _) => {
                    let mut last_error = None;
                    for (index, variant) in variants.iter().enumerate() {
                        if matches!(variant, Schema::Null) {
                            continue;
                        }
                        match self.value(variant, Some(json), json_text, walk) {
                            Ok(value) => return Ok(Avro::Union(index as u32, Box::new(value))),
                            Err(error) => last_error = Some(error),
                        }
                    }
                    Err(last_error.unwrap_or_else(|| walk.error("must be null")))
                }
            };
        }
        let Some(json) = json else {
            return Err(walk.error("required field is missing"));
        };
        match schema {
            Schema::Null if json.is_null() => Ok(Avro::Null),
            Schema::Boolean => json.as_bool().map(Avro::Boolean).ok_or_else(|| walk.error("expected a boolean")),
            Schema::Int => integer(json)
                .and_then(|n| i32::try_from(n).ok())
                .map(Avro::Int)
                .ok_or_else(|| walk.error("expected a 32-bit integer")),
            Schema::Long => integer(json).map(Avro::Long).ok_or_else(|| walk.error("expected an integer")),
            Schema::Float => json.as_f64().map(|n| Avro::Float(n as f32)).ok_or_else(|| walk.error("expected a number")),
            Schema::Double => json.as_f64().map(Avro::Double).ok_or_else(|| walk.error("expected a number")),
            Schema::String if json_text => Ok(Avro::String(json.to_string())),
            Schema::String => json
                .as_str()
                .map(|s| Avro::String(s.to_owned()))
                .ok_or_else(|| walk.error("expected a string")),
            Schema::TimestampMillis => json
                .as_str()
                .and_then(timestamp_millis)
                .map(Avro::TimestampMillis)
                .ok_or_else(|| walk.error("expected an ISO 8601 timestamp with a UTC offset, e.g. 2026-05-15T10:30:00.000Z")),
            Schema::Array(array) => {
                let items = json.as_array().ok_or_else(|| walk.error("expected an array"))?;
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        walk.nested(index.to_string(), |walk| self.value(&array.items, Some(item), json_text, walk))
                    })
                    .collect::<Result<_, _>>()
                    .map(Avro::Array)
            }
            Schema::Map(map) => {
                let object = json.as_object().ok_or_else(|| walk.error("expected an object"))?;
                object
                    .iter()
                    .map(|(key, item)| {
                        walk.nested(key.clone(), |walk| self.value(&map.types, Some(item), json_text, walk))
                            .map(|value| (key.clone(), value))
                    })
                    .collect::<Result<_, _>>()
                    .map(Avro::Map)
            }
            Schema::Record(record) => {
                let object = json.as_object().ok_or_else(|| walk.error("expected an object"))?;
                self.record(record, object, walk, false)
            }
            Schema::Ref { name } => {
                let target = self
                    .named
                    .get(&name.fullname(None))
                    .ok_or_else(|| walk.error(format!("schema refers to unknown type {name}")))?;
                self.value(target, Some(json), json_text, walk)
            }
            Schema::Null => Err(walk.error("must be null")),
            other => Err(walk.error(format!("schema type {other:?} is not supported by the converter"))),
        }
    }
}

/// An integer, also from a float with no fractional part (`142.0`), which some
/// JSON encoders emit for whole numbers.
fn integer(json: &Json) -> Option<i64> {
    json.as_i64().or_else(|| {
        let float = json.as_f64()?;
        (float.fract() == 0.0 && float.abs() < 9.0e15).then_some(float as i64)
    })
}

/// Largest UTC offset accepted: ±23:59, as RFC 3339 and the ISO 8601
/// parsers consumers use allow.
const MAX_OFFSET_SECONDS: i32 = 23 * 3600 + 59 * 60;

/// UTC milliseconds of an ISO 8601 timestamp with an offset. Only instants
/// in the years 0001-9999 (UTC) are accepted: consumers' date types
/// (Python's `datetime`, Java's `Instant` formatting) cannot decode others.
fn timestamp_millis(text: &str) -> Option<i64> {
    let instant = OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(text, &Iso8601::DEFAULT))
        .ok()?;
    if instant.offset().whole_seconds().abs() > MAX_OFFSET_SECONDS {
        return None;
    }
    let utc = instant.checked_to_offset(time::UtcOffset::UTC)?;
    if !(1..=9999).contains(&utc.year()) {
        return None;
    }
    i64::try_from(utc.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

fn collect_named(schema: &Schema, named: &mut HashMap<String, Schema>) {
    match schema {
        Schema::Record(record) => {
            named.insert(record.name.fullname(None), schema.clone());
            record
                .fields
                .iter()
                .for_each(|field| collect_named(&field.schema, named));
        }
        Schema::Array(array) => collect_named(&array.items, named),
        Schema::Map(map) => collect_named(&map.types, named),
        Schema::Union(union) => union
            .variants()
            .iter()
            .for_each(|variant| collect_named(variant, named)),
        _ => {}
    }
}

/// The Confluent wire format: magic byte 0, the schema id as 4 bytes big-endian,
/// then the Avro binary datum, written into one buffer.
fn frame(
    writer: &GenericDatumWriter<'_>,
    schema_id: u32,
    value: &Avro,
) -> Result<Vec<u8>, apache_avro::Error> {
    let mut buffer = Vec::with_capacity(512);
    buffer.push(WIRE_MAGIC_BYTE);
    buffer.extend_from_slice(&schema_id.to_be_bytes());
    writer.write_value_ref(&mut buffer, value)?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    /// Years 0001-9999 only (UTC), offsets up to ±23:59: Confluent's Python
    /// deserializer could not decode `0000-01-01T00:00:00Z` (date value out
    /// of range) once it was accepted.
    #[test]
    fn timestamps_outside_what_consumers_decode_are_refused() {
        assert!(timestamp_millis("0001-01-01T00:00:00Z").is_some());
        assert!(timestamp_millis("9999-12-31T23:59:59.999Z").is_some());
        assert!(timestamp_millis("2026-05-15T10:30:00+23:59").is_some());
        assert!(timestamp_millis("2026-05-15T10:30:00-23:59").is_some());
        for refused in [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:00:00-05:00",
            "2026-05-15T10:30:00+24:00",
            "2026-05-15T10:30:00-25:30",
        ] {
            assert_eq!(timestamp_millis(refused), None, "{refused}");
        }
    }

    use super::*;
    use serde_json::json;

    fn converter(schema: &str) -> Converter {
        Converter::new(Schema::parse_str(schema).unwrap())
    }

    const SMALL: &str = r#"{"type":"record","name":"T","fields":[
        {"name":"id","type":"long"},
        {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-millis"}],"default":null},
        {"name":"any","type":["null","string"],"default":null,"superfone.json":true},
        {"name":"tags","type":["null",{"type":"array","items":{"type":"record","name":"Tag","fields":[{"name":"t","type":"string"}]}}],"default":null},
        {"name":"unmapped_fields_json","type":["null","string"],"default":null}]}"#;

    fn object(value: Json) -> Map<String, Json> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn wire_format_is_magic_id_then_datum() {
        let converter = converter(
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"},{"name":"s","type":"string"}]}"#,
        );
        // 0x00 | 0x0000002a | zigzag(1)=0x02 | len zigzag(2)=0x04 'a' 'b'
        assert_eq!(
            converter
                .encode(42, &object(json!({"n": 1, "s": "ab"})))
                .unwrap(),
            vec![0, 0, 0, 0, 42, 0x02, 0x04, b'a', b'b']
        );
    }

    #[test]
    fn maps_timestamps_json_text_and_unknown_members() {
        let c = converter(SMALL);
        let value = c
            .to_avro(&object(json!({
                "id": 7, "at": "2026-05-15T10:30:08.000Z", "any": {"id": 10},
                "tags": [{"t": "x", "colour": "red"}], "new_field": [1, 2]
            })))
            .unwrap();
        let Avro::Record(fields) = value else {
            panic!("record expected")
        };
        assert_eq!(fields[0].1, Avro::Long(7));
        assert_eq!(
            fields[1].1,
            Avro::Union(1, Box::new(Avro::TimestampMillis(1_778_841_008_000)))
        );
        assert_eq!(
            fields[2].1,
            Avro::Union(1, Box::new(Avro::String(r#"{"id":10}"#.into())))
        );
        let Avro::Union(1, unmapped) = &fields[4].1 else {
            panic!("unmapped expected")
        };
        let unmapped: Json = match unmapped.as_ref() {
            Avro::String(text) => serde_json::from_str(text).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            unmapped,
            json!({"/tags/0/colour": "red", "/new_field": [1, 2]})
        );
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let c = converter(SMALL);
        let err = c
            .to_avro(&object(json!({"id": 1, "at": "yesterday"})))
            .unwrap_err();
        assert_eq!(err.field, "at");
        let err = c.to_avro(&object(json!({"at": null}))).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            ("id", "required field is missing")
        );
        let err = c
            .to_avro(&object(json!({"id": 1, "tags": [{"t": 5}]})))
            .unwrap_err();
        assert_eq!(err.field, "tags[0].t");
        let err = c.to_avro(&object(json!({"id": 1.5}))).unwrap_err();
        assert_eq!(err.field, "id");
    }

    #[test]
    fn absent_and_null_optionals_are_null_and_whole_floats_are_integers() {
        let c = converter(SMALL);
        let Avro::Record(fields) = c
            .to_avro(&object(json!({"id": 142.0, "any": null})))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(fields[0].1, Avro::Long(142));
        assert!(fields[1..]
            .iter()
            .all(|(_, v)| *v == Avro::Union(0, Box::new(Avro::Null))));
    }
}
