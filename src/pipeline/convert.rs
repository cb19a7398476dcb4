//! Superfone JSON -> Avro binary, driven by the event's schema, and the
//! Confluent wire framing of the result.
//!
//! The schema is the single source of truth: it is compiled once into a plan
//! (references resolved, field attributes read), and each payload is written
//! straight into the record's bytes in one walk of that plan, taking from the
//! payload what each field asks for. No intermediate Avro value is built.
//! Three mappings are not one-to-one and are documented in the schemas' `doc`
//! strings:
//! - ISO 8601 strings -> `timestamp-millis` (UTC milliseconds);
//! - fields marked `"superfone.json": true` (`updated_value`, the values of
//!   `contact_custom_fields`) carry any JSON losslessly as its JSON text;
//! - payload members the schema does not know are not dropped: they go to
//!   `unmapped_fields_json`, keyed by their JSON Pointer (and are counted in
//!   `superfone_unmapped_members_total`);
//! - a nullable member the payload did not have at all is written as null,
//!   like an explicit `null`, and its JSON Pointer is listed in
//!   `absent_fields`, so absent and null stay apart.

use crate::observe::metrics::UNMAPPED_MEMBERS;
use crate::vocabulary::EventKind;
use apache_avro::schema::{Name, Schema};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;

/// The top-level field that collects members unknown to the schema.
pub const UNMAPPED_FIELD: &str = "unmapped_fields_json";
/// Members about the delivery, not the event: kept in `unmapped_fields_json`
/// like any unknown member, but no sign that the vendor added a field (the
/// correlation id is the `superfone-group-id` header already), so neither
/// counted nor proposed by `schema drift`.
pub const DELIVERY_MEMBERS: &[&str] = &["/group_id_ref"];
/// The top-level field listing the nullable members the payload lacked
/// (an array of strings; a schema without it lists nothing).
pub const ABSENT_FIELD: &str = "absent_fields";
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
    name: String,
    /// The `event` label of the unmapped-members counter; none for records
    /// that are not Superfone events (the recording pointer).
    event: Option<&'static str>,
    /// The event's record has an `absent_fields` field to fill.
    lists_absent: bool,
    /// Every record type of the schema; the event's own record is first.
    records: Vec<RecordPlan>,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converter")
            .field("schema", &self.name)
            .finish_non_exhaustive()
    }
}

/// What to write for one schema node.
#[derive(Debug)]
enum Plan {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    /// A string carrying any JSON value as its JSON text.
    JsonText,
    TimestampMillis,
    Array(Box<Plan>),
    Map(Box<Plan>),
    /// Index into `Converter::records`, so recursive types compile.
    Record(usize),
    Union {
        null_index: Option<u32>,
        /// The other branches, tried in order, with their union index.
        variants: Vec<(u32, Plan)>,
    },
    /// A type the converter cannot fill from JSON; fails when reached, as
    /// the payload may never use the field.
    Unsupported(String),
}

#[derive(Debug, Default)]
struct RecordPlan {
    fields: Vec<FieldPlan>,
}

#[derive(Debug)]
struct FieldPlan {
    name: String,
    plan: Plan,
}

impl Plan {
    fn is_nullable(&self) -> bool {
        matches!(
            self,
            Plan::Union {
                null_index: Some(_),
                ..
            }
        )
    }
}

/// A top-level field written once the whole payload has been walked.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Unmapped,
    Absent,
}

impl Slot {
    /// The slot `field` is, at the top level of the event's record.
    fn of(top_level: bool, field: &FieldPlan) -> Option<Slot> {
        match (top_level, field.name.as_str(), &field.plan) {
            (false, _, _) => None,
            (true, UNMAPPED_FIELD, _) => Some(Slot::Unmapped),
            (true, ABSENT_FIELD, Plan::Array(items)) if matches!(**items, Plan::String) => {
                Some(Slot::Absent)
            }
            _ => None,
        }
    }
}

/// Compiles a schema into plans, one record plan per named record.
struct Compiler<'s> {
    /// Keyed by full name, as references name their target.
    named: HashMap<String, &'s Schema>,
    compiled: HashMap<String, usize>,
    records: Vec<RecordPlan>,
}

impl<'s> Compiler<'s> {
    fn plan(&mut self, schema: &'s Schema, json_text: bool) -> Plan {
        match schema {
            Schema::Null => Plan::Null,
            Schema::Boolean => Plan::Boolean,
            Schema::Int => Plan::Int,
            Schema::Long => Plan::Long,
            Schema::Float => Plan::Float,
            Schema::Double => Plan::Double,
            Schema::String if json_text => Plan::JsonText,
            Schema::String => Plan::String,
            Schema::TimestampMillis => Plan::TimestampMillis,
            Schema::Array(array) => Plan::Array(Box::new(self.plan(&array.items, json_text))),
            Schema::Map(map) => Plan::Map(Box::new(self.plan(&map.types, json_text))),
            Schema::Union(union) => {
                let variants = union.variants();
                Plan::Union {
                    null_index: variants
                        .iter()
                        .position(|v| matches!(v, Schema::Null))
                        .map(|index| index as u32),
                    variants: variants
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| !matches!(v, Schema::Null))
                        .map(|(index, v)| (index as u32, self.plan(v, json_text)))
                        .collect(),
                }
            }
            Schema::Record(record) => Plan::Record(self.record(schema, &record.name)),
            Schema::Ref { name } => match self.named.get(&name.fullname(None)).copied() {
                Some(target @ Schema::Record(_)) => Plan::Record(self.record(target, name)),
                Some(target) => self.plan(target, json_text),
                None => Plan::Unsupported(format!("schema refers to unknown type {name}")),
            },
            other => Plan::Unsupported(format!(
                "schema type {other:?} is not supported by the converter"
            )),
        }
    }

    /// The index of a record's plan, compiling it on first sight.
    fn record(&mut self, schema: &'s Schema, name: &Name) -> usize {
        let full_name = name.fullname(None);
        if let Some(&index) = self.compiled.get(&full_name) {
            return index;
        }
        let Schema::Record(record) = schema else {
            unreachable!("only records are compiled as records")
        };
        let index = self.records.len();
        self.records.push(RecordPlan::default());
        self.compiled.insert(full_name, index);
        let fields = record
            .fields
            .iter()
            .map(|field| {
                let json_text =
                    field.custom_attributes.get(JSON_TEXT_ATTRIBUTE) == Some(&Json::Bool(true));
                FieldPlan {
                    name: field.name.clone(),
                    plan: self.plan(&field.schema, json_text),
                }
            })
            .collect();
        self.records[index].fields = fields;
        index
    }
}

fn collect_named<'s>(schema: &'s Schema, named: &mut HashMap<String, &'s Schema>) {
    match schema {
        Schema::Record(record) => {
            named.insert(record.name.fullname(None), schema);
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

impl Converter {
    pub fn new(schema: Schema) -> Self {
        let mut compiler = Compiler {
            named: HashMap::new(),
            compiled: HashMap::new(),
            records: Vec::new(),
        };
        collect_named(&schema, &mut compiler.named);
        if let Schema::Record(record) = &schema {
            compiler.record(&schema, &record.name);
        }
        let lists_absent = compiler.records.first().is_some_and(|record| {
            record
                .fields
                .iter()
                .any(|field| matches!(Slot::of(true, field), Some(Slot::Absent)))
        });
        Converter {
            name: schema.name().map(ToString::to_string).unwrap_or_default(),
            event: None,
            lists_absent,
            records: compiler.records,
        }
    }

    /// The converter of one Superfone event, counting the members its
    /// schema does not know under that event's name.
    pub fn for_event(kind: EventKind, schema: Schema) -> Self {
        Converter {
            event: Some(kind.as_str()),
            ..Converter::new(schema)
        }
    }

    /// Converts and frames a payload: `0x00 | schema id (u32 BE) | Avro datum`.
    pub fn encode(
        &self,
        schema_id: u32,
        payload: &Map<String, Json>,
    ) -> Result<Vec<u8>, ConvertError> {
        let mut writer = Writer {
            converter: self,
            out: Vec::with_capacity(512),
            path: Vec::new(),
            unmapped: Vec::new(),
            absent: Vec::new(),
            absent_count: 0,
            scratch: String::new(),
        };
        if self.records.is_empty() {
            return Err(writer.error("event schema is not a record"));
        }
        writer.out.push(WIRE_MAGIC_BYTE);
        writer.out.extend_from_slice(&schema_id.to_be_bytes());
        writer.event(payload)?;
        let vendor_added = writer
            .unmapped
            .iter()
            .filter(|(pointer, _)| !DELIVERY_MEMBERS.contains(&pointer.as_str()))
            .count();
        if let (Some(event), unmapped @ 1..) = (self.event, vendor_added) {
            metrics::counter!(UNMAPPED_MEMBERS, "event" => event).increment(unmapped as u64);
        }
        Ok(writer.out)
    }
}

/// One step of the path from the payload's root to a value.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Member(&'a str),
    Index(usize),
}

/// One payload's walk: the bytes written so far, where the walk is (for
/// error messages and JSON Pointers), the members the schema lacks and the
/// nullable members the payload lacks.
struct Writer<'a> {
    converter: &'a Converter,
    out: Vec<u8>,
    path: Vec<Segment<'a>>,
    unmapped: Vec<(String, &'a Json)>,
    /// The absent members' pointers, each an Avro string, and how many.
    absent: Vec<u8>,
    absent_count: usize,
    scratch: String,
}

impl<'a> Writer<'a> {
    /// The event's own record. `unmapped_fields_json` and `absent_fields`
    /// are written last of all, at their places in the record, once every
    /// nested member has been seen.
    fn event(&mut self, payload: &'a Map<String, Json>) -> Result<(), ConvertError> {
        let slots = self.record(0, payload, true)?;
        // Slots come in schema order at rising offsets: filled from the last,
        // each earlier offset still holds, and two at one offset keep their order.
        for (at, slot) in slots.into_iter().rev() {
            let bytes = match slot {
                Slot::Unmapped => self.unmapped_datum(),
                Slot::Absent => self.absent_datum(),
            };
            self.out.splice(at..at, bytes);
        }
        Ok(())
    }

    /// Writes record `index` from `object`, notes its unknown members and the
    /// nullable ones it lacks. At the top level the unmapped and absent
    /// fields are left out (a member of either name is unknown) and where
    /// they belong is returned.
    fn record(
        &mut self,
        index: usize,
        object: &'a Map<String, Json>,
        top_level: bool,
    ) -> Result<Vec<(usize, Slot)>, ConvertError> {
        let fields = &self.converter.records[index].fields;
        let mut slots = Vec::new();
        let mut known_members = 0;
        for field in fields {
            if let Some(slot) = Slot::of(top_level, field) {
                slots.push((self.out.len(), slot));
                continue;
            }
            let json = object.get(&field.name);
            known_members += usize::from(json.is_some());
            if json.is_none() && self.converter.lists_absent && field.plan.is_nullable() {
                self.note_absent(&field.name);
            }
            self.nested(Segment::Member(&field.name), |writer| {
                writer.value(&field.plan, json)
            })?;
        }
        // Each field found a distinct member, so when every member was found
        // there is nothing unknown to look for.
        if known_members < object.len() {
            for (member, value) in object {
                let known = fields
                    .iter()
                    .any(|field| field.name == *member && Slot::of(top_level, field).is_none());
                if !known {
                    let pointer = self.pointer_to(member);
                    self.unmapped.push((pointer, value));
                }
            }
        }
        Ok(slots)
    }

    /// `unmapped_fields_json`: null, or the unknown members' JSON text.
    fn unmapped_datum(&self) -> Vec<u8> {
        let mut datum = Vec::new();
        match self.unmapped_text() {
            None => write_long(&mut datum, 0),
            Some(text) => {
                write_long(&mut datum, 1);
                write_string(&mut datum, &text);
            }
        }
        datum
    }

    /// `absent_fields`: one block of JSON Pointers (none: the end alone).
    fn absent_datum(&self) -> Vec<u8> {
        let mut datum = Vec::new();
        if self.absent_count > 0 {
            write_long(&mut datum, self.absent_count as i64);
            datum.extend_from_slice(&self.absent);
        }
        datum.push(0);
        datum
    }

    /// The unknown members as one JSON object, keyed by JSON Pointer.
    fn unmapped_text(&self) -> Option<String> {
        if self.unmapped.is_empty() {
            return None;
        }
        let object: Map<String, Json> = self
            .unmapped
            .iter()
            .map(|(pointer, value)| (pointer.clone(), (*value).clone()))
            .collect();
        Some(Json::Object(object).to_string())
    }

    fn value(&mut self, plan: &'a Plan, json: Option<&'a Json>) -> Result<(), ConvertError> {
        if let Plan::Union {
            null_index,
            variants,
        } = plan
        {
            return self.union(*null_index, variants, json);
        }
        let Some(json) = json else {
            return Err(self.error("required field is missing"));
        };
        match plan {
            Plan::Null if json.is_null() => {}
            Plan::Null => return Err(self.error("must be null")),
            Plan::Boolean => {
                let flag = json
                    .as_bool()
                    .ok_or_else(|| self.error("expected a boolean"))?;
                self.out.push(u8::from(flag));
            }
            Plan::Int => {
                let n = integer(json)
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| self.error("expected a 32-bit integer"))?;
                write_long(&mut self.out, i64::from(n));
            }
            Plan::Long => {
                let n = integer(json).ok_or_else(|| self.error("expected an integer"))?;
                write_long(&mut self.out, n);
            }
            Plan::Float => {
                let n = json
                    .as_f64()
                    .ok_or_else(|| self.error("expected a number"))?;
                self.out.extend_from_slice(&(n as f32).to_le_bytes());
            }
            Plan::Double => {
                let n = json
                    .as_f64()
                    .ok_or_else(|| self.error("expected a number"))?;
                self.out.extend_from_slice(&n.to_le_bytes());
            }
            Plan::JsonText => write_string(&mut self.out, &json.to_string()),
            Plan::String => {
                let text = json
                    .as_str()
                    .ok_or_else(|| self.error("expected a string"))?;
                write_string(&mut self.out, text);
            }
            Plan::TimestampMillis => {
                let millis = json.as_str().and_then(timestamp_millis).ok_or_else(|| {
                    self.error("expected an ISO 8601 timestamp with a UTC offset, e.g. 2026-05-15T10:30:00.000Z")
                })?;
                write_long(&mut self.out, millis);
            }
            Plan::Array(items) => self.array(items, json)?,
            Plan::Map(values) => self.map(values, json)?,
            Plan::Record(index) => {
                let object = json
                    .as_object()
                    .ok_or_else(|| self.error("expected an object"))?;
                self.record(*index, object, false)?;
            }
            Plan::Unsupported(problem) => return Err(self.error(problem.clone())),
            Plan::Union { .. } => unreachable!("unions are written above"),
        }
        Ok(())
    }

    /// An array: one block of its items, each written by `items`.
    fn array(&mut self, items: &'a Plan, json: &'a Json) -> Result<(), ConvertError> {
        let array = json
            .as_array()
            .ok_or_else(|| self.error("expected an array"))?;
        self.block_count(array.len());
        for (index, item) in array.iter().enumerate() {
            self.nested(Segment::Index(index), |writer| {
                writer.value(items, Some(item))
            })?;
        }
        self.end_of_blocks();
        Ok(())
    }

    /// A map: one block of key and value pairs, each value written by `values`.
    fn map(&mut self, values: &'a Plan, json: &'a Json) -> Result<(), ConvertError> {
        let object = json
            .as_object()
            .ok_or_else(|| self.error("expected an object"))?;
        self.block_count(object.len());
        for (key, item) in object {
            write_string(&mut self.out, key);
            self.nested(Segment::Member(key), |writer| {
                writer.value(values, Some(item))
            })?;
        }
        self.end_of_blocks();
        Ok(())
    }

    /// A union takes null when the member is absent or null (`record` lists
    /// the absent ones), otherwise the first branch the value fits; a branch
    /// that fails is unwritten.
    fn union(
        &mut self,
        null_index: Option<u32>,
        variants: &'a [(u32, Plan)],
        json: Option<&'a Json>,
    ) -> Result<(), ConvertError> {
        match (json, null_index) {
            (None | Some(Json::Null), Some(index)) => {
                write_long(&mut self.out, i64::from(index));
                Ok(())
            }
            (None, None) => Err(self.error("required field is missing")),
            (Some(json), _) => {
                let (written, unmapped) = (self.out.len(), self.unmapped.len());
                let (absent, absent_count) = (self.absent.len(), self.absent_count);
                let mut last_error = None;
                for (index, variant) in variants {
                    write_long(&mut self.out, i64::from(*index));
                    match self.value(variant, Some(json)) {
                        Ok(()) => return Ok(()),
                        Err(error) => {
                            self.out.truncate(written);
                            self.unmapped.truncate(unmapped);
                            self.absent.truncate(absent);
                            self.absent_count = absent_count;
                            last_error = Some(error);
                        }
                    }
                }
                Err(last_error.unwrap_or_else(|| self.error("must be null")))
            }
        }
    }

    /// Arrays and maps are written as one block: its count, its items, then
    /// the empty block that ends them (an empty one is the end alone).
    fn block_count(&mut self, len: usize) {
        if len > 0 {
            write_long(&mut self.out, len as i64);
        }
    }

    fn end_of_blocks(&mut self) {
        self.out.push(0);
    }

    fn nested<T>(&mut self, segment: Segment<'a>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(segment);
        let out = f(self);
        self.path.pop();
        out
    }

    fn field_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Index(index) => out.push_str(&format!("[{index}]")),
                Segment::Member(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
            }
        }
        out
    }

    fn pointer_to(&self, member: &str) -> String {
        let mut out = String::new();
        write_pointer(&self.path, member, &mut out);
        out
    }

    /// Lists `member`, which the current object lacks, in `absent_fields`:
    /// its pointer Avro-encoded straight away, through one reused buffer.
    fn note_absent(&mut self, member: &str) {
        let mut pointer = std::mem::take(&mut self.scratch);
        pointer.clear();
        write_pointer(&self.path, member, &mut pointer);
        write_string(&mut self.absent, &pointer);
        self.absent_count += 1;
        self.scratch = pointer;
    }

    fn error(&self, problem: impl Into<String>) -> ConvertError {
        ConvertError {
            field: self.field_path(),
            problem: problem.into(),
        }
    }
}

/// The JSON Pointer (RFC 6901) of `member` under `path`, appended to `out`.
fn write_pointer(path: &[Segment<'_>], member: &str, out: &mut String) {
    use std::fmt::Write as _;
    for segment in path.iter().chain([&Segment::Member(member)]) {
        out.push('/');
        match segment {
            Segment::Index(index) => {
                let _ = write!(out, "{index}");
            }
            Segment::Member(name) => {
                for c in name.chars() {
                    match c {
                        '~' => out.push_str("~0"),
                        '/' => out.push_str("~1"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
}

/// Avro's `long` (and `int`): zig-zag, then 7 bits a byte, low bits first.
fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut zigzag = ((n << 1) ^ (n >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// Avro's `string`: its byte length as a `long`, then its UTF-8 bytes.
fn write_string(out: &mut Vec<u8>, text: &str) {
    write_long(out, text.len() as i64);
    out.extend_from_slice(text.as_bytes());
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

    #[test]
    fn the_delivery_members_are_named_as_unknown_top_level_members_are() {
        let mut pointer = String::new();
        write_pointer(&[], "group_id_ref", &mut pointer);
        assert!(DELIVERY_MEMBERS.contains(&pointer.as_str()), "{pointer}");
    }
    use crate::pipeline::schema::{load_all, SchemaSource};
    use crate::vocabulary::EventKind;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value as Avro;
    use serde_json::json;

    const SMALL: &str = r#"{"type":"record","name":"T","fields":[
        {"name":"id","type":"long"},
        {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-millis"}],"default":null},
        {"name":"any","type":["null","string"],"default":null,"superfone.json":true},
        {"name":"tags","type":["null",{"type":"array","items":{"type":"record","name":"Tag","fields":[{"name":"t","type":"string"}]}}],"default":null},
        {"name":"unmapped_fields_json","type":["null","string"],"default":null}]}"#;

    fn object(value: Json) -> Map<String, Json> {
        value.as_object().unwrap().clone()
    }

    /// Encodes with the converter and reads the datum back with apache-avro's
    /// own decoder, which must consume it exactly.
    fn round_trip(schema: &Schema, payload: Json) -> Result<Vec<(String, Avro)>, ConvertError> {
        let framed = Converter::new(schema.clone()).encode(42, &object(payload))?;
        assert_eq!(framed[..5], [WIRE_MAGIC_BYTE, 0, 0, 0, 42]);
        let mut datum = &framed[5..];
        let value = GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut datum)
            .unwrap();
        assert!(
            datum.is_empty(),
            "{} bytes left after the record",
            datum.len()
        );
        let Avro::Record(fields) = value else {
            panic!("record expected, got {value:?}")
        };
        Ok(fields)
    }

    fn small(payload: Json) -> Result<Vec<(String, Avro)>, ConvertError> {
        round_trip(&Schema::parse_str(SMALL).unwrap(), payload)
    }

    fn some(value: Avro) -> Avro {
        Avro::Union(1, Box::new(value))
    }

    fn unmapped_json(fields: &[(String, Avro)]) -> Option<Json> {
        let (_, value) = fields.iter().find(|(name, _)| name == UNMAPPED_FIELD)?;
        match value {
            Avro::Union(0, _) => None,
            Avro::Union(1, text) => match text.as_ref() {
                Avro::String(text) => Some(serde_json::from_str(text).unwrap()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wire_format_is_magic_id_then_datum() {
        let converter = Converter::new(
            Schema::parse_str(
                r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"},{"name":"s","type":"string"}]}"#,
            )
            .unwrap(),
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
        let fields = small(json!({
            "id": 7, "at": "2026-05-15T10:30:08.000Z", "any": {"id": 10},
            "tags": [{"t": "x", "colour": "red"}], "new_field": [1, 2]
        }))
        .unwrap();
        assert_eq!(fields[0].1, Avro::Long(7));
        assert_eq!(fields[1].1, some(Avro::TimestampMillis(1_778_841_008_000)));
        assert_eq!(fields[2].1, some(Avro::String(r#"{"id":10}"#.into())));
        let tag = Avro::Record(vec![("t".into(), Avro::String("x".into()))]);
        assert_eq!(fields[3].1, some(Avro::Array(vec![tag])));
        assert_eq!(
            unmapped_json(&fields),
            Some(json!({"/tags/0/colour": "red", "/new_field": [1, 2]}))
        );
    }

    /// The unmapped field is written where the schema puts it, even when
    /// fields follow it, and a payload member of that name is itself kept
    /// as unmapped rather than trusted.
    #[test]
    fn the_unmapped_field_may_sit_anywhere_in_the_record() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"U","fields":[
            {"name":"a","type":"long"},
            {"name":"unmapped_fields_json","type":["null","string"],"default":null},
            {"name":"z","type":"string"}]}"#,
        )
        .unwrap();
        let fields = round_trip(
            &schema,
            json!({"a": -3, "z": "last", "extra": {"k": 1}, "unmapped_fields_json": "x"}),
        )
        .unwrap();
        assert_eq!(fields[0].1, Avro::Long(-3));
        assert_eq!(fields[2].1, Avro::String("last".into()));
        assert_eq!(
            unmapped_json(&fields),
            Some(json!({"/extra": {"k": 1}, "/unmapped_fields_json": "x"}))
        );
        let fields = round_trip(&schema, json!({"a": 1, "z": ""})).unwrap();
        assert_eq!(unmapped_json(&fields), None);
    }

    /// A union branch that fails half-way leaves nothing behind: neither
    /// its bytes nor the unknown members it had found.
    #[test]
    fn a_union_branch_that_fails_is_unwritten() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"B","fields":[
            {"name":"f","superfone.json":true,"type":["null",
                {"type":"record","name":"P","fields":[
                    {"name":"inner","type":{"type":"record","name":"Q","fields":[{"name":"q","type":"long"}]}},
                    {"name":"b","type":"long"}]},
                {"type":"map","values":"string"}]},
            {"name":"unmapped_fields_json","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        let fields = round_trip(
            &schema,
            json!({"f": {"inner": {"q": 1, "zz": 2}, "b": "x"}}),
        )
        .unwrap();
        let Avro::Union(2, map) = &fields[0].1 else {
            panic!("the map branch expected, got {:?}", fields[0].1)
        };
        let Avro::Map(map) = map.as_ref() else {
            panic!("{map:?}")
        };
        assert_eq!(map["inner"], Avro::String(r#"{"q":1,"zz":2}"#.into()));
        assert_eq!(map["b"], Avro::String(r#""x""#.into()));
        assert_eq!(unmapped_json(&fields), None);

        let fields =
            round_trip(&schema, json!({"f": {"inner": {"q": 1, "zz": 2}, "b": 5}})).unwrap();
        assert!(matches!(fields[0].1, Avro::Union(1, _)));
        assert_eq!(unmapped_json(&fields), Some(json!({"/f/inner/zz": 2})));
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let err = small(json!({"id": 1, "at": "yesterday"})).unwrap_err();
        assert_eq!(err.field, "at");
        let err = small(json!({"at": null})).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            ("id", "required field is missing")
        );
        let err = small(json!({"id": 1, "tags": [{"t": 5}]})).unwrap_err();
        assert_eq!(err.field, "tags[0].t");
        let err = small(json!({"id": 1.5})).unwrap_err();
        assert_eq!(err.field, "id");
    }

    #[test]
    fn absent_and_null_optionals_are_null_and_whole_floats_are_integers() {
        let fields = small(json!({"id": 142.0, "any": null})).unwrap();
        assert_eq!(fields[0].1, Avro::Long(142));
        assert!(fields[1..]
            .iter()
            .all(|(_, v)| *v == Avro::Union(0, Box::new(Avro::Null))));
    }

    const WITH_ABSENT: &str = r#"{"type":"record","name":"A","fields":[
        {"name":"id","type":"long"},
        {"name":"a","type":["null","string"],"default":null},
        {"name":"rec","type":["null",{"type":"record","name":"R","fields":[
            {"name":"x","type":["null","long"],"default":null},
            {"name":"y","type":"long"}]}],"default":null},
        {"name":"tags","type":["null",{"type":"array","items":{"type":"record","name":"Tag","fields":[
            {"name":"t","type":"string"},
            {"name":"t2","type":["null","string"],"default":null}]}}],"default":null},
        {"name":"unmapped_fields_json","type":["null","string"],"default":null},
        {"name":"absent_fields","type":{"type":"array","items":"string"},"default":[]}]}"#;

    fn absent_fields(fields: &[(String, Avro)]) -> Vec<String> {
        let (_, value) = fields
            .iter()
            .find(|(name, _)| name == ABSENT_FIELD)
            .expect("absent_fields written");
        let Avro::Array(items) = value else {
            panic!("{value:?}")
        };
        items
            .iter()
            .map(|item| match item {
                Avro::String(text) => text.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Absent is not null: a nullable member the payload did not have is
    /// listed by its JSON Pointer, at any depth; one sent as `null` is not.
    /// The unmapped and absent fields themselves are never listed, and a
    /// member of either name in the payload is unknown.
    #[test]
    fn absent_nullable_members_are_listed_and_explicit_nulls_are_not() {
        let schema = Schema::parse_str(WITH_ABSENT).unwrap();
        let fields = round_trip(&schema, json!({"id": 1})).unwrap();
        assert_eq!(absent_fields(&fields), ["/a", "/rec", "/tags"]);
        let fields = round_trip(
            &schema,
            json!({"id": 1, "a": null, "rec": {"y": 2}, "tags": [{"t": "x", "t2": null}, {"t": "y"}]}),
        )
        .unwrap();
        assert_eq!(fields[1].1, Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(absent_fields(&fields), ["/rec/x", "/tags/1/t2"]);
        let fields = round_trip(
            &schema,
            json!({"id": 1, "a": "z", "rec": null, "tags": null, "absent_fields": ["/a"]}),
        )
        .unwrap();
        assert!(absent_fields(&fields).is_empty());
        assert_eq!(
            unmapped_json(&fields),
            Some(json!({"/absent_fields": ["/a"]}))
        );
    }

    /// A union branch that fails leaves none of its absent members behind.
    #[test]
    fn a_failed_union_branch_lists_no_absent_members() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"F","fields":[
            {"name":"f","superfone.json":true,"type":["null",
                {"type":"record","name":"P","fields":[
                    {"name":"opt","type":["null","long"],"default":null},
                    {"name":"b","type":"long"}]},
                {"type":"map","values":"string"}]},
            {"name":"absent_fields","type":{"type":"array","items":"string"},"default":[]}]}"#,
        )
        .unwrap();
        let fields = round_trip(&schema, json!({"f": {"b": "not a long"}})).unwrap();
        assert!(
            matches!(fields[0].1, Avro::Union(2, _)),
            "{:?}",
            fields[0].1
        );
        assert!(absent_fields(&fields).is_empty());
        let fields = round_trip(&schema, json!({"f": {"b": 1}})).unwrap();
        assert_eq!(absent_fields(&fields), ["/f/opt"]);
    }

    /// The docs' CUSTOMER_CHANGE carries only some of the lead's fields: a
    /// payload without `contact_emails` and one with `"contact_emails": null`
    /// encode differently.
    #[test]
    fn customer_change_without_emails_differs_from_null_emails() {
        let schemas = load_all(&SchemaSource::Embedded).unwrap();
        let schema = &schemas[EventKind::CustomerChange as usize].schema;
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/customer_change.json");
        let mut payload: Json = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        payload.as_object_mut().unwrap().remove("contact_emails");
        let without = round_trip(schema, payload.clone()).unwrap();
        payload["contact_emails"] = Json::Null;
        let with_null = round_trip(schema, payload).unwrap();
        assert!(absent_fields(&without).contains(&"/contact_emails".to_owned()));
        assert!(!absent_fields(&with_null).contains(&"/contact_emails".to_owned()));
    }

    /// Every vendor fixture encodes to a datum apache-avro reads back whole,
    /// with the fixture's values in it and nothing left unmapped.
    #[test]
    fn every_fixture_encodes_to_a_datum_avro_reads_back() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for event in load_all(&SchemaSource::Embedded).unwrap() {
            let path = fixtures.join(format!("{}.json", event.kind.slug()));
            let payload: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let fields = round_trip(&event.schema, payload.clone())
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert_eq!(unmapped_json(&fields), None, "{}", path.display());
            let mut strings_compared = 0;
            for (name, value) in &fields {
                let value = match value {
                    Avro::Union(_, inner) => inner.as_ref(),
                    other => other,
                };
                if let (Avro::String(text), Some(expected)) =
                    (value, payload.get(name).and_then(Json::as_str))
                {
                    // `updated_value` holds any JSON, as its JSON text.
                    let expected = match name.as_str() {
                        "updated_value" => Json::from(expected).to_string(),
                        _ => expected.to_owned(),
                    };
                    assert_eq!(*text, expected, "{name} in {}", path.display());
                    strings_compared += 1;
                }
            }
            assert!(strings_compared > 3, "{}", path.display());
            let event_name = fields
                .iter()
                .find(|(name, _)| name == "event")
                .map(|f| &f.1);
            assert_eq!(
                event_name,
                Some(&Avro::String(event.kind.as_str().into())),
                "{}",
                path.display()
            );
        }
    }
}
