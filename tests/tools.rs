//! `superfone-bridge send` and `tail` against a running bridge, broker and registry.
#![cfg(feature = "e2e")]

mod support;

use serde_json::Value;
use std::process::Command;
use support::{fixture, stack, stdout_of, Bridge, BridgeOptions, SECRET};

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

fn json_lines(command: &mut Command) -> Vec<Value> {
    stdout_of(command)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first record of the ALL_CALLS topic, as `tail` prints it.
fn tail_first_all_calls(bridge: &Bridge) -> Value {
    let lines = json_lines(tool(bridge).args([
        "tail",
        "ALL_CALLS",
        "--from-beginning",
        "--max",
        "1",
        "--idle-exit-secs",
        "20",
    ]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

#[test]
fn send_posts_fixtures_and_tail_prints_them_decoded() {
    let bridge = Bridge::start(BridgeOptions::default());
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let sent = json_lines(
        tool(&bridge)
            .args(["send", "--url", &bridge.ingest_url()])
            .arg(format!("{fixtures}/all_calls.json"))
            .arg(format!("{fixtures}/cdr_summary_ready.json")),
    );
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|line| line["status"] == 200 && line["response"]["status"] == "published"),
        "{sent:?}"
    );

    let record = &tail_first_all_calls(&bridge);
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

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_replay_resubmits_after_a_schema_fix_keeping_the_group_id() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let auth = format!("Bearer {SECRET}");
    let mut numeric_disposition = fixture("ALL_CALLS");
    numeric_disposition["cdr_disposition"] = serde_json::json!(5);
    let headers = [("x-superfone-group-id", "g-replay-1")];
    let (status, reply) = support::post_with(
        &client,
        &bridge.ingest_url(),
        numeric_disposition.to_string(),
        Some(&auth),
        &headers,
    )
    .await;
    assert_eq!(
        (status, reply["field"].as_str()),
        (422, Some("cdr_disposition")),
        "{reply}"
    );
    assert_eq!(
        support::post(&client, &bridge, "not json at all").await.0,
        400
    );

    // The fix: cdr_disposition may now also be a number (backward compatible).
    let fixed = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::create_dir(fixed.path().join("types")).unwrap();
    for entry in std::fs::read_dir(source.join("types")).unwrap().flatten() {
        std::fs::copy(
            entry.path(),
            fixed.path().join("types").join(entry.file_name()),
        )
        .unwrap();
    }
    for entry in std::fs::read_dir(&source)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
    {
        let mut schema: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        if entry.file_name() == "all_calls.avsc" {
            let fields = schema["fields"].as_array_mut().unwrap();
            let field = fields
                .iter_mut()
                .find(|f| f["name"] == "cdr_disposition")
                .unwrap();
            field["type"] = serde_json::json!(["string", "long"]);
        }
        std::fs::write(fixed.path().join(entry.file_name()), schema.to_string()).unwrap();
    }

    let replay = |extra: &[&str]| {
        json_lines(
            tool(&bridge)
                .env("SUPERFONE_BRIDGE_REGISTRY__SCHEMAS_DIR", fixed.path())
                .args(["dead-letter", "replay", "--idle-exit-secs", "3"])
                .args(extra),
        )
    };
    let lines = replay(&[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let replayed = lines
        .iter()
        .find(|l| l["status"] == "replayed")
        .expect("one replayed");
    assert_eq!(replayed["event"], "ALL_CALLS");
    assert_eq!(
        replayed["group_id"], "g-replay-1",
        "the original group id is kept"
    );
    assert!(
        lines.iter().any(|l| l["status"] == "still_invalid"),
        "{lines:?}"
    );
    assert!(
        replay(&[]).is_empty(),
        "a second run continues after the first"
    );

    let record = &tail_first_all_calls(&bridge);
    assert_eq!(record["headers"]["superfone-group-id"], "g-replay-1");
    assert!(record["headers"]["superfone-replayed-from"]
        .as_str()
        .unwrap()
        .starts_with(&bridge.dead_letter_topic()));
    assert_eq!(record["value"]["cdr_disposition"], 5);
}
