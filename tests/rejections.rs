//! What the bridge refuses, and that refused input is either kept (dead-letter
//! topic, body unchanged, reason in headers) or never published (auth).
#![cfg(feature = "e2e")]

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{consume, fixture, post, post_with, Bridge, BridgeOptions, SECRET};

#[tokio::test(flavor = "multi_thread")]
async fn auth_rejects_missing_and_wrong_and_accepts_both_rotated_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secrets_file = dir.path().join("secrets");
    std::fs::write(&secrets_file, "new-rotated-secret\n").unwrap();
    let options = BridgeOptions {
        env: vec![("SUPERFONE_AUTH_SECRETS".into(), "old-rotated-secret".into())],
        ..BridgeOptions::default()
    };
    let bridge = Bridge::start(options.with("AUTH__SECRETS_FILE", secrets_file.display()));
    let client = support::client();
    let url = bridge.ingest_url();
    let body = fixture("CUSTOMER_CREATE").to_string();

    let (status, reply) = post_with(&client, &url, body.clone(), None, &[]).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (401, Some("unauthorized")),
        "{reply}"
    );
    for wrong in [
        "Bearer wrong",
        "old-rotated-secret",
        "Basic old-rotated-secret",
        "Bearer old-rotated-secre",
    ] {
        let (status, reply) = post_with(&client, &url, body.clone(), Some(wrong), &[]).await;
        assert_eq!(status, 401, "{wrong}: {reply}");
    }
    for (contact, accepted) in ["Bearer old-rotated-secret", "Bearer new-rotated-secret"]
        .iter()
        .enumerate()
    {
        let mut event = fixture("CUSTOMER_CREATE");
        event["contact_id"] = json!(contact);
        let (status, reply) =
            post_with(&client, &url, event.to_string(), Some(accepted), &[]).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{accepted}: {reply}"
        );
    }

    let published = consume(&bridge.topic("CUSTOMER_CREATE"), 2, false);
    assert_eq!(
        published.len(),
        2,
        "only the authenticated deliveries are published"
    );
    assert!(
        consume(&bridge.dead_letter_topic(), 0, true).is_empty(),
        "401s are not dead-lettered"
    );
    // Rotation without a restart: the file now names a third secret.
    let status_with = async |secret: &str| {
        let authorization = format!("Bearer {secret}");
        post_with(&client, &url, body.clone(), Some(&authorization), &[])
            .await
            .0
    };
    std::fs::write(&secrets_file, "third-rotated-secret\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while status_with("third-rotated-secret").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the changed file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status_with("new-rotated-secret").await,
        401,
        "the secret taken out of the file is refused"
    );
    // A file that turns weak is refused and the secrets in use are kept.
    std::fs::write(&secrets_file, "short\n").unwrap();
    while !bridge.log_text().contains("secrets in use are kept") {
        assert!(Instant::now() < deadline, "the weak file was not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status_with("third-rotated-secret").await, 200, "kept");

    let logs = bridge.log_text();
    assert!(logs.contains("rejected unauthenticated request"));
    assert!(
        logs.contains("secrets in use are kept"),
        "the weak file is reported"
    );
    for secret in [
        "old-rotated-secret",
        "new-rotated-secret",
        "third-rotated-secret",
    ] {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
}

struct BadInput {
    body: String,
    status: u16,
    reason: &'static str,
    field: Option<&'static str>,
}

fn bad_inputs() -> Vec<BadInput> {
    let mut bad_time = fixture("ALL_CALLS");
    bad_time["cdr_start"] = json!("yesterday");
    let mut no_task = fixture("TASK_CREATE");
    no_task.as_object_mut().unwrap().remove("task_id");
    let mut bad_phone = fixture("CUSTOMER_CREATE");
    bad_phone["contact_phones"][0]["phone"] = json!(5);
    let mut year_zero = fixture("ALL_CALLS");
    year_zero["cdr_start"] = json!("0000-01-01T00:00:00Z");
    let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let case = |body: String, status, reason, field| BadInput {
        body,
        status,
        reason,
        field,
    };
    vec![
        case("this is not json".into(), 400, "invalid_json", None),
        case(
            "{\"event\": \"ALL_CALLS\",".into(),
            400,
            "invalid_json",
            None,
        ),
        case("[1, 2, 3]".into(), 422, "not_an_object", None),
        case(too_deep, 422, "too_deep", None),
        case(
            r#"{"superfone_number": "+918000099999"}"#.into(),
            422,
            "missing_event",
            Some("event"),
        ),
        case(
            r#"{"event": "CALL_PARKED", "contact_id": 77}"#.into(),
            422,
            "unknown_event",
            Some("event"),
        ),
        case(
            bad_time.to_string(),
            422,
            "conversion_failed",
            Some("cdr_start"),
        ),
        // Accepted once, and then Confluent's deserializer could not decode it.
        case(
            year_zero.to_string(),
            422,
            "conversion_failed",
            Some("cdr_start"),
        ),
        case(
            no_task.to_string(),
            422,
            "conversion_failed",
            Some("task_id"),
        ),
        case(
            bad_phone.to_string(),
            422,
            "conversion_failed",
            Some("contact_phones[0].phone"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_dead_lettered_unchanged_with_the_right_status() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let cases = bad_inputs();
    let mut replies = Vec::new();
    for case in &cases {
        let (status, reply) = post(&client, &bridge, case.body.clone()).await;
        assert_eq!(status, case.status, "{}: {reply}", case.body);
        assert_eq!(reply["status"], "dead_lettered");
        assert_eq!(reply["reason"], case.reason);
        assert_eq!(reply["field"].as_str(), case.field, "{reply}");
        assert_eq!(reply["dead_letter"]["topic"], bridge.dead_letter_topic());
        assert!(reply["group_id"].as_str().is_some_and(|id| !id.is_empty()));
        replies.push(reply);
    }

    let records = consume(&bridge.dead_letter_topic(), cases.len(), true);
    assert_eq!(
        records.len(),
        cases.len(),
        "every bad input is kept exactly once"
    );
    for (case, reply) in cases.iter().zip(&replies) {
        let record = records
            .iter()
            .find(|r| {
                r["partition"] == reply["dead_letter"]["partition"]
                    && r["offset"] == reply["dead_letter"]["offset"]
            })
            .unwrap_or_else(|| panic!("no dead letter at {}", reply["dead_letter"]));
        assert_eq!(
            record["value"].as_str().unwrap(),
            case.body,
            "body kept unchanged"
        );
        let headers = &record["headers"];
        assert_eq!(headers["superfone-dead-letter-reason"], case.reason);
        assert_eq!(headers["superfone-dead-letter-field"].as_str(), case.field);
        assert_eq!(headers["superfone-group-id"], reply["group_id"]);
        assert!(headers["superfone-dead-letter-error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()));
    }
    // A known event that fails conversion keeps its lead's key, for replay in order.
    let unknown = records
        .iter()
        .find(|r| r["headers"]["superfone-dead-letter-reason"] == "unknown_event")
        .unwrap();
    assert_eq!(unknown["key"], "77");
    // Nothing reached the event topics.
    assert!(consume(&bridge.topic("ALL_CALLS"), 0, false).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_wrong_method_and_unknown_path_are_refused_and_not_published() {
    let bridge = Bridge::start(BridgeOptions::default().with("SERVER__MAX_BODY_BYTES", 2048));
    let client = support::client();
    let mut big = fixture("CUSTOMER_CREATE");
    big["contact_additional_info"] = json!("x".repeat(4096));
    let (status, reply) = post(&client, &bridge, big.to_string()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (413, Some("payload_too_large")),
        "{reply}"
    );
    assert_eq!(reply["limit_bytes"], 2048);

    // Without a content-length, the limit applies while the body is read.
    let mut stream = TcpStream::connect(&bridge.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /superfone/events HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        support::SECRET
    );
    stream.write_all(head.as_bytes()).unwrap();
    for _ in 0..3 {
        // The bridge may answer and close before the last chunk: ignore write errors.
        let _ = write!(stream, "400\r\n{}\r\n", "x".repeat(1024));
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    let response = client.get(bridge.ingest_url()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let auth = format!("Bearer {}", support::SECRET);
    let (status, reply) =
        post_with(&client, &bridge.url("/elsewhere"), "{}", Some(&auth), &[]).await;
    assert_eq!((status, reply["status"].as_str()), (404, Some("not_found")));

    // A payload just under the limit still goes through.
    let (status, _) = post(&client, &bridge, fixture("CUSTOMER_CREATE").to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(consume(&bridge.topic("CUSTOMER_CREATE"), 1, false).len(), 1);
    assert!(
        consume(&bridge.dead_letter_topic(), 0, true).is_empty(),
        "refusals are not dead-lettered"
    );
}

/// The dead letter's `content-type` header is the request's, and absent when
/// the request had none (it used to say application/json regardless).
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_keeps_the_request_content_type_or_none() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let auth = format!("Bearer {SECRET}");
    let mut replies = Vec::new();
    for content_type in [None, Some("text/plain")] {
        let mut request = client
            .post(bridge.ingest_url())
            .header("authorization", &auth)
            .body("not json at all");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
        replies.push(response.json::<serde_json::Value>().await.unwrap());
    }
    let records = consume(&bridge.dead_letter_topic(), 2, true);
    let header_of = |reply: &serde_json::Value| {
        let record = records
            .iter()
            .find(|r| {
                r["partition"] == reply["dead_letter"]["partition"]
                    && r["offset"] == reply["dead_letter"]["offset"]
            })
            .expect("dead letter read back");
        record["headers"].get("content-type").cloned()
    };
    assert_eq!(header_of(&replies[0]), None, "no content type: no header");
    assert_eq!(header_of(&replies[1]), Some(json!("text/plain")));
}
