//! One route per event: its topic, its schema in the registry and its
//! converter, and how a payload becomes that event's whole Kafka record.

use crate::config::Config;
use crate::pipeline::convert::{ConvertError, Converter};
use crate::pipeline::event;
use crate::pipeline::recording_link;
use crate::pipeline::registry::{RegistryError, SchemaIds, Subject};
use crate::pipeline::schema::{self, EventSchema, SchemaError, SchemaSource};
use crate::vocabulary::headers::{
    AVRO_CONTENT_TYPE, CONTENT_TYPE_HEADER, DEDUP_KEY_HEADER, EVENT_HEADER, GROUP_ID_HEADER,
    RECEIVED_AT_HEADER, RECORDING_URL_EXPIRES_AT_HEADER,
};
use crate::vocabulary::{EventKind, Record};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Everything the bridge knows about publishing one event type.
#[derive(Debug)]
pub struct EventRoute {
    pub kind: EventKind,
    pub topic: String,
    /// The event's schema in the registry; its id may not be known yet.
    pub schema: Arc<Subject>,
    pub converter: Converter,
}

impl EventRoute {
    /// The whole record of one event: the converted payload, the lead's key
    /// and the event headers (the dedup key among them). A delivery builds
    /// the same pieces one by one, to trace and dedup between them.
    pub fn record(
        &self,
        object: &serde_json::Map<String, Value>,
        group_id: &str,
        received_at: &str,
    ) -> Result<Record, ConvertError> {
        let (schema_id, schema_header) = self.schema.schema_header();
        let payload = self.converter.encode(schema_id, object)?;
        let dedup_key = event::dedup_key(self.kind, object);
        Ok(Record {
            topic: self.topic.clone(),
            key: event::record_key(object),
            headers: event_headers(
                self.kind,
                object,
                group_id,
                received_at,
                schema_header,
                &dedup_key.key,
            ),
            payload,
        })
    }
}

/// The headers of an event record (docs/kafka-contract.md, "Headers"); a
/// recording event's also say when its link expires.
pub fn event_headers(
    kind: EventKind,
    object: &serde_json::Map<String, Value>,
    group_id: &str,
    received_at: &str,
    schema_header: (String, String),
    dedup_key: &str,
) -> Vec<(String, String)> {
    let mut headers = vec![
        (EVENT_HEADER.into(), kind.as_str().into()),
        (GROUP_ID_HEADER.into(), group_id.into()),
        (RECEIVED_AT_HEADER.into(), received_at.into()),
        (CONTENT_TYPE_HEADER.into(), AVRO_CONTENT_TYPE.into()),
        schema_header,
        (DEDUP_KEY_HEADER.into(), dedup_key.into()),
    ];
    let link = object.get("cdr_recording_url").and_then(Value::as_str);
    let expires_at = link.and_then(|link| recording_link::link_expiry(link, Some(received_at)));
    if let (EventKind::CdrRecordingAvailable, Some(at)) = (kind, expires_at) {
        headers.push((
            RECORDING_URL_EXPIRES_AT_HEADER.into(),
            recording_link::rfc3339(at),
        ));
    }
    headers
}

/// One route per event, in `EventKind::ALL` order: its topic, converter and
/// registry subject.
pub fn routes(config: &Config, schemas: Vec<EventSchema>, ids: &SchemaIds) -> Vec<EventRoute> {
    schemas
        .into_iter()
        .zip(ids.subjects())
        .map(|(schema, subject)| EventRoute {
            kind: schema.kind,
            topic: config.topics.topic_for(schema.kind),
            schema: Arc::clone(subject),
            converter: Converter::for_event(schema.kind, schema.schema),
        })
        .collect()
}

/// Loads the ten schemas and registers them (or looks them up): one route per
/// event, every id known. For the tools (`dead-letter replay`, the bench),
/// which need the registry now.
pub async fn event_routes(config: &Config) -> Result<Vec<EventRoute>, RouteError> {
    let schemas = schema::load_all(&SchemaSource::of(&config.registry))?;
    let ids = SchemaIds::new(&config.registry, &config.topics, &schemas, None);
    ids.register_pending().await?;
    Ok(routes(config, schemas, &ids))
}
