//! The recording copier against the real bridge, broker and registry, a
//! local recording source and a file store: each CDR_RECORDING_AVAILABLE
//! event ends in one pointer record on `<prefix>recording_copies` (read
//! back through Confluent's deserializer), a stored copy is the source's
//! bytes with their SHA-256, a dead link ends `expired`, a link to a host
//! not allowed ends `refused` without a request, and no log line carries
//! a link's signature.
#![cfg(feature = "e2e")]

mod support;

use sha2::{Digest, Sha256};
use std::time::Duration;
use support::source::{recording_bytes, Source, SIGNATURE};
use support::{consume, fixture, post, Bridge, BridgeOptions};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// `X-Amz-Date` of a link signed `ago` before now.
fn signed(ago: time::Duration) -> String {
    amz_date(OffsetDateTime::now_utc() - ago)
}

fn amz_date(at: OffsetDateTime) -> String {
    at.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap()
}

fn instant(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap()
}

/// Each recording event says when its link expires: a SigV4 link by its
/// signature date and lifetime, any other 7 days after receipt.
fn assert_expiry_headers(bridge: &Bridge, fresh_signed: &OffsetDateTime) {
    let events = consume(&bridge.topic("CDR_RECORDING_AVAILABLE"), 3, false);
    let header = |cdr_id: i64, name: &str| {
        let event = events
            .iter()
            .find(|e| e["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("no event {cdr_id}: {events:#?}"));
        instant(
            event["headers"][name]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {event}")),
        )
    };
    let whole_seconds = fresh_signed.replace_nanosecond(0).unwrap();
    assert_eq!(
        header(1001, "superfone-recording-url-expires-at"),
        whole_seconds + time::Duration::days(7)
    );
    assert_eq!(
        header(1003, "superfone-recording-url-expires-at"),
        header(1003, "superfone-received-at") + time::Duration::days(7)
    );
}

/// `tail` shows recording links without their signature unless asked.
fn assert_tail_hides_signatures(bridge: &Bridge) {
    let stack = support::stack();
    let tail = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
        command
            .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
            .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
            .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", &bridge.prefix)
            .env_remove("RUST_LOG")
            .args(["tail", "CDR_RECORDING_AVAILABLE", "--from-beginning"])
            .args(["--max", "3", "--idle-exit-secs", "20"])
            .args(extra);
        support::stdout_of(&mut command)
    };
    let hidden = tail(&[]);
    assert_eq!(hidden.lines().count(), 3, "{hidden}");
    assert!(!hidden.contains(SIGNATURE), "{hidden}");
    assert!(
        hidden.contains("http://localhost:"),
        "the link without its query: {hidden}"
    );
    assert!(tail(&["--show-secrets"]).contains(SIGNATURE));
}

fn recording_event(cdr_id: i64, url: &str) -> serde_json::Value {
    let mut event = fixture("cdr_recording_available");
    event["cdr_id"] = cdr_id.into();
    event["cdr_recording_url"] = url.into();
    event
}

/// A bridge whose copier writes to `store` and may fetch from loopback.
fn copying_bridge(store: &std::path::Path) -> Bridge {
    let options = BridgeOptions::default();
    let group = format!("{}recordings", options.prefix);
    Bridge::start(
        options
            .with("RECORDINGS__ENABLED", "true")
            .with(
                "RECORDINGS__STORE_URL",
                format!("file://{}", store.display()),
            )
            .with("RECORDINGS__ALLOWED_HOSTS", "localhost")
            .with("RECORDINGS__ALLOW_PRIVATE_NETWORKS", "true")
            .with("RECORDINGS__ALLOW_PLAIN_HTTP", "true")
            .with("RECORDINGS__GROUP_ID", group),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_recording_ends_in_one_pointer_record_and_a_stored_copy_is_intact() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = copying_bridge(store.path());
    let client = support::client();
    let size = 3 * 1024 * 1024 + 17;
    let fresh_signed = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let fresh = source.link(
        "1001.mp3",
        size,
        &amz_date(fresh_signed),
        604_800,
        "",
    );
    let dead = source.link(
        "1002.mp3",
        10,
        &signed(time::Duration::days(8)),
        604_800,
        "&status=403",
    );
    let elsewhere = format!("https://recordings.evil.example/1003.mp3?X-Amz-Signature={SIGNATURE}");
    for (cdr_id, url) in [(1001, &fresh), (1002, &dead), (1003, &elsewhere)] {
        let (status, body) = post(&client, &bridge, recording_event(cdr_id, url).to_string()).await;
        assert!((200..300).contains(&status), "{body}");
    }

    let pointers = consume(&format!("{}recording_copies", bridge.prefix), 3, false);
    assert_eq!(
        pointers.len(),
        3,
        "one pointer record per recording: {pointers:#?}"
    );
    let by_id = |cdr_id: i64| {
        pointers
            .iter()
            .find(|p| p["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("no pointer for {cdr_id}: {pointers:#?}"))
    };

    let stored = by_id(1001);
    let value = &stored["value"];
    assert_eq!(value["status"], "stored", "{stored}");
    assert_eq!(stored["key"], "12345", "keyed like its recording event");
    assert_eq!(stored["headers"]["superfone-event"], "RECORDING_COPY");
    let expected = recording_bytes("1001.mp3", size);
    let object = value["object_url"].as_str().unwrap();
    let path = object.strip_prefix("file://").expect("a file URL");
    assert!(
        path.ends_with("/2026/05/15/1001.mp3"),
        "named by call date and cdr_id: {object}"
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        expected,
        "the copy is the recording"
    );
    let sha256: String = Sha256::digest(&expected)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(value["sha256"], sha256);
    assert_eq!(value["bytes"], size as u64);
    assert_eq!(value["content_type"], "audio/mpeg");
    assert!(value["error"].is_null());

    assert_eq!(by_id(1002)["value"]["status"], "expired");
    assert!(by_id(1002)["value"]["object_url"].is_null());
    let refused = &by_id(1003)["value"];
    assert_eq!(refused["status"], "refused", "{refused}");
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("recordings.evil.example"));

    assert_eq!(source.requests(), 2, "the refused link was never fetched");
    assert_expiry_headers(&bridge, &fresh_signed);
    assert_tail_hides_signatures(&bridge);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = bridge.log_text();
    assert!(
        !logs.contains(SIGNATURE),
        "a link's signature reached the log"
    );
    for pointer in &pointers {
        assert!(!pointer.to_string().contains(SIGNATURE), "{pointer}");
    }
}
