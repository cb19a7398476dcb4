//! The soak, short (issue 28): `superfone-bench soak` (the same command as
//! `scripts/soak`) for one minute against a broker and registry of this
//! test's own, with one freeze of the broker (SIGSTOP, about 14 s) and one
//! `kill -9` of the bridge in the middle of it, restarted on the same spool.
//! Every event answered 2xx must be read back, and each lead's events, sent
//! one after another, must sit in its partition in the order they were
//! answered. Prints the figures (`SOAK-FIGURES {...}`).
#![cfg(feature = "e2e")]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::{free_port, Broker, Registry};

#[test]
fn a_minute_of_load_through_a_frozen_broker_and_a_kill_loses_nothing_and_keeps_order() {
    let broker = Broker::start(free_port());
    let registry = Registry::start(free_port());
    let bridge = Path::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    let bench = bridge.with_file_name("superfone-bench");
    assert!(
        bench.exists(),
        "{} is missing: scripts/test builds it (cargo build -p superfone-bench)",
        bench.display()
    );
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&bench)
        .arg("soak")
        .args(["--brokers", &broker.address()])
        .args(["--broker-pid", &broker.pid().to_string()])
        .args(["--registry-url", &registry.url()])
        .args(["--bridge-bin", bridge.to_str().unwrap()])
        .args(["--fixtures", root.join("tests/fixtures").to_str().unwrap()])
        .args(["--out", out.path().to_str().unwrap()])
        .args(["--minutes", "1", "--rate", "100", "--contacts", "200"])
        .args(["--workers", "16", "--kills", "1", "--max-freezes", "1"])
        .args(["--thawed-secs", "12,16", "--frozen-secs", "12,16"])
        .args(["--drain-timeout-secs", "120"])
        .output()
        .expect("run superfone-bench soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let figures: Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix("SOAK-FIGURES "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| {
            panic!(
                "the soak reported no figures ({}):\n{stderr}",
                output.status
            )
        });
    let figure = |name: &str| figures[name].as_u64().unwrap();
    assert_eq!(figure("freezes"), 1, "{figures}");
    assert_eq!(figure("kills"), 1, "{figures}");
    assert!(
        figure("spooled_202") > 0,
        "the freeze must spool: {figures}"
    );
    assert!(
        figure("answered_2xx") > 3_000,
        "most of the minute's load answered: {figures}"
    );
    assert_eq!(figure("lost"), 0, "{figures}\n{stderr}");
    assert_eq!(figure("order_violations"), 0, "{figures}\n{stderr}");
    assert_eq!(figure("leads_on_several_partitions"), 0, "{figures}");
    assert!(output.status.success(), "{}:\n{stderr}", output.status);
}
