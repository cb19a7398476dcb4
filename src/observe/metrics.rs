//! Prometheus metrics: every metric name the bridge exports, the recorder
//! (`metrics` + `metrics-exporter-prometheus`, rendered by the admin listener,
//! never on the ingest port), and the periodic gauges (spool, librdkafka).

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

pub const REQUESTS: &str = "superfone_requests_total";
pub const REQUEST_DURATION: &str = "superfone_request_duration_seconds";
pub const PRODUCE_DURATION: &str = "superfone_produce_duration_seconds";
pub const IN_FLIGHT: &str = "superfone_requests_in_flight";
pub const DEDUP_HITS: &str = "superfone_dedup_hits_total";
pub const REGISTRY_ERRORS: &str = "superfone_registry_errors_total";
pub const UNMAPPED_MEMBERS: &str = "superfone_unmapped_members_total";
pub const SPOOL_RECORDS: &str = "superfone_spool_records";
pub const SPOOL_BYTES: &str = "superfone_spool_bytes";
pub const SPOOL_MAX_BYTES: &str = "superfone_spool_max_bytes";
pub const SPOOL_OLDEST_AGE: &str = "superfone_spool_oldest_age_seconds";
pub const SPOOL_FAILURES: &str = "superfone_spool_append_failures_total";
pub const REPLAYED: &str = "superfone_spool_replayed_total";
pub const SPOOL_PARKED: &str = "superfone_spool_parked_records";
pub const PARKED: &str = "superfone_spool_parked_total";
pub const PRODUCER_REPLACEMENTS: &str = "superfone_kafka_producer_replacements_total";
pub const KAFKA_QUEUE: &str = "superfone_kafka_queue_messages";
pub const KAFKA_RTT: &str = "superfone_kafka_broker_rtt_seconds";
pub const READY: &str = "superfone_ready";
pub const KAFKA_REACHABLE: &str = "superfone_kafka_reachable";
pub const REGISTRY_PENDING: &str = "superfone_registry_pending_subjects";
pub const CONNECTIONS_SHED: &str = "superfone_connections_shed_total";
pub const CONNECTIONS_TIMED_OUT: &str = "superfone_connections_timed_out_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "superfone_tls_handshake_failures_total";
pub const TLS_RELOAD_FAILURES: &str = "superfone_tls_reload_failures_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "superfone_tls_certificate_expiry_timestamp_seconds";
pub const BODY_BUDGET_WAITS: &str = "superfone_body_budget_waits_total";
pub const RECORDINGS: &str = "superfone_recordings_total";
pub const RECORDING_BYTES: &str = "superfone_recording_bytes_total";
pub const RECORDINGS_PENDING: &str = "superfone_recordings_pending";
pub const RECORDINGS_NEXT_EXPIRY: &str = "superfone_recordings_next_expiry_seconds";

/// Latency buckets (seconds): the ack deadline (2 s) and Superfone's 5 s matter most.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's `# HELP` line and unit.
struct Described {
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
}

/// Every metric the bridge exports, as `/metrics` describes it.
const DESCRIBED: &[Described] = &[
    Described {
        name: REQUESTS,
        kind: Kind::Counter,
        unit: None,
        help: "Requests by event and outcome (published, spooled, parked, duplicate, dead_lettered, unauthorized, payload_too_large, request_timeout, busy, bad_request, not_found, method_not_allowed, unavailable)",
    },
    Described {
        name: REQUEST_DURATION,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time from request to answer, by outcome",
    },
    Described {
        name: PRODUCE_DURATION,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time from enqueue to broker acknowledgement",
    },
    Described {
        name: IN_FLIGHT,
        kind: Kind::Gauge,
        unit: None,
        help: "Requests being handled",
    },
    Described {
        name: DEDUP_HITS,
        kind: Kind::Counter,
        unit: None,
        help: "Deliveries answered as duplicates",
    },
    Described {
        name: REGISTRY_ERRORS,
        kind: Kind::Counter,
        unit: None,
        help: "Schema registry calls that failed",
    },
    Described {
        name: UNMAPPED_MEMBERS,
        kind: Kind::Counter,
        unit: None,
        help: "Payload members the event's schema does not know, kept in unmapped_fields_json, by event: the vendor added fields (superfone-bridge schema drift)",
    },
    Described {
        name: SPOOL_RECORDS,
        kind: Kind::Gauge,
        unit: None,
        help: "Events in the spool not yet acknowledged by Kafka",
    },
    Described {
        name: SPOOL_BYTES,
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        help: "Bytes of spool segment files on disk",
    },
    Described {
        name: SPOOL_MAX_BYTES,
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        help: "The spool's cap (spool.max_bytes): superfone_spool_bytes / this is how full it is",
    },
    Described {
        name: SPOOL_OLDEST_AGE,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Age of the oldest event waiting in the spool (0 when empty)",
    },
    Described {
        name: SPOOL_FAILURES,
        kind: Kind::Counter,
        unit: None,
        help: "Events neither Kafka nor the spool took (answered 503)",
    },
    Described {
        name: REPLAYED,
        kind: Kind::Counter,
        unit: None,
        help: "Spooled events replayed to Kafka",
    },
    Described {
        name: SPOOL_PARKED,
        kind: Kind::Gauge,
        unit: None,
        help: "Records Kafka refused for good, kept in the spool's parked log (superfone-bridge spool parked)",
    },
    Described {
        name: PARKED,
        kind: Kind::Counter,
        unit: None,
        help: "Records parked because Kafka refused them for good (too large, forbidden or invalid topic)",
    },
    Described {
        name: PRODUCER_REPLACEMENTS,
        kind: Kind::Counter,
        unit: None,
        help: "Kafka producers replaced after a fatal or fenced state",
    },
    Described {
        name: KAFKA_QUEUE,
        kind: Kind::Gauge,
        unit: None,
        help: "Messages in librdkafka's producer queue (statistics msg_cnt)",
    },
    Described {
        name: KAFKA_RTT,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Average broker round-trip time, by broker (librdkafka statistics)",
    },
    Described {
        name: READY,
        kind: Kind::Gauge,
        unit: None,
        help: "1 when /readyz is ready: the spool is writable and has room for a largest record",
    },
    Described {
        name: KAFKA_REACHABLE,
        kind: Kind::Gauge,
        unit: None,
        help: "1 when the brokers answered the last metadata request (every 2 s)",
    },
    Described {
        name: REGISTRY_PENDING,
        kind: Kind::Gauge,
        unit: None,
        help: "Event schemas without a registry id yet; their events wait in the spool",
    },
    Described {
        name: CONNECTIONS_SHED,
        kind: Kind::Counter,
        unit: None,
        help: "Idle connections closed to make room for a new one (all delivery.max_connections taken)",
    },
    Described {
        name: CONNECTIONS_TIMED_OUT,
        kind: Kind::Counter,
        unit: None,
        help: "Connections closed for sending no request within delivery.header_read_timeout_ms, or idling past delivery.idle_timeout_ms",
    },
    Described {
        name: TLS_HANDSHAKE_FAILURES,
        kind: Kind::Counter,
        unit: None,
        help: "TLS handshakes that failed (plain HTTP to the TLS port, untrusted or missing client certificate, no common protocol)",
    },
    Described {
        name: TLS_RELOAD_FAILURES,
        kind: Kind::Counter,
        unit: None,
        help: "Changed TLS files that could not be used; the certificate in use was kept",
    },
    Described {
        name: TLS_CERTIFICATE_EXPIRY,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "When the served certificate (the leaf of server.tls.cert_file in use) expires, as a Unix timestamp; TLS mode only",
    },
    Described {
        name: BODY_BUDGET_WAITS,
        kind: Kind::Counter,
        unit: None,
        help: "Requests that waited for room in server.max_body_bytes_in_flight before their body was read",
    },
    Described {
        name: RECORDINGS,
        kind: Kind::Counter,
        unit: None,
        help: "Recordings whose copy ended, by status (stored, expired, refused, failed)",
    },
    Described {
        name: RECORDING_BYTES,
        kind: Kind::Counter,
        unit: Some(Unit::Bytes),
        help: "Bytes of recordings copied to the store",
    },
    Described {
        name: RECORDINGS_PENDING,
        kind: Kind::Gauge,
        unit: None,
        help: "Recordings read whose copy has not ended (copying, or waiting to retry)",
    },
    Described {
        name: RECORDINGS_NEXT_EXPIRY,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time left on the link of the most urgent recording not yet copied (0 when none waits)",
    },
];

/// The process-wide recorder, installed on first use; the handle renders the
/// exposition text.
pub fn handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| install().expect("installing the Prometheus recorder"))
        .clone()
}

fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()?;
    for metric in DESCRIBED {
        describe(metric);
    }
    // Shown as 0 from the start, so an alert on any increase has a baseline
    // and a dashboard shows 0 rather than "no data".
    for name in [
        DEDUP_HITS,
        REGISTRY_ERRORS,
        SPOOL_FAILURES,
        REPLAYED,
        PARKED,
        PRODUCER_REPLACEMENTS,
        CONNECTIONS_SHED,
        CONNECTIONS_TIMED_OUT,
        TLS_HANDSHAKE_FAILURES,
        TLS_RELOAD_FAILURES,
        BODY_BUDGET_WAITS,
    ] {
        counter!(name).increment(0);
    }
    for kind in crate::vocabulary::EventKind::ALL {
        counter!(UNMAPPED_MEMBERS, "event" => kind.as_str()).increment(0);
    }
    Ok(handle)
}

fn describe(metric: &Described) {
    let (name, help) = (metric.name, metric.help);
    match (metric.kind, metric.unit) {
        (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
        (Kind::Counter, None) => describe_counter!(name, help),
        (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
        (Kind::Gauge, None) => describe_gauge!(name, help),
        (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
        (Kind::Histogram, None) => describe_histogram!(name, help),
    }
}

/// The `event` label of a request whose body named no known event.
pub const UNKNOWN_EVENT: &str = "unknown";

/// Shows every `event` x `outcome` series of [`REQUESTS`] as 0 from the
/// start. A series born at its first request has no earlier sample, so
/// `rate()` and `increase()` miss that first burst: a pod's first 503s
/// would page no one. `outcomes` are the names the HTTP layer answers with.
pub fn show_every_request_series(outcomes: &[&'static str]) {
    let events = crate::vocabulary::EventKind::ALL.map(|kind| kind.as_str());
    for event in events.into_iter().chain([UNKNOWN_EVENT]) {
        for &outcome in outcomes {
            counter!(REQUESTS, "event" => event, "outcome" => outcome).increment(0);
        }
    }
}

pub fn record_request(event: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(REQUESTS, "event" => event, "outcome" => outcome).increment(1);
    histogram!(REQUEST_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

pub fn record_produce(elapsed: Duration) {
    histogram!(PRODUCE_DURATION).record(elapsed.as_secs_f64());
}

/// librdkafka statistics (every `statistics.interval.ms`) that matter to operators.
pub fn record_kafka_statistics(statistics: &rdkafka::Statistics) {
    gauge!(KAFKA_QUEUE).set(statistics.msg_cnt as f64);
    for (name, broker) in &statistics.brokers {
        if let Some(rtt) = &broker.rtt {
            gauge!(KAFKA_RTT, "broker" => name.clone()).set(rtt.avg as f64 / 1_000_000.0);
        }
    }
}
