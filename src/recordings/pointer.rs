//! The pointer record: what became of one recording, as Avro under
//! `schemas/recording_copy.avsc`, registered like the event schemas and
//! published on `<prefix>recording_copies`, keyed like its recording event
//! and carrying its group id and trace.

use crate::config::Config;
use crate::pipeline::convert::{ConvertError, Converter};
use crate::pipeline::registry::{self, RegistryError};
use crate::vocabulary::headers::{
    AVRO_CONTENT_TYPE, CONTENT_TYPE_HEADER, EVENT_HEADER, GROUP_ID_HEADER, SCHEMA_ID_HEADER,
};
use crate::vocabulary::Record;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

/// The schema of the pointer records.
pub const RECORDING_COPY_SCHEMA: &str = include_str!("../../schemas/recording_copy.avsc");
const RECORDING_COPY_NAME: &str = "com.superfone.bridge.RecordingCopy";
/// `superfone-event` of a pointer record: it is no Superfone event.
pub const RECORDING_COPY_EVENT: &str = "RECORDING_COPY";

/// How a recording's copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStatus {
    Stored,
    /// The link died before a copy succeeded.
    Expired,
    /// Not allowed: scheme, host, address, or size.
    Refused,
    /// Gave up for another reason, after retries up to the expiry.
    Failed,
}

impl CopyStatus {
    pub const ALL: [CopyStatus; 4] = [
        CopyStatus::Stored,
        CopyStatus::Expired,
        CopyStatus::Refused,
        CopyStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Stored => "stored",
            CopyStatus::Expired => "expired",
            CopyStatus::Refused => "refused",
            CopyStatus::Failed => "failed",
        }
    }
}

/// One recording's terminal outcome: the fields of its pointer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub status: CopyStatus,
    pub cdr_id: Option<i64>,
    pub cdr_uuid: Option<String>,
    pub contact_id: Option<i64>,
    pub object_url: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub source_url_expires_at: Option<OffsetDateTime>,
    pub stored_at: Option<OffsetDateTime>,
    pub error: Option<String>,
}

/// Builds pointer records: the topic, and the schema with its registry id.
pub struct PointerRecords {
    topic: String,
    converter: Converter,
    schema_id: u32,
}

impl PointerRecords {
    /// Registers the pointer schema (or looks it up, with auto-registration
    /// off) under `<topic>-value`, its record name or `<topic>-<record name>`, as the config's
    /// subject strategy says.
    pub async fn register(config: &Config) -> Result<PointerRecords, RegistryError> {
        let topic = config.topics.recording_copies_topic();
        let subject = registry::subject_name(
            config.registry.subject_strategy,
            &topic,
            RECORDING_COPY_NAME,
        );
        let schema_id = registry::register_one(
            &config.registry,
            &subject,
            RECORDING_COPY_NAME,
            RECORDING_COPY_SCHEMA,
        )
        .await?;
        Ok(PointerRecords::new(topic, schema_id))
    }

    pub fn new(topic: String, schema_id: u32) -> PointerRecords {
        let schema = apache_avro::Schema::parse_str(RECORDING_COPY_SCHEMA)
            .expect("schemas/recording_copy.avsc is a valid Avro schema");
        PointerRecords {
            topic,
            converter: Converter::new(schema),
            schema_id,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The pointer record of `report`, keyed `key` (the recording event's
    /// key), with the event's group id and the trace context headers.
    pub fn record(
        &self,
        report: &CopyReport,
        key: Option<String>,
        group_id: &str,
        trace_headers: Vec<(String, String)>,
    ) -> Result<Record, ConvertError> {
        let payload = self.converter.encode(self.schema_id, &fields(report))?;
        let mut headers = vec![
            (EVENT_HEADER.to_owned(), RECORDING_COPY_EVENT.to_owned()),
            (GROUP_ID_HEADER.to_owned(), group_id.to_owned()),
            (CONTENT_TYPE_HEADER.to_owned(), AVRO_CONTENT_TYPE.to_owned()),
            (SCHEMA_ID_HEADER.to_owned(), self.schema_id.to_string()),
        ];
        headers.extend(trace_headers);
        Ok(Record {
            topic: self.topic.clone(),
            key,
            headers,
            payload,
        })
    }
}

fn fields(report: &CopyReport) -> Map<String, Value> {
    let at = |at: Option<OffsetDateTime>| at.map(crate::pipeline::recording_link::rfc3339);
    let value = json!({
        "status": report.status.as_str(),
        "cdr_id": report.cdr_id,
        "cdr_uuid": report.cdr_uuid,
        "contact_id": report.contact_id,
        "object_url": report.object_url,
        "bytes": report.bytes,
        "sha256": report.sha256,
        "content_type": report.content_type,
        "source_url_expires_at": at(report.source_url_expires_at),
        "stored_at": at(report.stored_at),
        "error": report.error,
    });
    match value {
        Value::Object(fields) => fields,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;
    use time::macros::datetime;

    fn decode(payload: &[u8]) -> Vec<(String, Avro)> {
        assert_eq!(payload[0], 0, "Confluent magic byte");
        assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), 42);
        let schema = apache_avro::Schema::parse_str(RECORDING_COPY_SCHEMA).unwrap();
        let mut datum = &payload[5..];
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut datum)
            .unwrap();
        assert!(datum.is_empty(), "the record is read whole");
        match value {
            Avro::Record(fields) => fields,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn a_stored_copy_becomes_a_pointer_record_that_decodes_back() {
        let pointers = PointerRecords::new("superfone.recording_copies".into(), 42);
        let report = CopyReport {
            status: CopyStatus::Stored,
            cdr_id: Some(9_876_543),
            cdr_uuid: Some("c0ffee".into()),
            contact_id: None,
            object_url: Some("s3://bucket/2026/05/15/9876543.mp3".into()),
            bytes: Some(1234),
            sha256: Some("ab".repeat(32)),
            content_type: Some("audio/mpeg".into()),
            source_url_expires_at: Some(datetime!(2026-05-22 10:30:00 UTC)),
            stored_at: Some(datetime!(2026-05-15 10:31:00.5 UTC)),
            error: None,
        };
        let record = pointers
            .record(&report, Some("12345".into()), "g-1", Vec::new())
            .unwrap();
        assert_eq!(record.topic, "superfone.recording_copies");
        assert_eq!(record.key.as_deref(), Some("12345"));
        assert_eq!(record.header(GROUP_ID_HEADER), Some("g-1"));
        assert_eq!(record.header(SCHEMA_ID_HEADER), Some("42"));
        let fields = decode(&record.payload);
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(field("status"), Avro::String("stored".into()));
        assert_eq!(
            field("cdr_id"),
            Avro::Union(1, Box::new(Avro::Long(9_876_543)))
        );
        assert_eq!(field("contact_id"), Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(
            field("stored_at"),
            Avro::Union(1, Box::new(Avro::TimestampMillis(1_778_841_060_500)))
        );
        assert_eq!(field("error"), Avro::Union(0, Box::new(Avro::Null)));
    }
}
