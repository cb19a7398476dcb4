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
pub const SPOOL_RECORDS: &str = "superfone_spool_records";
pub const SPOOL_BYTES: &str = "superfone_spool_bytes";
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
pub const BODY_BUDGET_WAITS: &str = "superfone_body_budget_waits_total";

/// Latency buckets (seconds): the ack deadline (2 s) and Superfone's 5 s matter most.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
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
    describe_counter!(REQUESTS, "Requests by event and outcome (published, spooled, parked, duplicate, dead_lettered, unauthorized, payload_too_large, request_timeout, busy, bad_request, not_found, method_not_allowed, unavailable)");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request to answer, by outcome"
    );
    describe_histogram!(
        PRODUCE_DURATION,
        Unit::Seconds,
        "Time from enqueue to broker acknowledgement"
    );
    describe_gauge!(IN_FLIGHT, "Requests being handled");
    describe_counter!(DEDUP_HITS, "Deliveries answered as duplicates");
    describe_counter!(REGISTRY_ERRORS, "Schema registry calls that failed");
    describe_gauge!(
        SPOOL_RECORDS,
        "Events in the spool not yet acknowledged by Kafka"
    );
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Bytes of spool segment files on disk"
    );
    describe_gauge!(
        SPOOL_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest event waiting in the spool (0 when empty)"
    );
    describe_counter!(
        SPOOL_FAILURES,
        "Events neither Kafka nor the spool took (answered 503)"
    );
    describe_counter!(REPLAYED, "Spooled events replayed to Kafka");
    describe_gauge!(
        SPOOL_PARKED,
        "Records Kafka refused for good, kept in the spool's parked log (superfone-bridge spool parked)"
    );
    describe_counter!(
        PARKED,
        "Records parked because Kafka refused them for good (too large, forbidden or invalid topic)"
    );
    describe_counter!(
        PRODUCER_REPLACEMENTS,
        "Kafka producers replaced after a fatal or fenced state"
    );
    describe_gauge!(
        KAFKA_QUEUE,
        "Messages in librdkafka's producer queue (statistics msg_cnt)"
    );
    describe_gauge!(
        KAFKA_RTT,
        Unit::Seconds,
        "Average broker round-trip time, by broker (librdkafka statistics)"
    );
    describe_gauge!(
        READY,
        "1 when /readyz is ready: the spool is writable and has room for a largest record"
    );
    describe_gauge!(
        KAFKA_REACHABLE,
        "1 when the brokers answered the last metadata request (every 2 s)"
    );
    describe_gauge!(
        REGISTRY_PENDING,
        "Event schemas without a registry id yet; their events wait in the spool"
    );
    describe_counter!(
        CONNECTIONS_SHED,
        "Idle connections closed to make room for a new one (all delivery.max_connections taken)"
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed for sending no request within delivery.header_read_timeout_ms, or idling past delivery.idle_timeout_ms"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed (plain HTTP to the TLS port, untrusted or missing client certificate, no common protocol)"
    );
    describe_counter!(
        TLS_RELOAD_FAILURES,
        "Changed TLS files that could not be used; the certificate in use was kept"
    );
    describe_counter!(
        BODY_BUDGET_WAITS,
        "Requests that waited for room in server.max_body_bytes_in_flight before their body was read"
    );
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
    Ok(handle)
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
