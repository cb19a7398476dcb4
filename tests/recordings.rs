//! The recording copier against the real bridge, broker and registry, a
//! local recording source and a file store: each CDR_RECORDING_AVAILABLE
//! event ends in one pointer record on `<prefix>recording_copies` (read
//! back through Confluent's deserializer), a stored copy is the source's
//! bytes with their SHA-256, a dead link ends `expired`, a link to a host
//! not allowed ends `refused` without a request, and no log line carries
//! a link's signature. The same against a real S3 API (moto's server, read
//! back with boto3), and links the default policy forbids (plain http,
//! loopback) refused before any request; and `recordings run` alone, with
//! its admin listener; a copy as a span in its event's trace.
#![cfg(feature = "e2e")]

mod support;

use sha2::Digest;
use std::time::Duration;
use support::source::{
    amz_date, copying_options, file_of, hex, recording_bytes, recording_event, signed, Source,
    SIGNATURE,
};
use support::store::S3;
use support::{consume, post, Bridge, BridgeOptions};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

/// A body that is no JSON is kept whole on the dead-letter topic; `tail`
/// still hides the signature of a link inside it.
async fn assert_dead_letter_tail_hides_signatures(
    client: &reqwest::Client,
    bridge: &Bridge,
    link: &str,
) {
    let body = recording_event(1009, 12345, link).to_string();
    let truncated = body[..body.len() - 2].to_owned();
    let (status, answer) = post(client, bridge, truncated).await;
    assert!(status < 500, "{status} {answer}");
    let stack = support::stack();
    let tail = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
        command
            .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
            .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
            .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", &bridge.prefix)
            .env_remove("RUST_LOG")
            .args(["tail", "dead_letter", "--from-beginning"])
            .args(["--max", "1", "--idle-exit-secs", "20"])
            .args(extra);
        support::stdout_of(&mut command)
    };
    let hidden = tail(&[]);
    assert!(hidden.contains("1009"), "the raw body: {hidden}");
    assert!(!hidden.contains(SIGNATURE), "{hidden}");
    assert!(tail(&["--show-secrets"]).contains(SIGNATURE));
}

/// A bridge whose copier writes to the directory `store`.
fn copying_bridge(store: &std::path::Path) -> Bridge {
    Bridge::start(copying_options(
        &format!("file://{}", store.display()),
        None,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_recording_ends_in_one_pointer_record_and_a_stored_copy_is_intact() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = copying_bridge(store.path());
    let client = support::client();
    let size = 3 * 1024 * 1024 + 17;
    let fresh_signed = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let fresh = source.link("1001.mp3", size, &amz_date(fresh_signed), 604_800, "");
    let dead = source.link(
        "1002.mp3",
        10,
        &signed(time::Duration::days(8)),
        604_800,
        "&status=403",
    );
    let elsewhere = format!("https://recordings.evil.example/1003.mp3?X-Amz-Signature={SIGNATURE}");
    for (cdr_id, url) in [(1001, &fresh), (1002, &dead), (1003, &elsewhere)] {
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(cdr_id, 12345, url).to_string(),
        )
        .await;
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
    let path = file_of(object);
    assert!(
        path.ends_with("2026/05/15/1001.mp3"),
        "named by call date and cdr_id: {object}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        expected,
        "the copy is the recording"
    );
    let sha256 = hex(&sha2::Sha256::digest(&expected));
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
    assert_dead_letter_tail_hides_signatures(&client, &bridge, &fresh).await;
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

/// A copy is a span in its event's trace (under the span that published
/// the event), its pointer record continues from that span, and neither
/// the span of a stored copy nor that of a refused one carries a signature.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_continues_its_events_trace_without_the_signature() {
    let collector = support::Collector::start();
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let mut options = copying_options(&format!("file://{}", store.path().display()), None)
        .with(
            "TRACING__ENDPOINT",
            format!("http://127.0.0.1:{}", collector.http_port),
        )
        .with("TRACING__PROTOCOL", "http/protobuf");
    options
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let bridge = Bridge::start(options);
    let client = support::client();
    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{incoming_trace}-00f067aa0ba902b7-01");
    let size = 64 * 1024;
    let fresh = source.link(
        "2001.mp3",
        size,
        &signed(time::Duration::minutes(1)),
        604_800,
        "",
    );
    let elsewhere = format!("https://recordings.evil.example/2002.mp3?X-Amz-Signature={SIGNATURE}");
    for (cdr_id, url) in [(2001, &fresh), (2002, &elsewhere)] {
        let (status, body) = support::post_with(
            &client,
            &bridge.ingest_url(),
            recording_event(cdr_id, 12345, url).to_string(),
            Some(&format!("Bearer {}", support::SECRET)),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
        assert!((200..300).contains(&status), "{body}");
    }

    let pointers = consume(&format!("{}recording_copies", bridge.prefix), 2, false);
    let events = consume(&bridge.topic("CDR_RECORDING_AVAILABLE"), 2, false);
    for cdr_id in [2001, 2002] {
        let event = events
            .iter()
            .find(|e| e["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("no event {cdr_id}: {events:#?}"));
        let event_span = trace_parts(&event["headers"]["traceparent"]).1;
        let copy = collector.wait_for("superfone.recording_copy", |s| {
            s.name == "superfone.recording_copy"
                && s.attributes.get("superfone.cdr_id").map(String::as_str)
                    == Some(&cdr_id.to_string())
        });
        assert_eq!(copy.trace_id, incoming_trace, "in the event's trace");
        assert_eq!(
            copy.parent_id, event_span,
            "under the span that published the event"
        );
        assert_eq!(copy.kind, "SPAN_KIND_CONSUMER");
        let url = &copy.attributes["url.full"];
        assert!(
            url.ends_with(&format!("{cdr_id}.mp3")) && !url.contains('?'),
            "{url}"
        );
        let pointer = pointers
            .iter()
            .find(|p| p["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("no pointer {cdr_id}: {pointers:#?}"));
        assert_eq!(
            trace_parts(&pointer["headers"]["traceparent"]),
            (incoming_trace.to_owned(), copy.span_id.clone()),
            "the pointer record continues from the copy's span"
        );
        assert_eq!(
            copy.attributes["superfone.recording.status"],
            pointer["value"]["status"].as_str().unwrap()
        );
        assert_eq!(
            copy.attributes["superfone.pointer.offset"],
            pointer["offset"].to_string()
        );
    }
    let stored = collector.wait_for("the stored copy", |s| {
        s.attributes
            .get("superfone.recording.status")
            .map(String::as_str)
            == Some("stored")
    });
    assert_eq!(
        stored.attributes["superfone.recording.bytes"],
        size.to_string()
    );
    assert!(
        !collector.text().contains(SIGNATURE),
        "a link's signature reached a span"
    );
}

/// The trace id and span id of a `traceparent` header.
fn trace_parts(header: &serde_json::Value) -> (String, String) {
    let header = header.as_str().expect("a traceparent header");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_in_s3_read_back_through_boto3_are_the_recordings() {
    let source = Source::start().await;
    let s3 = S3::start("recordings");
    let mut options = copying_options("s3://recordings/calls", None);
    options.env.extend(S3::bridge_env(&s3.endpoint()));
    let bridge = Bridge::start(options);
    let client = support::client();
    // Past one 5 MiB part, so the upload is multipart; and a small one.
    let sizes = [(1101, 12 * 1024 * 1024 + 5), (1102, 1000)];
    for (cdr_id, size) in sizes {
        let link = source.link(
            &format!("{cdr_id}.mp3"),
            size,
            &signed(time::Duration::minutes(1)),
            604_800,
            "",
        );
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(cdr_id, 77, &link).to_string(),
        )
        .await;
        assert!((200..300).contains(&status), "{body}");
    }

    let pointers = consume(&format!("{}recording_copies", bridge.prefix), 2, false);
    assert_eq!(pointers.len(), 2, "{pointers:#?}");
    for (cdr_id, size) in sizes {
        let pointer = &pointers
            .iter()
            .find(|p| p["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("no pointer for {cdr_id}: {pointers:#?}"))["value"];
        assert_eq!(pointer["status"], "stored", "{pointer}");
        let key = format!("calls/2026/05/15/{cdr_id}.mp3");
        assert_eq!(pointer["object_url"], format!("s3://recordings/{key}"));
        let expected = support::source::recording_sha256(&format!("{cdr_id}.mp3"), size);
        assert_eq!(
            s3.object(&key),
            (size as u64, expected.clone()),
            "boto3 reads back the recording"
        );
        assert_eq!(pointer["sha256"], expected);
    }
    assert_eq!(s3.keys().len(), 2, "no stray objects: {:?}", s3.keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn links_the_default_policy_forbids_are_refused_before_any_request() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let options = BridgeOptions::default();
    let group = format!("{}recordings", options.prefix);
    // The defaults, but for the host list: localhost is allowed by name,
    // so only the scheme, address and port rules stand in the way.
    let bridge = Bridge::start(
        options
            .with("RECORDINGS__ENABLED", "true")
            .with(
                "RECORDINGS__STORE_URL",
                format!("file://{}", store.path().display()),
            )
            .with("RECORDINGS__ALLOWED_HOSTS", "localhost,127.0.0.1")
            .with("RECORDINGS__GROUP_ID", group),
    );
    let client = support::client();
    let plain = source.link("1201.mp3", 10, &signed(time::Duration::ZERO), 3600, "");
    let loopback_name = plain.replacen("http://", "https://", 1);
    let loopback_ip = loopback_name.replacen("localhost", "127.0.0.1", 1);
    let links = [(1201, &plain), (1202, &loopback_name), (1203, &loopback_ip)];
    for (cdr_id, link) in links {
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(cdr_id, 5, link).to_string(),
        )
        .await;
        assert!((200..300).contains(&status), "{body}");
    }
    let pointers = consume(&format!("{}recording_copies", bridge.prefix), 3, false);
    assert_eq!(pointers.len(), 3, "{pointers:#?}");
    // The name's address is checked when it resolves (unit-tested in
    // recordings::source); here its ephemeral port is refused first.
    for (cdr_id, why) in [
        (1201, "(https only)"),
        (1202, "port"),
        (1203, "not a public address"),
    ] {
        let value = &pointers
            .iter()
            .find(|p| p["value"]["cdr_id"] == cdr_id)
            .unwrap_or_else(|| panic!("{cdr_id}: {pointers:#?}"))["value"];
        assert_eq!(value["status"], "refused", "{value}");
        assert!(value["object_url"].is_null());
        let error = value["error"].as_str().unwrap();
        assert!(error.contains(why), "{cdr_id}: {error}");
        assert!(!error.contains(SIGNATURE));
    }
    assert_eq!(source.requests(), 0, "no request reached the source");
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
}

/// `recordings run` alone, beside a `serve` that does not copy: its admin
/// listener says whether its copier runs (not while the registry is
/// unreachable), its metrics count the copies, and SIGTERM ends it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_copier_alone_serves_its_readiness_and_metrics() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let client = support::client();
    let alone = |options: BridgeOptions| BridgeOptions {
        command: vec!["recordings".into(), "run".into()],
        ..options
    };

    let mut no_registry = alone(copying_options(&store_url, None));
    no_registry.registry_url = Some("http://127.0.0.1:9".into());
    let stranded = Bridge::start(no_registry);
    let (alive, _) = support::admin_get(&client, &stranded, "/healthz").await;
    assert_eq!(alive, 200);
    let (ready, body) = support::admin_get(&client, &stranded, "/readyz").await;
    assert_eq!(ready, 503, "no copier without its pointer schema: {body}");
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("recording copier not running"),
        "{body}"
    );
    drop(stranded);

    let mut copier = Bridge::start(alone(copying_options(&store_url, None)));
    let prefix = copier.prefix.clone();
    let serving = Bridge::start(BridgeOptions {
        prefix,
        ..BridgeOptions::default()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while support::admin_get(&client, &copier, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the copier never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let link = source.link("1301.mp3", 4096, &signed(time::Duration::ZERO), 3600, "");
    let (status, body) = post(
        &client,
        &serving,
        recording_event(1301, 7, &link).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pointers = consume(&format!("{}recording_copies", copier.prefix), 1, false);
    assert_eq!(pointers[0]["value"]["status"], "stored", "{pointers:#?}");
    let metrics = support::metrics_text(&client, &copier).await;
    for series in [
        "superfone_recordings_total{status=\"stored\"} 1",
        "superfone_recordings_total{status=\"failed\"} 0",
        "superfone_recording_bytes_total 4096",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let (_, status) = support::admin_get(&client, &copier, "/status").await;
    assert_eq!(status["recordings"]["running"], true, "{status}");
    assert_eq!(status["recordings"]["pending"], 0, "{status}");

    copier.terminate();
    let exit = copier.wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
}
