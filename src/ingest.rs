//! One delivery, start to finish: route -> auth -> read body -> parse ->
//! dispatch on `event` -> convert to Avro -> publish -> answer. Bad input goes
//! to the dead-letter topic unchanged; nothing is answered 2xx before the
//! broker acknowledged it.

use crate::auth::Authenticator;
use crate::convert::Converter;
use crate::dead_letter::Rejection;
use crate::event::{self, EventKind};
use crate::kafka::{OutgoingRecord, PublishError, Publisher};
use crate::response::{Outcome, RecordRef};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use serde_json::Value;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{field, Instrument};

/// Content type of the Avro records: Confluent-framed Avro binary.
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.confluent.avro";
pub const EVENT_HEADER: &str = "superfone-event";
pub const GROUP_ID_HEADER: &str = "superfone-group-id";
pub const RECEIVED_AT_HEADER: &str = "superfone-received-at";
pub const SCHEMA_ID_HEADER: &str = "superfone-schema-id";

/// Everything the bridge knows about publishing one event type.
#[derive(Debug)]
pub struct EventRoute {
    pub kind: EventKind,
    pub topic: String,
    pub schema_id: u32,
    pub converter: Converter,
}

/// The limits and names a delivery needs from the config.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub ingest_path: String,
    pub max_body_bytes: usize,
    pub group_id_header: HeaderName,
    pub dead_letter_topic: String,
}

pub struct Ingest {
    settings: IngestSettings,
    auth: Authenticator,
    routes: Vec<EventRoute>,
    publisher: Arc<Publisher>,
}

/// What a delivery carries besides its body.
struct Envelope {
    group_id: Option<String>,
    received_at: String,
    content_type: String,
}

impl Ingest {
    /// `routes` must hold one route per event, in `EventKind::ALL` order.
    pub fn new(
        settings: IngestSettings,
        auth: Authenticator,
        routes: Vec<EventRoute>,
        publisher: Arc<Publisher>,
    ) -> Self {
        assert!(
            routes.iter().map(|r| r.kind).eq(EventKind::ALL),
            "one route per event, in order"
        );
        Ingest {
            settings,
            auth,
            routes,
            publisher,
        }
    }

    fn route(&self, kind: EventKind) -> &EventRoute {
        &self.routes[kind as usize]
    }

    /// Answers one HTTP request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let span = tracing::info_span!(
            "delivery",
            group_id = field::Empty,
            event = field::Empty,
            status = field::Empty
        );
        let outcome = self.deliver(request).instrument(span.clone()).await;
        span.record("status", outcome.status().as_u16());
        outcome.into_response()
    }

    async fn deliver<B>(&self, request: Request<B>) -> Outcome
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if request.uri().path() != self.settings.ingest_path {
            return Outcome::NotFound {
                error: format!(
                    "no such path; Superfone notifications go to {}",
                    self.settings.ingest_path
                ),
            };
        }
        if request.method() != Method::POST {
            return Outcome::MethodNotAllowed {
                error: "only POST is accepted".into(),
            };
        }
        if let Err(error) = self.auth.check(request.headers()) {
            tracing::warn!(%error, "rejected unauthenticated request");
            return Outcome::Unauthorized {
                error: error.to_string(),
            };
        }
        let limit = self.settings.max_body_bytes;
        let too_large = || Outcome::PayloadTooLarge {
            error: format!("body exceeds the {limit}-byte limit"),
            limit_bytes: limit,
        };
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > limit as u64) {
            return too_large();
        }
        let header_text = |name: &HeaderName| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let envelope = Envelope {
            group_id: header_text(&self.settings.group_id_header),
            received_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            content_type: header_text(&CONTENT_TYPE).unwrap_or_else(|| "application/json".into()),
        };
        let body = match Limited::new(request.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Err(error) => {
                return Outcome::BadRequest {
                    error: format!("cannot read the request body: {error}"),
                }
            }
        };
        self.deliver_body(envelope, body).await
    }

    async fn deliver_body(&self, envelope: Envelope, body: Bytes) -> Outcome {
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(error) => {
                let group_id = envelope.group_id.clone().unwrap_or_else(new_group_id);
                return self
                    .dead_letter(
                        Rejection::invalid_json(&error),
                        &envelope,
                        group_id,
                        None,
                        &body,
                    )
                    .await;
            }
        };
        let object = parsed.as_object();
        let group_id = envelope
            .group_id
            .clone()
            .or_else(|| object.and_then(event::body_group_id).map(str::to_owned))
            .unwrap_or_else(new_group_id);
        tracing::Span::current().record("group_id", group_id.as_str());
        let key = object.and_then(event::record_key);
        let kind = match event::dispatch(&parsed) {
            Ok(kind) => kind,
            Err(error) => {
                return self
                    .dead_letter(error.into(), &envelope, group_id, key.as_deref(), &body)
                    .await
            }
        };
        tracing::Span::current().record("event", kind.as_str());
        let object = object.expect("dispatch accepted an object");
        let route = self.route(kind);
        let payload = match route.converter.encode(route.schema_id, object) {
            Ok(payload) => payload,
            Err(error) => {
                let rejection = Rejection::conversion(kind, error);
                return self
                    .dead_letter(rejection, &envelope, group_id, key.as_deref(), &body)
                    .await;
            }
        };
        let headers = vec![
            (EVENT_HEADER, kind.as_str().to_owned()),
            (GROUP_ID_HEADER, group_id.clone()),
            (RECEIVED_AT_HEADER, envelope.received_at.clone()),
            ("content-type", AVRO_CONTENT_TYPE.to_owned()),
            (SCHEMA_ID_HEADER, route.schema_id.to_string()),
        ];
        let record = OutgoingRecord {
            topic: &route.topic,
            key: key.as_deref(),
            payload: &payload,
            headers,
        };
        match self.publisher.publish(record).await {
            Ok(delivered) => {
                tracing::info!(
                    topic = %route.topic,
                    partition = delivered.partition,
                    offset = delivered.offset,
                    "published"
                );
                Outcome::Published {
                    event: kind.as_str(),
                    topic: route.topic.clone(),
                    partition: delivered.partition,
                    offset: delivered.offset,
                    schema_id: route.schema_id,
                    group_id,
                }
            }
            Err(error) => unavailable(&error, group_id),
        }
    }

    /// Publishes the body unchanged to the dead-letter topic, with headers
    /// saying why; answers 400/422 once the broker acknowledged it.
    async fn dead_letter(
        &self,
        rejection: Rejection,
        envelope: &Envelope,
        group_id: String,
        key: Option<&str>,
        body: &[u8],
    ) -> Outcome {
        let mut headers = vec![
            (GROUP_ID_HEADER, group_id.clone()),
            (RECEIVED_AT_HEADER, envelope.received_at.clone()),
            ("content-type", envelope.content_type.clone()),
        ];
        if let Some(kind) = rejection.event {
            headers.push((EVENT_HEADER, kind.as_str().to_owned()));
        }
        headers.extend(rejection.headers());
        let record = OutgoingRecord {
            topic: &self.settings.dead_letter_topic,
            key,
            payload: body,
            headers,
        };
        match self.publisher.publish(record).await {
            Ok(delivered) => {
                tracing::warn!(
                    reason = rejection.reason.as_str(),
                    field = rejection.field.as_deref().unwrap_or(""),
                    error = %rejection.error,
                    partition = delivered.partition,
                    offset = delivered.offset,
                    "dead-lettered"
                );
                let dead_letter = RecordRef {
                    topic: self.settings.dead_letter_topic.clone(),
                    partition: delivered.partition,
                    offset: delivered.offset,
                };
                Outcome::dead_lettered(rejection, group_id, dead_letter)
            }
            Err(error) => unavailable(&error, group_id),
        }
    }
}

fn unavailable(error: &PublishError, group_id: String) -> Outcome {
    tracing::error!(%error, "event NOT stored: Kafka did not acknowledge it");
    Outcome::Unavailable {
        error: "the event could not be stored; see the bridge's logs for this group_id",
        group_id,
    }
}

fn new_group_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
