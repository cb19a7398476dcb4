//! Avro `Value` -> JSON, the reverse of `convert` for people reading a topic:
//! unions become their value, `timestamp-millis` an RFC 3339 string, bytes
//! base16. Used by `superfone-bridge tail`.

use apache_avro::types::Value as Avro;
use serde_json::{Map, Value as Json};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn to_json(value: &Avro) -> Json {
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(n) => Json::from(*n),
        Avro::Long(n) => Json::from(*n),
        Avro::Float(n) => Json::from(*n as f64),
        Avro::Double(n) => Json::from(*n),
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            Json::String(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
        }
        Avro::Union(_, inner) => to_json(inner),
        Avro::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Avro::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Avro::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Avro::TimestampMillis(millis) => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(*millis) * 1_000_000)
                .ok()
                .and_then(|instant| instant.format(&Rfc3339).ok())
                .map(Json::String)
                .unwrap_or_else(|| Json::from(*millis))
        }
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_unions_and_timestamps_read_naturally() {
        let value = Avro::Record(vec![
            ("id".into(), Avro::Long(7)),
            (
                "at".into(),
                Avro::Union(1, Box::new(Avro::TimestampMillis(1_778_841_008_000))),
            ),
            ("none".into(), Avro::Union(0, Box::new(Avro::Null))),
            ("tags".into(), Avro::Array(vec![Avro::String("a".into())])),
        ]);
        assert_eq!(
            to_json(&value),
            json!({"id": 7, "at": "2026-05-15T10:30:08Z", "none": null, "tags": ["a"]})
        );
    }
}
