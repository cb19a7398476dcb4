//! Scale-down and leftover volumes: events a pod answered
//! 202 must reach Kafka when the pod goes away, not wait on a volume nobody
//! reads. On SIGTERM with Kafka reachable the bridge sends its spool before
//! exiting; `spool drain --dir` sends a volume a pod left behind, and is
//! refused while a bridge has that spool open.
#![cfg(feature = "e2e")]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::faults::{count_answers, read_back_and_check, Figures};
use support::{free_port, stream_events, Answer, Bridge, BridgeOptions, Broker};

/// A bridge whose broker is not running yet: every event is spooled.
fn broker_down(port: u16, spool: &Path, prefix: &str) -> BridgeOptions {
    BridgeOptions {
        prefix: prefix.to_owned(),
        spool_dir: Some(spool.to_owned()),
        brokers: Some(format!("127.0.0.1:{port}")),
        ..BridgeOptions::default()
    }
    .with("KAFKA__STARTUP_TIMEOUT_MS", 1000)
    .with("DELIVERY__ACK_DEADLINE_MS", 500)
    .with("KAFKA__MESSAGE_TIMEOUT_MS", 5000)
}

/// Runs `superfone-bridge spool drain --dir SPOOL` against `brokers`;
/// returns whether it succeeded, its JSON report (if any) and its stderr.
fn spool_drain(brokers: &str, prefix: &str, spool: &Path) -> (bool, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drain.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\nstartup_timeout_ms = 3000\n[registry]\nurl = \"{}\"\n[topics]\nprefix = \"{prefix}\"\n",
            support::stack().registry_url
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"))
        .args(["--config", config.to_str().unwrap(), "spool", "drain"])
        .args(["--dir", spool.to_str().unwrap(), "--timeout-secs", "60"])
        .env("SUPERFONE_AUTH_SECRETS", support::SECRET)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), report, stderr)
}

/// Asserts the bridge logged its stop with `left` events in its spool.
fn assert_stopped_leaving(bridge: &Bridge, left: usize) {
    let log = bridge.log_text_with("\"stopped\"");
    assert!(log.contains(&format!("\"left_in_spool\":{left}")), "{log}");
}

/// Reads the topic back from `broker`: every answered event there, none
/// lost, in order per lead (`read_back_and_check`), `expected` records.
fn assert_all_on_kafka(
    broker: &Broker,
    bridge: &Bridge,
    figures: &mut Figures,
    answers: &[Answer],
    expected: usize,
) {
    let records = read_back_and_check(
        &broker.address(),
        &bridge.topic("TASK_CHANGE"),
        figures,
        answers,
    );
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
    assert_eq!(records.len(), expected, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_after_kafka_returns_sends_the_whole_spool_before_exiting() {
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let mut bridge = Bridge::start(broker_down(port, spool.path(), &prefix));

    let answers = stream_events(bridge.ingest_url(), 0..50, 20, 8, Arc::new(|_| {})).await;
    let mut figures = count_answers("sigterm_after_kafka_returns", &answers);
    assert_eq!(figures.spooled_202, 1_000, "{figures:?}");

    // Kafka is back, and the pod is told to stop before its replay (which
    // waits for the health check to create the topics) has sent anything.
    let broker = Broker::start(port);
    bridge.terminate();
    let status = bridge
        .wait_exit(Duration::from_secs(60))
        .expect("exits within the grace period");
    assert!(status.success(), "{status}");
    assert_stopped_leaving(&bridge, 0);
    assert!(
        bridge.log_text().contains("spool drained"),
        "{}",
        bridge.log_text()
    );

    assert_all_on_kafka(&broker, &bridge, &mut figures, &answers, 1_000);
    let (ok, report, stderr) = spool_drain(&broker.address(), &prefix, spool.path());
    assert!(ok, "{stderr}");
    assert_eq!(report["found"], 0, "the spool is empty: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spool_drain_sends_a_volume_left_behind_and_is_refused_beside_a_running_bridge() {
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let mut bridge = Bridge::start(broker_down(port, spool.path(), &prefix));
    let answers = stream_events(bridge.ingest_url(), 0..10, 10, 4, Arc::new(|_| {})).await;
    let mut figures = count_answers("spool_drain_left_behind", &answers);
    assert_eq!(figures.spooled_202, 100, "{figures:?}");

    let (ok, _, stderr) = spool_drain(&format!("127.0.0.1:{port}"), &prefix, spool.path());
    assert!(!ok, "refused while the bridge has the spool open");
    assert!(stderr.contains("in use by another process"), "{stderr}");

    // The pod goes away while Kafka is down: the events stay on its volume.
    bridge.terminate();
    bridge.wait_exit(Duration::from_secs(60)).expect("exits");
    assert_stopped_leaving(&bridge, 100);

    let broker = Broker::start(port);
    let (ok, report, stderr) = spool_drain(&broker.address(), &prefix, spool.path());
    assert!(ok, "{stderr}");
    assert_eq!(report["found"], 100, "{report}");
    assert_eq!(report["sent"], 100, "{report}");
    assert_eq!(report["left"], 0, "{report}");
    let first_drain_log = stderr;
    assert_all_on_kafka(&broker, &bridge, &mut figures, &answers, 100);

    let (ok, report, stderr) = spool_drain(&broker.address(), &prefix, spool.path());
    assert!(ok, "{stderr}");
    assert_eq!(
        report["found"], 0,
        "nothing is sent twice: {report}\n{stderr}\nfirst drain:\n{first_drain_log}"
    );
}
