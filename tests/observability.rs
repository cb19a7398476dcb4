//! Metrics, health and readiness on the admin listener.

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{fixture, free_port, post, post_with, Bridge, BridgeOptions, Broker};

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

    let text = client
        .get(bridge.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
        let text = client
            .get(bridge.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
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

async fn readyz(client: &reqwest::Client, bridge: &Bridge) -> (u16, serde_json::Value) {
    let response = client
        .get(bridge.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_for_readyz(
    client: &reqwest::Client,
    bridge: &Bridge,
    status: u16,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now, body) = readyz(client, bridge).await;
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {now}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_broker_and_healthz_stays_alive() {
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(BridgeOptions {
        brokers: Some(broker.address()),
        ..BridgeOptions::default()
    });
    let client = support::client();
    wait_for_readyz(&client, &bridge, 200).await;
    broker.freeze();
    let body = wait_for_readyz(&client, &bridge, 503).await;
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("Kafka broker metadata unreachable"),
        "{body}"
    );
    let health = client
        .get(bridge.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "alive even when not ready");
    broker.resume();
    assert_eq!(
        wait_for_readyz(&client, &bridge, 200).await["status"],
        "ready"
    );
}
