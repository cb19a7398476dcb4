//! `superfone-bridge send` and `tail` against a running bridge, broker and registry.

mod support;

use serde_json::Value;
use std::process::Command;
use support::{fixture, stack, Bridge, BridgeOptions, SECRET};

fn tool(bridge: &Bridge) -> Command {
    let stack = stack();
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command
        .env("SUPERFONE_AUTH_SECRETS", SECRET)
        .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
        .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
        .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", &bridge.prefix)
        .env_remove("RUST_LOG");
    command
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn send_posts_fixtures_and_tail_prints_them_decoded() {
    let bridge = Bridge::start(BridgeOptions::default());
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let sent = json_lines(
        &tool(&bridge)
            .args(["send", "--url", &bridge.ingest_url()])
            .arg(format!("{fixtures}/all_calls.json"))
            .arg(format!("{fixtures}/cdr_summary_ready.json"))
            .output()
            .unwrap(),
    );
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|line| line["status"] == 200 && line["response"]["status"] == "published"),
        "{sent:?}"
    );

    let tailed = json_lines(
        &tool(&bridge)
            .args([
                "tail",
                "ALL_CALLS",
                "--from-beginning",
                "--max",
                "1",
                "--idle-exit-secs",
                "20",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(tailed.len(), 1);
    let record = &tailed[0];
    let input = fixture("ALL_CALLS");
    assert_eq!(record["topic"], bridge.topic("ALL_CALLS"));
    assert_eq!(record["key"], "12345");
    assert_eq!(record["offset"], sent[0]["response"]["offset"]);
    assert_eq!(
        record["headers"]["superfone-group-id"],
        sent[0]["response"]["group_id"]
    );
    assert_eq!(record["value"]["contact_labels"], input["contact_labels"]);
    assert_eq!(record["value"]["cdr_disposition"], "ANSWER");
    assert_eq!(
        record["value"]["cdr_start"], "2026-05-15T10:30:00Z",
        "timestamps print as RFC 3339"
    );

    // A wrong secret: the bridge refuses, and `send` says so with its exit code.
    let refused = tool(&bridge)
        .env("SUPERFONE_AUTH_SECRETS", "wrong")
        .args([
            "send",
            "--url",
            &bridge.ingest_url(),
            &format!("{fixtures}/task_create.json"),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("\"status\":401"));
}
