//! One delivery, start to finish: route -> auth -> read body (within the
//! memory budget) -> parse -> dispatch on `event` -> convert to Avro ->
//! publish -> answer. Bad input goes to the dead-letter topic unchanged;
//! nothing is answered 2xx before the broker acknowledged it.

use crate::config::Config;
use crate::durability::dedup::{Claim, Dedup};
use crate::durability::delivery::{Delivery, Durable, RecordRef};
use crate::durability::spool::SpoolError;
use crate::durability::startup::{Check, StartupGate};
use crate::http::auth::Authenticator;
use crate::http::body::{self, BodyBudget, BodyError, Reservation};
use crate::http::notification;
use crate::http::response::Outcome;
use crate::observe::telemetry::{self, DeliveryTrace};
use crate::pipeline::dead_letter::Rejection;
use crate::pipeline::event::{self, DedupKey};
use crate::pipeline::route::{event_headers, EventRoute};
use crate::vocabulary::headers::{EVENT_HEADER, GROUP_ID_HEADER, RECEIVED_AT_HEADER};
use crate::vocabulary::{EventKind, Record};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderName, InvalidHeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use serde_json::Value;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{field, Instrument};

/// The limits and names a delivery needs from the config.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub ingest_path: String,
    pub max_body_bytes: usize,
    pub group_id_header: HeaderName,
    pub dead_letter_topic: String,
    pub body_read_timeout: std::time::Duration,
    /// Request headers copied onto the record (`ingest.forward_headers`).
    pub forward_headers: Vec<HeaderName>,
}

impl IngestSettings {
    /// The settings `config` gives (`[server]`, `[delivery]`, `[topics]`).
    /// Fails on a `server.group_id_header` (or a forwarded header) that is
    /// no header name, which `Config::validate` refuses first.
    pub fn of(config: &Config) -> Result<Self, InvalidHeaderName> {
        Ok(IngestSettings {
            ingest_path: config.server.ingest_path.clone(),
            max_body_bytes: config.server.max_body_bytes,
            group_id_header: config.server.group_id_header.parse()?,
            dead_letter_topic: config.topics.dead_letter_topic(),
            body_read_timeout: config.delivery.body_read_timeout_ms,
            forward_headers: config
                .ingest
                .forward_headers
                .iter()
                .map(|name| name.parse())
                .collect::<Result<_, _>>()?,
        })
    }
}

pub struct Ingest {
    settings: IngestSettings,
    auth: Arc<Authenticator>,
    routes: Vec<EventRoute>,
    delivery: Arc<Delivery>,
    dedup: Option<Dedup>,
    body_budget: Arc<BodyBudget>,
    startup: Arc<StartupGate>,
}

/// What a delivery carries besides its body.
struct Envelope {
    /// When the request's body was in: the ack deadline counts from here.
    arrived: std::time::Instant,
    group_id: Option<String>,
    received_at: String,
    /// The request's Content-Type, if it had one.
    content_type: Option<String>,
    /// The notification named by the path, if any.
    notification: Option<String>,
    /// Which notification sent it, and the forwarded request headers: on
    /// the record, and on its dead letter.
    origin_headers: Vec<(String, String)>,
    trace: DeliveryTrace,
}

/// An event ready to publish: its record, and what the dedup and the answer
/// need. The body and its parsed tree are gone by then.
struct Prepared {
    kind: EventKind,
    record: Record,
    dedup_key: DedupKey,
    /// The schema id the record was encoded with (0: not registered yet).
    schema_id: u32,
    group_id: String,
}

impl Ingest {
    /// `routes` must hold one route per event, in `EventKind::ALL` order.
    pub fn new(
        settings: IngestSettings,
        auth: Arc<Authenticator>,
        routes: Vec<EventRoute>,
        delivery: Arc<Delivery>,
        dedup: Option<Dedup>,
        body_budget: Arc<BodyBudget>,
        startup: Arc<StartupGate>,
    ) -> Self {
        assert!(
            routes.iter().map(|r| r.kind).eq(EventKind::ALL),
            "one route per event, in order"
        );
        Ingest {
            settings,
            auth,
            routes,
            delivery,
            dedup,
            body_budget,
            startup,
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
            telemetry::DELIVERY_SPAN,
            otel.kind = "server",
            otel.status_code = field::Empty,
            http.request.method = %request.method(),
            http.route = %self.settings.ingest_path,
            http.response.status_code = field::Empty,
            superfone.group_id = field::Empty,
            superfone.notification = field::Empty,
            superfone.event = field::Empty,
            superfone.contact_id = field::Empty,
            superfone.dedup_key = field::Empty,
            superfone.schema_id = field::Empty,
            superfone.registry.cached = field::Empty,
            superfone.outcome = field::Empty,
            superfone.error = field::Empty,
            trace_id = field::Empty,
        );
        let trace = DeliveryTrace::start(&span, request.headers());
        let trace_id = trace.trace_id();
        if let Some(trace_id) = &trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        let started = std::time::Instant::now();
        let in_flight = metrics::gauge!(crate::observe::metrics::IN_FLIGHT);
        in_flight.increment(1.0);
        let path = request.uri().path();
        let notification = notification::notification_in_path(&self.settings.ingest_path, path)
            .map(|name| name.map(str::to_owned));
        if let Ok(Some(name)) = &notification {
            span.record("superfone.notification", name.as_str());
        }
        let outcome = match &notification {
            Ok(name) => {
                let deliver = self.deliver(request, name.clone(), trace);
                deliver.instrument(span.clone()).await
            }
            Err(notification::OtherPath) => Outcome::NotFound {
                error: format!(
                    "no such path; Superfone notifications go to {0} or {0}/<name>, \
                     a name being 1 to 64 of a-z, 0-9 and -",
                    self.settings.ingest_path
                ),
            },
        };
        in_flight.decrement(1.0);
        span.record("http.response.status_code", outcome.status().as_u16());
        span.record("superfone.outcome", outcome.name());
        if outcome.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        crate::observe::metrics::record_request(
            outcome
                .event()
                .unwrap_or(crate::observe::metrics::UNKNOWN_EVENT),
            outcome.name(),
            started.elapsed(),
        );
        outcome.into_response(trace_id, notification.ok().flatten().as_deref())
    }

    /// One request to the ingest path, sent by `notification` when its
    /// path named one.
    async fn deliver<B>(
        &self,
        request: Request<B>,
        notification: Option<String>,
        trace: DeliveryTrace,
    ) -> Outcome
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
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
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > limit as u64) {
            return too_large(limit);
        }
        let header_text = |name: &HeaderName| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let mut envelope = Envelope {
            arrived: std::time::Instant::now(),
            group_id: header_text(&self.settings.group_id_header),
            received_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            content_type: header_text(&CONTENT_TYPE),
            origin_headers: notification::delivery_headers(
                notification.as_deref(),
                request.headers(),
                &self.settings.forward_headers,
            ),
            notification,
            trace,
        };
        // Held until the answer: the delivery's memory is counted until then.
        let (body, _reservation) = match self.read_body(request.into_body(), declared_length).await
        {
            Ok(read) => read,
            Err(outcome) => return outcome,
        };
        // The ack deadline counts from here: the body read has a timeout of
        // its own (it may have waited for the memory budget).
        envelope.arrived = std::time::Instant::now();
        self.deliver_body(envelope, body).await
    }

    /// Reserves room for the body in the memory budget, then reads it; both
    /// within the body-read timeout.
    async fn read_body<B>(
        &self,
        request_body: B,
        declared_length: Option<u64>,
    ) -> Result<(Bytes, Reservation), Outcome>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limit = self.settings.max_body_bytes;
        let timeout = self.settings.body_read_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        // Without a declared length the body may be as large as the limit.
        let wanted = declared_length.map_or(limit, |length| length as usize);
        let mut reservation = match self.body_budget.try_reserve(wanted) {
            Some(reservation) => reservation,
            None => {
                metrics::counter!(crate::observe::metrics::BODY_BUDGET_WAITS).increment(1);
                let wait = self.body_budget.reserve(wanted);
                match tokio::time::timeout_at(deadline, wait).await {
                    Ok(reservation) => reservation,
                    Err(_) => {
                        tracing::warn!(
                            body_bytes = wanted,
                            held_bytes = self.body_budget.held(),
                            "no room for the body in server.max_body_bytes_in_flight in time"
                        );
                        return Err(Outcome::Busy {
                            error: format!(
                                "the bridge was holding as many request bodies as its memory budget allows for {timeout:?}; this one was not read"
                            ),
                        });
                    }
                }
            }
        };
        let read = body::read(request_body, declared_length, limit);
        let body = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(BodyError::TooLarge { .. })) => return Err(too_large(limit)),
            Ok(Err(error @ BodyError::Read(_))) => {
                return Err(Outcome::BadRequest {
                    error: error.to_string(),
                })
            }
            Err(_) => {
                return Err(Outcome::RequestTimeout {
                    error: format!("the body did not arrive within {timeout:?}"),
                })
            }
        };
        reservation.shrink_to(body.len());
        Ok((body, reservation))
    }

    /// The delivery waits for the start-up checks (in `Delivery::deliver`,
    /// in its lead's line), so a healthy start publishes its first events
    /// instead of spooling them.
    async fn deliver_body(&self, envelope: Envelope, body: Bytes) -> Outcome {
        // The body and its parsed tree are dropped once the record is built:
        // a large summary waits for the broker holding its record only.
        match self.prepare(&envelope, body).await {
            Ok(prepared) => self.publish(prepared, &envelope).await,
            Err(answer) => answer,
        }
    }

    /// Parses, dispatches and converts the body into its record; bad input
    /// is dead-lettered, and the `Err` is its answer.
    async fn prepare(&self, envelope: &Envelope, body: Bytes) -> Result<Prepared, Outcome> {
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(error) => {
                let group_id = group_id_of(envelope, None);
                let rejection = Rejection::unparsable(&error);
                return Err(self
                    .dead_letter(rejection, envelope, group_id, None, &body)
                    .await);
            }
        };
        let object = parsed.as_object();
        let group_id = group_id_of(envelope, object);
        let current = tracing::Span::current();
        current.record("superfone.group_id", group_id.as_str());
        if let Some(contact_id) = object
            .and_then(|o| o.get("contact_id"))
            .filter(|v| !v.is_null())
        {
            current.record(
                "superfone.contact_id",
                contact_id.to_string().trim_matches('"'),
            );
        }
        let key = object.and_then(event::record_key);
        let kind = match event::dispatch(&parsed) {
            Ok(kind) => kind,
            Err(error) => {
                return Err(self
                    .dead_letter(error.into(), envelope, group_id, key.as_deref(), &body)
                    .await)
            }
        };
        current.record("superfone.event", kind.as_str());
        let object = object.expect("dispatch accepted an object");
        let route = self.route(kind);
        // The ids are registered in the background: the lookup is a cache
        // hit (or a miss, and the record is stamped later); the delivery span
        // says which schema version encoded the record.
        // Until the registry's check has settled, the id is left for
        // `stamp` to write once it has: an id kept from the last run may
        // be stale (a rebuilt registry numbers schemas anew).
        let (schema_id, schema_header) = if self.startup.has_settled(Check::Registry) {
            route.schema.schema_header()
        } else {
            route.schema.pending_header()
        };
        current.record("superfone.schema_id", schema_id);
        current.record("superfone.registry.cached", schema_id != 0);
        let payload = match route.converter.encode(schema_id, object) {
            Ok(payload) => payload,
            Err(error) => {
                let rejection = Rejection::conversion(kind, error);
                return Err(self
                    .dead_letter(rejection, envelope, group_id, key.as_deref(), &body)
                    .await);
            }
        };
        let dedup_key =
            event::dedup_key(kind, object).per_notification(envelope.notification.as_deref());
        current.record("superfone.dedup_key", dedup_key.key.as_str());
        let mut headers = event_headers(
            kind,
            object,
            &group_id,
            &envelope.received_at,
            schema_header,
            &dedup_key.key,
        );
        headers.extend_from_slice(&envelope.origin_headers);
        let record = Record {
            topic: route.topic.clone(),
            key,
            headers,
            payload,
        };
        Ok(Prepared {
            kind,
            record,
            dedup_key,
            schema_id,
            group_id,
        })
    }

    /// Claims the event in the dedup, makes its record durable and answers.
    async fn publish(&self, prepared: Prepared, envelope: &Envelope) -> Outcome {
        let Prepared {
            kind,
            record,
            dedup_key,
            schema_id,
            group_id,
        } = prepared;
        let route = self.route(kind);
        let pending = match &self.dedup {
            None => None,
            Some(dedup) => match dedup.claim(&dedup_key.entity, &dedup_key.key).await {
                Claim::New(pending) => Some(pending),
                Claim::Duplicate(first_delivery) => {
                    metrics::counter!(crate::observe::metrics::DEDUP_HITS).increment(1);
                    tracing::info!(dedup_key = %dedup_key.key, "duplicate delivery, not published again");
                    return Outcome::Duplicate {
                        event: kind.as_str(),
                        group_id,
                        dedup_key: dedup_key.key,
                        first_delivery,
                    };
                }
            },
        };
        let durable = match self.deliver_record(record, envelope).await {
            Ok(durable) => durable,
            Err(error) => return unavailable(&error, group_id),
        };
        if let Some(pending) = pending {
            pending.remember(&route.topic, durable, &group_id);
        }
        match durable {
            Durable::Published(delivered) => {
                // The everyday outcome: the record on Kafka (its headers)
                // and the answer in Superfone's log say it already; a line
                // per event would cost more than the rest of the delivery.
                tracing::debug!(
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
                    schema_id: route.schema.id().unwrap_or(schema_id),
                    group_id,
                }
            }
            Durable::Spooled(spool_id) => {
                tracing::info!(topic = %route.topic, spool_id, "spooled");
                Outcome::Spooled {
                    event: kind.as_str(),
                    topic: route.topic.clone(),
                    spool_id,
                    group_id,
                }
            }
            Durable::Parked(spool_id) => Outcome::Parked {
                event: kind.as_str(),
                topic: route.topic.clone(),
                spool_id,
                group_id,
                error: "Kafka refused the record for good; it is kept in the bridge's parked records for an operator (see the bridge's logs for this group_id)",
            },
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
        tracing::Span::current().record("superfone.error", rejection.error.as_str());
        let mut headers = vec![
            (GROUP_ID_HEADER.to_owned(), group_id.clone()),
            (RECEIVED_AT_HEADER.to_owned(), envelope.received_at.clone()),
        ];
        if let Some(content_type) = &envelope.content_type {
            headers.push(("content-type".to_owned(), content_type.clone()));
        }
        if let Some(kind) = rejection.event {
            headers.push((EVENT_HEADER.to_owned(), kind.as_str().to_owned()));
        }
        headers.extend(envelope.origin_headers.iter().cloned());
        headers.extend(
            rejection
                .headers()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        );
        let record = Record {
            topic: self.settings.dead_letter_topic.clone(),
            key: key.map(str::to_owned),
            headers,
            payload: body.to_vec(),
        };
        match self.deliver_record(record, envelope).await {
            Ok(durable) => {
                tracing::warn!(
                    reason = rejection.reason.as_str(),
                    field = rejection.field.as_deref().unwrap_or(""),
                    error = %rejection.error,
                    "dead-lettered"
                );
                let dead_letter = RecordRef::new(&self.settings.dead_letter_topic, durable);
                Outcome::dead_lettered(rejection, group_id, dead_letter)
            }
            Err(error) => unavailable(&error, group_id),
        }
    }
}

impl Ingest {
    /// Delivers one record inside a `superfone.produce` span (renamed
    /// `superfone.spool` when it is spooled) with the OpenTelemetry messaging
    /// attributes, and puts that span's W3C trace context on the record.
    async fn deliver_record(
        &self,
        mut record: Record,
        envelope: &Envelope,
    ) -> Result<Durable, SpoolError> {
        let trace = &envelope.trace;
        let span = tracing::info_span!(
            "superfone.produce",
            otel.name = "superfone.produce",
            otel.kind = "producer",
            otel.status_code = field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %record.topic,
            messaging.kafka.message.key = record.key.as_deref().unwrap_or(""),
            messaging.destination.partition.id = field::Empty,
            messaging.kafka.offset = field::Empty,
            superfone.spool_id = field::Empty,
        );
        record.headers.extend(trace.record_headers(&span));
        let result = self
            .delivery
            .deliver(record, envelope.arrived)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(Durable::Published(delivered)) => {
                span.record(
                    "messaging.destination.partition.id",
                    delivered.partition.to_string(),
                );
                span.record("messaging.kafka.offset", delivered.offset);
            }
            Ok(Durable::Spooled(id)) => {
                span.record("otel.name", "superfone.spool");
                span.record("superfone.spool_id", id);
            }
            Ok(Durable::Parked(id)) => {
                span.record("otel.name", "superfone.park");
                span.record("otel.status_code", "ERROR");
                span.record("superfone.spool_id", id);
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
}

fn too_large(limit: usize) -> Outcome {
    Outcome::PayloadTooLarge {
        error: BodyError::TooLarge { limit }.to_string(),
        limit_bytes: limit,
    }
}

fn unavailable(error: &SpoolError, group_id: String) -> Outcome {
    tracing::error!(%error, "event NOT stored: neither Kafka nor the spool took it");
    Outcome::Unavailable {
        error: "the event could not be stored; see the bridge's logs for this group_id",
        group_id,
    }
}

/// The delivery's correlation id: the configured header, else the body's
/// `group_id_ref`, else a new UUID v7; capped, since it is echoed in every
/// answer, header and log line.
fn group_id_of(envelope: &Envelope, object: Option<&serde_json::Map<String, Value>>) -> String {
    let given = envelope
        .group_id
        .as_deref()
        .or_else(|| object.and_then(event::body_group_id));
    match given {
        Some(group_id) => crate::durability::dedup::cap_group_id(group_id).to_owned(),
        None => uuid::Uuid::now_v7().to_string(),
    }
}
