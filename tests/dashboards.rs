//! The chart's Grafana dashboard and PrometheusRule against what the bridge
//! really exports: every metric a panel or an alert
//! names must be on a live bridge's /metrics, so a renamed metric cannot
//! leave a panel empty or an alert silent. (The alerts' logic is tested by
//! promtool in scripts/check-deploy.) The bridge runs the recording copier
//! and copies one recording, since the recording metrics are exported from
//! the copier's start and its first copy on.
#![cfg(feature = "e2e")]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::source::Source;
use support::{fixture, post, Bridge, BridgeOptions};
use time::macros::format_description;

/// Exported only in TLS mode: tests/tls.rs checks it on a TLS bridge.
const TLS_MODE_ONLY: &[&str] = &["superfone_tls_certificate_expiry_timestamp_seconds"];

/// The series the alerts read that are not the bridge's: Prometheus's own
/// `up`, and kube-state-metrics' (stable since its v2: one series per claim,
/// and per claim a pod's spec names). No live kube-state-metrics here, so
/// they are pinned by name: a new one must be added, and checked, here.
const KUBE_STATE_METRICS: &[&str] = &[
    "kube_persistentvolumeclaim_info",
    "kube_pod_spec_volumes_persistentvolumeclaims_info",
];

/// Every `superfone_…` metric name in a text (PromQL in JSON or YAML).
fn metric_names(text: &str) -> BTreeSet<String> {
    names_with_prefix(text, "superfone_")
}

/// Every name starting with `prefix` in a text.
fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(prefix) {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

/// The sample names of a Prometheus exposition (`_bucket`, `_sum`, `_count`
/// included, as PromQL names them).
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn chart_file(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("helm/superfone-bridge")
            .join(path),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let dashboard = chart_file("dashboards/superfone-bridge.json");
    let panels: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = panels["panels"].as_array().unwrap();
    assert!(
        panels
            .iter()
            .any(|panel| panel["type"] == "row" && panel["title"] == "Recordings"),
        "a Recordings row"
    );
    let queries: Vec<String> = panels
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    let from_dashboard = metric_names(&queries.join("\n"));
    let rules = chart_file("templates/prometheusrule.yaml");
    let from_rules = metric_names(&rules);
    assert!(from_dashboard.len() >= 15, "{from_dashboard:?}");
    assert!(from_rules.len() >= 5, "{from_rules:?}");
    let from_kube_state_metrics = names_with_prefix(&rules, "kube_");
    assert_eq!(
        from_kube_state_metrics,
        KUBE_STATE_METRICS
            .iter()
            .map(|name| name.to_string())
            .collect(),
        "kube-state-metrics series the alerts name"
    );
    assert!(rules.contains("up{"), "the scrape-failure alert reads up");
    let wanted: BTreeSet<String> = from_dashboard
        .union(&from_rules)
        .filter(|name| !TLS_MODE_ONLY.contains(&name.as_str()))
        .cloned()
        .collect();

    // librdkafka's statistics (queue, broker RTT) arrive every interval.
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(copying(
        BridgeOptions::default().with("KAFKA__STATISTICS_INTERVAL_MS", 500),
        store.path(),
    ));
    let client = support::client();
    let (status, body) = post(&client, &bridge, fixture("ALL_CALLS").to_string()).await;
    assert_eq!(status, 200, "{body}");
    let signed = time::OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap();
    let mut recording = fixture("cdr_recording_available");
    recording["cdr_recording_url"] = source.link("1.mp3", 4096, &signed, 604_800, "").into();
    let (status, body) = post(&client, &bridge, recording.to_string()).await;
    assert!((200..300).contains(&status), "{body}");

    // The copier joins its consumer group before its first copy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let have = exported(&support::metrics_text(&client, &bridge).await);
        let missing: Vec<&String> = wanted.iter().filter(|name| !have.contains(*name)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing
                .into_iter()
                .map(|name| format!("{name} (exported: {})", have.len()))
                .collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not exported: {missing:?}"
    );
}

/// `options` with the recording copier on, writing to `store` and allowed
/// to fetch from the loopback source.
fn copying(options: BridgeOptions, store: &Path) -> BridgeOptions {
    let group = format!("{}recordings", options.prefix);
    options
        .with("RECORDINGS__ENABLED", "true")
        .with(
            "RECORDINGS__STORE_URL",
            format!("file://{}", store.display()),
        )
        .with("RECORDINGS__ALLOWED_HOSTS", "localhost")
        .with("RECORDINGS__ALLOW_PRIVATE_NETWORKS", "true")
        .with("RECORDINGS__ALLOW_PLAIN_HTTP", "true")
        .with("RECORDINGS__GROUP_ID", group)
}

#[test]
fn the_name_scanner_finds_names_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(superfone_request_duration_seconds_bucket{job=~"$job"}[5m]))) / superfone_ready"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "superfone_ready",
            "superfone_request_duration_seconds_bucket"
        ]
    );
}
