//! Metrics, health and readiness on the admin listener.
#![cfg(feature = "e2e")]

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{fixture, free_port, metrics_text, post, post_with, Bridge, BridgeOptions};

/// Parses Prometheus exposition text into `series -> value` (`name{labels}` as written).
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn series(metrics: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value)
        .sum()
}

/// A fresh bridge shows every request series at 0 before its first
/// request: a series born at its first 503 has no earlier sample, so
/// `rate()` would never see that first burst and no alert would fire. And
/// the spool's cap, which the fill-ratio alert divides by.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_bridge_shows_every_request_series_at_zero_and_the_spool_cap() {
    let bridge = Bridge::start(BridgeOptions::default().with("SPOOL__MAX_BYTES", 536_870_912));
    let client = support::client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_text(&client, &bridge).await;
        if text.contains("superfone_spool_max_bytes ") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.lines()
            .any(|line| line
                == r#"superfone_requests_total{event="unknown",outcome="unavailable"} 0"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line
                == r#"superfone_requests_total{event="ALL_CALLS",outcome="published"} 0"#),
        "{text}"
    );
    let metrics = scrape(&text);
    let requests: Vec<(&String, &f64)> = metrics
        .iter()
        .filter(|(series, _)| series.starts_with("superfone_requests_total{"))
        .collect();
    // Ten events and `unknown`, times the thirteen outcomes.
    assert_eq!(requests.len(), 11 * 13, "{text}");
    assert!(requests.iter().all(|(_, value)| **value == 0.0), "{text}");
    assert_eq!(
        metrics.get("superfone_spool_max_bytes"),
        Some(&536_870_912.0),
        "{text}"
    );
    assert!(
        !text.contains("superfone_tls_certificate_expiry_timestamp_seconds "),
        "plain HTTP: no certificate to expire"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_sent_by_event_and_outcome() {
    let bridge = Bridge::start(BridgeOptions::default().with("KAFKA__STATISTICS_INTERVAL_MS", 200));
    let client = support::client();
    for contact in 0..3 {
        let mut event = fixture("CUSTOMER_CREATE");
        event["contact_id"] = json!(contact);
        assert_eq!(post(&client, &bridge, event.to_string()).await.0, 200);
    }
    let mut repeat = fixture("CUSTOMER_CREATE");
    repeat["contact_id"] = json!(0);
    assert_eq!(
        post(&client, &bridge, repeat.to_string()).await.1["status"],
        "duplicate"
    );
    assert_eq!(post(&client, &bridge, "not json").await.0, 400);
    assert_eq!(
        post(&client, &bridge, r#"{"event":"CALL_PARKED"}"#).await.0,
        422
    );
    let (status, _) = post_with(
        &client,
        &bridge.ingest_url(),
        "{}",
        Some("Bearer wrong"),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    let published = fixture("TASK_CREATE");
    assert_eq!(post(&client, &bridge, published.to_string()).await.0, 200);

    let text = metrics_text(&client, &bridge).await;
    let metrics = scrape(&text);
    let requests = |event: &str, outcome: &str| {
        series(
            &metrics,
            "superfone_requests_total",
            &[("event", event), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("CUSTOMER_CREATE", "published"), 3.0, "{text}");
    assert_eq!(requests("TASK_CREATE", "published"), 1.0);
    assert_eq!(requests("CUSTOMER_CREATE", "duplicate"), 1.0);
    assert_eq!(requests("unknown", "dead_lettered"), 2.0);
    assert_eq!(requests("unknown", "unauthorized"), 1.0);
    assert_eq!(series(&metrics, "superfone_dedup_hits_total", &[]), 1.0);
    assert_eq!(
        series(&metrics, "superfone_request_duration_seconds_count", &[]),
        8.0
    );
    assert_eq!(
        series(&metrics, "superfone_produce_duration_seconds_count", &[]),
        6.0,
        "4 events + 2 dead letters"
    );
    assert_eq!(series(&metrics, "superfone_requests_in_flight", &[]), 0.0);
    assert!(
        text.contains("superfone_spool_records"),
        "spool gauges exported"
    );
    // librdkafka statistics arrive on their own interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&client, &bridge).await;
        let metrics = scrape(&text);
        if metrics
            .keys()
            .any(|s| s.starts_with("superfone_kafka_broker_rtt_seconds{broker="))
        {
            assert!(metrics.contains_key("superfone_kafka_queue_messages"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no librdkafka statistics: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Metrics stay off the public port.
    let public = client.get(bridge.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status().as_u16(), 404);
}

fn traced_bridge(endpoint: String, protocol: &str) -> Bridge {
    let mut options = BridgeOptions::default()
        .with("TRACING__ENDPOINT", endpoint)
        .with("TRACING__PROTOCOL", protocol)
        // A line per published event is at debug level.
        .with("LOG__FILTER", "info,superfone_bridge::http::ingest=debug");
    // Export batches quickly so the test does not wait the default 5 s.
    options
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    Bridge::start(options)
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_the_collector_and_continue_in_kafka_headers() {
    let collector = support::Collector::start();
    let bridge = traced_bridge(
        format!("http://127.0.0.1:{}", collector.http_port),
        "http/protobuf",
    );
    let client = support::client();
    let auth = format!("Bearer {}", support::SECRET);
    let incoming_trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{incoming_trace}-b7ad6b7169203331-01");
    let (status, continued) = post_with(
        &client,
        &bridge.ingest_url(),
        fixture("TASK_CREATE").to_string(),
        Some(&auth),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{continued}");
    assert_eq!(
        continued["trace_id"], incoming_trace,
        "the incoming traceparent is honoured"
    );
    let (status, fresh) = post(&client, &bridge, fixture("CUSTOMER_CREATE").to_string()).await;
    assert_eq!(status, 200);
    let fresh_trace = fresh["trace_id"]
        .as_str()
        .expect("a trace id without traceparent too")
        .to_owned();
    assert_eq!(fresh_trace.len(), 32);
    assert_ne!(fresh_trace, incoming_trace);

    // The server span: parent = the caller's span, attributes = the delivery's facts.
    let delivery = collector.wait_for("superfone.delivery (continued)", |s| {
        s.name == "superfone.delivery" && s.trace_id == incoming_trace
    });
    assert_eq!(delivery.parent_id, "b7ad6b7169203331");
    assert_eq!(delivery.kind, "SPAN_KIND_SERVER");
    assert_eq!(
        delivery.attributes["superfone.group_id"],
        continued["group_id"].as_str().unwrap()
    );
    assert_eq!(delivery.attributes["superfone.event"], "TASK_CREATE");
    assert_eq!(delivery.attributes["superfone.contact_id"], "12345");
    assert!(
        delivery.attributes["superfone.dedup_key"].starts_with("TASK_CREATE|task_id=4567|"),
        "{:?}",
        delivery.attributes["superfone.dedup_key"]
    );
    assert_eq!(delivery.attributes["http.response.status_code"], "200");
    assert_eq!(
        delivery.attributes["superfone.schema_id"],
        continued["schema_id"].to_string(),
        "the schema version that encoded the record"
    );
    assert_eq!(delivery.attributes["superfone.registry.cached"], "true");
    collector.wait_for("superfone.produce under the delivery", |s| {
        s.name == "superfone.produce" && s.parent_id == delivery.span_id
    });
    let produce = collector.wait_for("produce", |s| {
        s.name == "superfone.produce" && s.trace_id == incoming_trace
    });
    assert_eq!(produce.kind, "SPAN_KIND_PRODUCER");
    assert_eq!(produce.attributes["messaging.system"], "kafka");
    assert_eq!(
        produce.attributes["messaging.destination.name"],
        bridge.topic("TASK_CREATE")
    );
    assert_eq!(produce.attributes["messaging.kafka.message.key"], "12345");
    assert_eq!(
        produce.attributes["messaging.destination.partition.id"],
        continued["partition"].to_string()
    );
    assert_eq!(
        produce.attributes["messaging.kafka.offset"],
        continued["offset"].to_string()
    );

    // Without traceparent: a root span with the trace id the response gave.
    let root = collector.wait_for("superfone.delivery (fresh)", |s| {
        s.name == "superfone.delivery" && s.trace_id == fresh_trace
    });
    assert!(root.parent_id.is_empty(), "{root:?}");

    // The Kafka record carries the produce span's context.
    let record = &support::consume(&bridge.topic("TASK_CREATE"), 1, false)[0];
    let header = record["headers"]["traceparent"]
        .as_str()
        .expect("traceparent header");
    assert_eq!(
        header,
        format!("00-{incoming_trace}-{}-01", produce.span_id)
    );

    // Log lines of a delivery carry its group id and trace id.
    let logs = bridge.log_text_with(incoming_trace);
    let published = logs
        .lines()
        .find(|line| line.contains("\"published\"") && line.contains(incoming_trace))
        .expect("a log line with the trace id");
    assert!(
        published.contains(continued["group_id"].as_str().unwrap()),
        "{published}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_also_export_over_grpc() {
    let collector = support::Collector::start();
    let bridge = traced_bridge(format!("http://127.0.0.1:{}", collector.grpc_port), "grpc");
    let client = support::client();
    let (status, reply) = post(&client, &bridge, fixture("TASK_DUE_TIME").to_string()).await;
    assert_eq!(status, 200);
    let trace_id = reply["trace_id"].as_str().unwrap().to_owned();
    collector.wait_for("delivery over gRPC", |s| {
        s.name == "superfone.delivery" && s.trace_id == trace_id
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_collector_neither_fails_nor_slows_deliveries() {
    // Nothing listens on this port: every export fails.
    let bridge = traced_bridge(format!("http://127.0.0.1:{}", free_port()), "http/protobuf");
    let client = support::client();
    let mut slowest = Duration::ZERO;
    for contact in 0..200 {
        let mut event = fixture("CUSTOMER_CREATE");
        event["contact_id"] = json!(contact);
        let started = Instant::now();
        let (status, reply) = post(&client, &bridge, event.to_string()).await;
        slowest = slowest.max(started.elapsed());
        // Published, not spooled: each answer came well within the ack deadline.
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{reply}"
        );
    }
    println!("collector down: 200 deliveries published, slowest answer {slowest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_exporter_trace_context_is_still_made_and_propagated() {
    // No [tracing] endpoint: the OpenTelemetry layer is not installed, and
    // the bridge makes the W3C context itself.
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let auth = format!("Bearer {}", support::SECRET);
    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_span = "00f067aa0ba902b7";
    let (status, continued) = post_with(
        &client,
        &bridge.ingest_url(),
        fixture("TASK_CREATE").to_string(),
        Some(&auth),
        &[
            (
                "traceparent",
                &format!("00-{incoming_trace}-{incoming_span}-00"),
            ),
            ("tracestate", "vendor=opaque"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{continued}");
    assert_eq!(continued["trace_id"], incoming_trace);
    let (status, fresh) = post(&client, &bridge, fixture("CUSTOMER_CREATE").to_string()).await;
    assert_eq!(status, 200, "{fresh}");
    let fresh_trace = fresh["trace_id"].as_str().expect("a new trace id");
    assert!(
        fresh_trace.len() == 32 && fresh_trace.chars().all(|c| c.is_ascii_hexdigit()),
        "{fresh_trace}"
    );
    assert_ne!(fresh_trace, "0".repeat(32));

    // The record's context: the caller's trace and sampling decision, its
    // tracestate, and a span id of its own.
    let record = &support::consume(&bridge.topic("TASK_CREATE"), 1, false)[0];
    let header = record["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", incoming_trace, "00"));
    assert!(parts[2].len() == 16 && parts[2] != incoming_span && parts[2] != "0".repeat(16));
    assert_eq!(record["headers"]["tracestate"], "vendor=opaque");

    // A new trace is sampled, as the SDK's default sampler would have it.
    let record = &support::consume(&bridge.topic("CUSTOMER_CREATE"), 1, false)[0];
    let header = record["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(
        header.starts_with(&format!("00-{fresh_trace}-")) && header.ends_with("-01"),
        "{header}"
    );
}
