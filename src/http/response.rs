//! The JSON bodies Superfone's delivery log shows next to `group_id_ref`, and
//! the one place where each outcome gets its HTTP status.
//!
//! Superfone treats any status < 400 as delivered and never retries the rest,
//! so 2xx means "durable in Kafka", and every other body says why, naming the
//! field at fault. 5xx bodies stay generic; the cause goes to the log.

use crate::durability::dedup::FirstDelivery;
use crate::durability::delivery::RecordRef;
use crate::pipeline::dead_letter::{DeadLetterReason, Rejection};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Response header repeating the delivery's correlation id.
pub const GROUP_ID_RESPONSE_HEADER: &str = "x-superfone-group-id";
/// Response header with the delivery's trace id (32 hex digits), for Jaeger.
pub const TRACE_ID_RESPONSE_HEADER: &str = "x-superfone-trace-id";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The record is acknowledged by the broker.
    Published {
        event: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
        schema_id: u32,
        group_id: String,
    },
    /// Kafka did not acknowledge in time; the event is durable in the local
    /// spool and will be published, in order, as soon as Kafka takes it.
    Spooled {
        event: &'static str,
        topic: String,
        spool_id: u64,
        group_id: String,
    },
    /// Kafka refused the record for good (e.g. over the broker's size
    /// limit): it is durable in the spool's parked records, where an operator
    /// can export or retry it; it is not published by itself.
    Parked {
        event: &'static str,
        topic: String,
        spool_id: u64,
        group_id: String,
        error: &'static str,
    },
    /// The same event was delivered before (within the dedup window); this
    /// repeat is not published again.
    Duplicate {
        event: &'static str,
        group_id: String,
        dedup_key: String,
        #[serde(flatten)]
        first_delivery: FirstDelivery,
    },
    /// Bad input, kept unchanged on the dead-letter topic.
    DeadLettered {
        #[serde(skip)]
        reason: DeadLetterReason,
        #[serde(rename = "reason")]
        reason_name: &'static str,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'static str>,
        group_id: String,
        dead_letter: RecordRef,
    },
    Unauthorized {
        error: String,
    },
    PayloadTooLarge {
        error: String,
        limit_bytes: usize,
    },
    /// The body did not arrive within the body-read timeout.
    RequestTimeout {
        error: String,
    },
    /// The bodies in flight held the whole memory budget for longer than
    /// the body-read timeout; this one was not read.
    Busy {
        error: String,
    },
    /// The body could not be read (client went away, broken framing).
    BadRequest {
        error: String,
    },
    NotFound {
        error: String,
    },
    MethodNotAllowed {
        error: String,
    },
    /// Neither Kafka nor the spool could take the event; it is not stored.
    Unavailable {
        error: &'static str,
        group_id: String,
    },
}

impl Outcome {
    pub fn dead_lettered(rejection: Rejection, group_id: String, dead_letter: RecordRef) -> Self {
        Outcome::DeadLettered {
            reason: rejection.reason,
            reason_name: rejection.reason.as_str(),
            error: rejection.error,
            field: rejection.field,
            event: rejection.event.map(|kind| kind.as_str()),
            group_id,
            dead_letter,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Published { .. } | Outcome::Duplicate { .. } => StatusCode::OK,
            Outcome::Spooled { .. } | Outcome::Parked { .. } => StatusCode::ACCEPTED,
            Outcome::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Outcome::DeadLettered {
                reason: DeadLetterReason::InvalidJson,
                ..
            } => StatusCode::BAD_REQUEST,
            Outcome::DeadLettered { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Outcome::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Outcome::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Outcome::NotFound { .. } => StatusCode::NOT_FOUND,
            Outcome::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::Busy { .. } | Outcome::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Every name [`Outcome::name`] gives: the `outcome` label values the
    /// request counter shows as 0 from the start (a new outcome joins them).
    pub const NAMES: [&'static str; 13] = [
        "published",
        "spooled",
        "parked",
        "duplicate",
        "request_timeout",
        "dead_lettered",
        "unauthorized",
        "payload_too_large",
        "busy",
        "bad_request",
        "not_found",
        "method_not_allowed",
        "unavailable",
    ];

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Published { .. } => "published",
            Outcome::Spooled { .. } => "spooled",
            Outcome::Parked { .. } => "parked",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::RequestTimeout { .. } => "request_timeout",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Unauthorized { .. } => "unauthorized",
            Outcome::PayloadTooLarge { .. } => "payload_too_large",
            Outcome::Busy { .. } => "busy",
            Outcome::BadRequest { .. } => "bad_request",
            Outcome::NotFound { .. } => "not_found",
            Outcome::MethodNotAllowed { .. } => "method_not_allowed",
            Outcome::Unavailable { .. } => "unavailable",
        }
    }

    /// The event, when the body named a known one.
    pub fn event(&self) -> Option<&'static str> {
        match self {
            Outcome::Published { event, .. }
            | Outcome::Spooled { event, .. }
            | Outcome::Parked { event, .. }
            | Outcome::Duplicate { event, .. } => Some(event),
            Outcome::DeadLettered { event, .. } => *event,
            _ => None,
        }
    }

    fn group_id(&self) -> Option<&str> {
        match self {
            Outcome::Published { group_id, .. }
            | Outcome::Spooled { group_id, .. }
            | Outcome::Parked { group_id, .. }
            | Outcome::Duplicate { group_id, .. }
            | Outcome::DeadLettered { group_id, .. }
            | Outcome::Unavailable { group_id, .. } => Some(group_id),
            _ => None,
        }
    }

    /// The HTTP response; `trace_id` goes into the body and the
    /// `x-superfone-trace-id` header, so the vendor's log leads to the trace;
    /// `notification`, the name the path gave, into the body, so each
    /// notification's delivery log says which one it was.
    pub fn into_response(
        self,
        trace_id: Option<String>,
        notification: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let mut body = serde_json::to_value(&self).expect("outcome serializes");
        if let Some(object) = body.as_object_mut() {
            if let Some(name) = notification {
                object.insert("notification".into(), name.into());
            }
            if let Some(trace_id) = &trace_id {
                object.insert("trace_id".into(), trace_id.clone().into());
            }
        }
        let body = serde_json::to_vec(&body).expect("outcome serializes");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = self
            .group_id()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(GROUP_ID_RESPONSE_HEADER, value);
        }
        if let Some(value) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert(TRACE_ID_RESPONSE_HEADER, value);
        }
        // The rest of an unread body would have to be drained before the next
        // request on this connection; closing is cheaper and stops slow senders.
        if matches!(
            self,
            Outcome::PayloadTooLarge { .. } | Outcome::BadRequest { .. } | Outcome::Busy { .. }
        ) {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, Outcome::MethodNotAllowed { .. }) {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn published_body_is_what_the_vendor_log_shows() {
        let outcome = Outcome::Published {
            event: "ALL_CALLS",
            topic: "superfone.all_calls".into(),
            partition: 2,
            offset: 41,
            schema_id: 7,
            group_id: "g-1".into(),
        };
        assert_eq!(outcome.status(), StatusCode::OK);
        assert_eq!(
            serde_json::to_value(&outcome).unwrap(),
            json!({"status": "published", "event": "ALL_CALLS", "topic": "superfone.all_calls",
                   "partition": 2, "offset": 41, "schema_id": 7, "group_id": "g-1"})
        );
    }

    #[test]
    fn invalid_json_is_400_other_rejections_422() {
        let dead_letter = RecordRef {
            topic: "dl".into(),
            partition: Some(0),
            offset: Some(3),
            spool_id: None,
        };
        let rejection = |reason| Rejection {
            reason,
            error: "x".into(),
            field: None,
            event: None,
        };
        let bad_json = Outcome::dead_lettered(
            rejection(DeadLetterReason::InvalidJson),
            "g".into(),
            dead_letter.clone(),
        );
        let unknown = Outcome::dead_lettered(
            rejection(DeadLetterReason::UnknownEvent),
            "g".into(),
            dead_letter,
        );
        assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
        assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            serde_json::to_value(&unknown).unwrap()["reason"],
            "unknown_event"
        );
    }

    #[test]
    fn every_outcome_name_is_listed() {
        let record = RecordRef {
            topic: "t".into(),
            partition: Some(0),
            offset: Some(1),
            spool_id: None,
        };
        let error = || "x".to_owned();
        let rejection = Rejection {
            reason: DeadLetterReason::InvalidJson,
            error: error(),
            field: None,
            event: None,
        };
        let (event, topic, group_id) = ("ALL_CALLS", || "t".to_owned(), || "g".to_owned());
        let outcomes = [
            Outcome::Published {
                event,
                topic: topic(),
                partition: 0,
                offset: 0,
                schema_id: 1,
                group_id: group_id(),
            },
            Outcome::Spooled {
                event,
                topic: topic(),
                spool_id: 1,
                group_id: group_id(),
            },
            Outcome::Parked {
                event,
                topic: topic(),
                spool_id: 1,
                group_id: group_id(),
                error: "x",
            },
            Outcome::Duplicate {
                event,
                group_id: group_id(),
                dedup_key: "k".into(),
                first_delivery: FirstDelivery {
                    record: record.clone(),
                    group_id: group_id(),
                },
            },
            Outcome::RequestTimeout { error: error() },
            Outcome::dead_lettered(rejection, group_id(), record),
            Outcome::Unauthorized { error: error() },
            Outcome::PayloadTooLarge {
                error: error(),
                limit_bytes: 1,
            },
            Outcome::Busy { error: error() },
            Outcome::BadRequest { error: error() },
            Outcome::NotFound { error: error() },
            Outcome::MethodNotAllowed { error: error() },
            Outcome::Unavailable {
                error: "x",
                group_id: group_id(),
            },
        ];
        let names: Vec<&str> = outcomes.iter().map(Outcome::name).collect();
        assert_eq!(names, Outcome::NAMES);
    }
}
