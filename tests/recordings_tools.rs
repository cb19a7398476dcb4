//! The operator's recording commands against a copying bridge, the real
//! broker and registry, a local recording source and a file store:
//! `recordings list --pending` shows the recording the copier is still
//! trying (and nothing else), `recordings list --failed` the expired and
//! the refused ones with their reasons, `recordings retry` refuses a dead
//! link, copies a refused one again once `max_bytes` is raised (a new
//! `stored` pointer record, read back through Confluent's deserializer,
//! with the source's bytes), and gives up on a still-failing source after
//! `--timeout-secs`. No output ever carries a link's signature.
#![cfg(feature = "e2e")]

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::source::{recording_bytes, Source, SIGNATURE};
use support::{consume, fixture, post, Bridge, BridgeOptions};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

const WEEK: i64 = 604_800;

fn amz_date(at: OffsetDateTime) -> String {
    at.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap()
}

fn recording_event(cdr_id: i64, cdr_uuid: &str, url: &str) -> Value {
    let mut event = fixture("cdr_recording_available");
    event["cdr_id"] = cdr_id.into();
    event["cdr_uuid"] = cdr_uuid.into();
    event["cdr_recording_url"] = url.into();
    event
}

/// What one run of a command printed, and whether it succeeded.
struct Ran {
    passed: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    /// Neither stream carries a link's signature.
    fn assert_no_signature(&self) {
        assert!(
            !self.stdout.contains(SIGNATURE) && !self.stderr.contains(SIGNATURE),
            "a link's signature was printed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "passed: {}\nstdout:\n{}stderr:\n{}",
            self.passed, self.stdout, self.stderr
        )
    }
}

/// `superfone-bridge recordings ARGS` for `prefix` on the test stack, with
/// `env` (`SUPERFONE_BRIDGE_*` overrides) on top; off the async runtime.
async fn recordings(prefix: &str, env: &[(&str, String)], args: &[&str]) -> Ran {
    let stack = support::stack();
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command
        .env_remove("RUST_LOG")
        .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
        .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
        .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", prefix)
        .arg("recordings")
        .args(args);
    for (key, value) in env {
        command.env(format!("SUPERFONE_BRIDGE_{key}"), value);
    }
    let started = Instant::now();
    let output: Output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Ran {
        passed: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// The copier's settings for the local source and store, with `max_bytes`.
fn copying_env(store: &std::path::Path, max_bytes: u64) -> Vec<(&'static str, String)> {
    vec![
        (
            "RECORDINGS__STORE_URL",
            format!("file://{}", store.display()),
        ),
        ("RECORDINGS__ALLOWED_HOSTS", "localhost".into()),
        ("RECORDINGS__ALLOW_PRIVATE_NETWORKS", "true".into()),
        ("RECORDINGS__ALLOW_PLAIN_HTTP", "true".into()),
        ("RECORDINGS__MAX_BYTES", max_bytes.to_string()),
    ]
}

fn pointer_of(pointers: &[Value], cdr_id: i64) -> Vec<&Value> {
    pointers
        .iter()
        .filter(|p| p["value"]["cdr_id"] == cdr_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_and_retry_mends_the_recordings_the_copier_could_not_copy() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let mut options = BridgeOptions::default().with("RECORDINGS__ENABLED", "true");
    let group = format!("{}recordings", options.prefix);
    for (key, value) in copying_env(store.path(), 4096) {
        options = options.with(key, value);
    }
    let bridge = Bridge::start(options.with("RECORDINGS__GROUP_ID", group));
    let prefix = bridge.prefix.clone();
    let pointer_topic = format!("{prefix}recording_copies");
    let signed_at = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let signed = amz_date(signed_at);
    let long_ago = amz_date(OffsetDateTime::now_utc() - time::Duration::days(8));
    let events = [
        (
            2001,
            "c0ffee-2001",
            source.link("2001.mp3", 1000, &signed, 604_800, ""),
        ),
        (
            2002,
            "c0ffee-2002",
            source.link("2002.mp3", 10, &long_ago, 604_800, "&status=403"),
        ),
        // The source fails now and the link lives: the copier keeps trying.
        (
            2003,
            "c0ffee-2003",
            source.link("2003.mp3", 10, &signed, 604_800, "&status=503"),
        ),
        // Larger than the bridge's max_bytes (4096).
        (
            2004,
            "c0ffee-2004",
            source.link("2004.mp3", 10_000, &signed, 604_800, ""),
        ),
    ];
    let client = support::client();
    let mut group_ids = std::collections::HashMap::new();
    for (cdr_id, cdr_uuid, url) in &events {
        let event = recording_event(*cdr_id, cdr_uuid, url).to_string();
        let (status, body) = post(&client, &bridge, event).await;
        assert!((200..300).contains(&status), "{body}");
        group_ids.insert(*cdr_id, body["group_id"].as_str().unwrap().to_owned());
    }
    let pointers = consume(&pointer_topic, 3, false);
    assert_eq!(
        pointers.len(),
        3,
        "2003 is still being tried: {pointers:#?}"
    );
    assert_eq!(pointer_of(&pointers, 2001)[0]["value"]["status"], "stored");
    assert_eq!(pointer_of(&pointers, 2004)[0]["value"]["status"], "refused");

    // --pending: 2003 alone, with the expiry its event was stamped with.
    let pending = recordings(&prefix, &[], &["list", "--pending"]).await;
    assert!(pending.passed, "{pending}");
    pending.assert_no_signature();
    assert!(pending.took < Duration::from_secs(20), "{:?}", pending.took);
    let lines = pending.lines();
    assert_eq!(lines.len(), 1, "{pending}");
    let line = &lines[0];
    let expires_at = signed_at.replace_nanosecond(0).unwrap() + time::Duration::days(7);
    assert_eq!(line["cdr_id"], 2003);
    assert_eq!(line["cdr_uuid"], "c0ffee-2003");
    assert_eq!(line["contact_id"], 12345);
    assert_eq!(line["group_id"], group_ids[&2003].as_str());
    assert_eq!(line["expires_at"], expires_at.format(&Rfc3339).unwrap());
    let left = line["time_left_secs"].as_i64().unwrap();
    assert!((WEEK - 180..=WEEK - 60).contains(&left), "{line}");
    assert_eq!(
        line["link"],
        format!("http://localhost:{}/rec/2003.mp3", source.port),
        "the link without its query"
    );
    assert!(
        pending.stderr.contains("1 pending recording(s)"),
        "{pending}"
    );

    // --failed: the expired and the refused one, by cdr_id.
    let failed = recordings(&prefix, &[], &["list", "--failed"]).await;
    assert!(failed.passed, "{failed}");
    failed.assert_no_signature();
    let lines = failed.lines();
    let ids: Vec<&Value> = lines.iter().map(|line| &line["cdr_id"]).collect();
    assert_eq!(ids, [2002, 2004], "{failed}");
    let (expired, refused) = (&lines[0], &lines[1]);
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["retryable"], false, "its link is dead: {expired}");
    assert!(expired["time_left_secs"].as_i64().unwrap() < 0, "{expired}");
    assert!(
        expired["error"].as_str().unwrap().contains("403"),
        "{expired}"
    );
    assert_eq!(refused["status"], "refused");
    assert_eq!(refused["retryable"], true, "{refused}");
    assert_eq!(refused["group_id"], group_ids[&2004].as_str());
    assert!(
        refused["error"].as_str().unwrap().contains("max_bytes"),
        "{refused}"
    );

    // A dead link is refused, and an unknown id named, with exit 1.
    let dead = recordings(
        &prefix,
        &copying_env(store.path(), 1 << 20),
        &["retry", "2002"],
    )
    .await;
    assert!(!dead.passed, "{dead}");
    dead.assert_no_signature();
    let line = &dead.lines()[0];
    assert_eq!(line["status"], "not_retried", "{dead}");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the link expired at"),
        "{dead}"
    );
    assert!(dead.stderr.contains("1 recording(s) not stored"), "{dead}");
    let unknown = recordings(
        &prefix,
        &copying_env(store.path(), 1 << 20),
        &["retry", "9999"],
    )
    .await;
    assert!(!unknown.passed, "{unknown}");
    assert!(
        unknown
            .stdout
            .contains("no recording event with cdr_id or cdr_uuid 9999"),
        "{unknown}"
    );

    // --failed with max_bytes raised: 2004 is stored, 2002 left alone.
    let mended = recordings(
        &prefix,
        &copying_env(store.path(), 1 << 20),
        &["retry", "--failed"],
    )
    .await;
    assert!(mended.passed, "{mended}");
    mended.assert_no_signature();
    let lines = mended.lines();
    assert_eq!(lines.len(), 1, "{mended}");
    assert_eq!(lines[0]["cdr_id"], 2004);
    assert_eq!(lines[0]["status"], "stored", "{mended}");
    assert!(
        mended.stderr.contains("1 failed recording(s) left alone"),
        "{mended}"
    );
    let expected = recording_bytes("2004.mp3", 10_000);
    let sha256: String = Sha256::digest(&expected)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pointers = consume(&pointer_topic, 4, false);
    let retried = pointer_of(&pointers, 2004);
    assert_eq!(retried.len(), 2, "{pointers:#?}");
    let stored = retried[1];
    assert_eq!(stored["value"]["status"], "stored", "{stored}");
    assert_eq!(stored["value"]["sha256"], sha256.as_str());
    assert_eq!(stored["value"]["bytes"], 10_000);
    assert_eq!(stored["key"], "12345", "keyed like its recording event");
    assert_eq!(
        stored["headers"]["superfone-group-id"],
        group_ids[&2004].as_str()
    );
    let object = stored["value"]["object_url"].as_str().unwrap();
    assert_eq!(lines[0]["object_url"], object);
    assert_eq!(
        std::fs::read(object.strip_prefix("file://").unwrap()).unwrap(),
        expected
    );

    // The source still fails: a retry by cdr_uuid gives up after its timeout.
    let started = Instant::now();
    let gave_up = recordings(
        &prefix,
        &copying_env(store.path(), 1 << 20),
        &["retry", "c0ffee-2003", "--timeout-secs", "1"],
    )
    .await;
    assert!(!gave_up.passed, "{gave_up}");
    assert!(started.elapsed() < Duration::from_secs(30), "{gave_up}");
    gave_up.assert_no_signature();
    let line = &gave_up.lines()[0];
    assert_eq!(line["cdr_id"], 2003);
    assert_eq!(
        line["status"], "failed",
        "not expired: the link lives: {gave_up}"
    );
    assert!(line["error"].as_str().unwrap().contains("503"), "{gave_up}");

    // The latest pointer record decides: 2004 is no longer failed, 2003 is.
    let failed = recordings(&prefix, &[], &["list", "--failed"]).await;
    let lines = failed.lines();
    let listed: Vec<(i64, &str)> = lines
        .iter()
        .map(|l| (l["cdr_id"].as_i64().unwrap(), l["status"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [(2002, "expired"), (2003, "failed")], "{failed}");
    assert_eq!(lines[1]["retryable"], true);
    let pending = recordings(&prefix, &[], &["list", "--pending"]).await;
    assert!(pending.passed && pending.stdout.is_empty(), "{pending}");
    assert!(!bridge.log_text().contains(SIGNATURE));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_copier_every_recording_is_pending_and_none_failed() {
    // No pointer topic at all: the copier never ran.
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let url = format!("https://recordings.s3.amazonaws.com/a/3001.mp3?X-Amz-Signature={SIGNATURE}");
    let (status, body) = post(
        &client,
        &bridge,
        recording_event(3001, "u-3001", &url).to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "{body}");

    let pending = recordings(&bridge.prefix, &[], &["list", "--pending"]).await;
    assert!(pending.passed, "{pending}");
    pending.assert_no_signature();
    let lines = pending.lines();
    assert_eq!(lines.len(), 1, "{pending}");
    assert_eq!(lines[0]["cdr_id"], 3001);
    assert_eq!(
        lines[0]["link"],
        "https://recordings.s3.amazonaws.com/a/3001.mp3"
    );
    // Not a SigV4 link: 7 days from receipt.
    let left = lines[0]["time_left_secs"].as_i64().unwrap();
    assert!((WEEK - 120..=WEEK).contains(&left), "{pending}");

    let failed = recordings(&bridge.prefix, &[], &["list", "--failed"]).await;
    assert!(failed.passed, "{failed}");
    assert!(failed.stdout.is_empty(), "{failed}");
    assert!(failed.stderr.contains("0 failed recording(s)"), "{failed}");

    let elsewhere = recordings(&support::unique_prefix(), &[], &["list", "--pending"]).await;
    assert!(
        !elsewhere.passed,
        "no recording topic under this prefix: {elsewhere}"
    );
    assert!(elsewhere.stderr.contains("does not exist"), "{elsewhere}");
}
