//! Which notification sent a delivery: `POST /superfone/events/<name>`, the
//! forwarded request headers (`ingest.forward_headers`), and a dedup window
//! kept per notification, against the real bridge and broker.
#![cfg(feature = "e2e")]

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use support::{consume, fixture, post_with, Bridge, BridgeOptions, SECRET};

/// Posts `body` to `path` exactly as written, over a plain socket: an HTTP
/// client would resolve `..` and percent-encoding before sending.
fn raw_post(bridge: &Bridge, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(&bridge.addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

fn header<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record["headers"][name].as_str()
}

/// A name is one segment of `[a-z0-9-]`, 1 to 64 characters, taken as
/// sent: a trailing slash, a capital, an encoded character, a dot segment
/// or a second segment is another path, answered 404 with nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_one_path_segment_and_any_other_path_is_404() {
    let bridge = Bridge::start(BridgeOptions::default());
    let body = fixture("ALL_CALLS").to_string();
    let longest = "n".repeat(64);
    let named = [
        ("/superfone/events/sales", "sales"),
        ("/superfone/events/missed-calls-2", "missed-calls-2"),
        (&format!("/superfone/events/{longest}"), &longest),
        ("/superfone/events/query?source=superfone", "query"),
    ];
    for (path, name) in named {
        let (status, reply) = raw_post(&bridge, path, &body);
        assert_eq!(status, 200, "{path}: {reply}");
        assert_eq!(reply["notification"], *name, "{path}: {reply}");
    }
    let too_long = format!("/superfone/events/{}", "n".repeat(65));
    for path in [
        "/superfone/events/",
        "/superfone/events/sales/",
        "/superfone/events//sales",
        "/superfone/events/sales/more",
        "/superfone/events/Sales",
        "/superfone/events/sales_team",
        "/superfone/events/sal%65s",
        "/superfone/events/%2e%2e",
        "/superfone/events/..",
        "/superfone/events/../events",
        "/superfone/events/./sales",
        "/superfone/events/a.b",
        "/superfone/eventssales",
        &too_long,
    ] {
        let (status, reply) = raw_post(&bridge, path, &body);
        assert_eq!(
            (status, reply["status"].as_str()),
            (404, Some("not_found")),
            "{path}: {reply}"
        );
    }
    let records = consume(&bridge.topic("ALL_CALLS"), named.len(), false);
    let names: Vec<_> = records
        .iter()
        .map(|r| header(r, "superfone-notification"))
        .collect();
    let expected: Vec<_> = named.iter().map(|(_, name)| Some(*name)).collect();
    assert_eq!(names, expected, "only the named paths published");
}

/// The allow-listed request headers reach the record as `superfone-h-*`
/// (and the dead letter of a bad body), the others do not; the answer and
/// the record name the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_headers_and_the_notification_are_on_the_record() {
    let bridge =
        Bridge::start(BridgeOptions::default().with("INGEST__FORWARD_HEADERS", "X-Team,x-region"));
    let client = support::client();
    let url = bridge.url("/superfone/events/sales");
    let headers = [
        ("x-team", "growth"),
        ("X-Region", "south"),
        ("x-other", "not forwarded"),
        ("cookie", "session=1"),
    ];
    let event = fixture("TASK_CREATE").to_string();
    let (status, reply) = post_with(&client, &url, event, Some(&bearer()), &headers).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["notification"], "sales", "{reply}");
    let (status, reply) = post_with(&client, &url, "{not json", Some(&bearer()), &headers).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["notification"], "sales", "{reply}");

    let record = &consume(&bridge.topic("TASK_CREATE"), 1, false)[0];
    let dead_letter = &consume(&bridge.dead_letter_topic(), 1, true)[0];
    for record in [record, dead_letter] {
        assert_eq!(header(record, "superfone-notification"), Some("sales"));
        assert_eq!(header(record, "superfone-h-x-team"), Some("growth"));
        assert_eq!(header(record, "superfone-h-x-region"), Some("south"));
        let names: Vec<&String> = record["headers"].as_object().unwrap().keys().collect();
        assert!(
            names.iter().all(|name| !name.contains("other")
                && !name.contains("cookie")
                && !name.contains("authorization")),
            "{names:?}"
        );
    }
}

/// Two notifications of one event each send it: both streams stay whole
/// (two records), while a repeat through one notification is still one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_through_two_notifications_is_two_records() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let change = fixture("CUSTOMER_CHANGE").to_string();
    let mut answers = Vec::new();
    for path in ["/a", "/b", "/a", "", ""] {
        let url = bridge.url(&format!("/superfone/events{path}"));
        let (status, reply) = post_with(&client, &url, change.clone(), Some(&bearer()), &[]).await;
        answers.push(format!("{status} {}", reply["status"].as_str().unwrap()));
        if path == "/a" {
            assert_eq!(reply["notification"], "a", "{reply}");
        }
    }
    assert_eq!(
        answers,
        [
            "200 published",
            "200 published",
            "200 duplicate",
            "200 published",
            "200 duplicate"
        ]
    );
    let records = consume(&bridge.topic("CUSTOMER_CHANGE"), 3, false);
    let names: Vec<_> = records
        .iter()
        .map(|r| header(r, "superfone-notification"))
        .collect();
    assert_eq!(names, [Some("a"), Some("b"), None]);
    let keys: Vec<_> = records
        .iter()
        .map(|r| header(r, "superfone-dedup-key"))
        .collect();
    assert!(
        keys.iter().all(|key| key.is_some() && *key == keys[0]),
        "one event, one identity for consumers: {keys:?}"
    );
}

/// A record spooled while Kafka is down keeps the notification and the
/// forwarded headers through a restart and its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_record_keeps_its_headers_across_a_restart() {
    let prefix = support::unique_prefix();
    let spool = tempfile::tempdir().unwrap();
    let options = |brokers: Option<String>| {
        BridgeOptions {
            prefix: prefix.clone(),
            spool_dir: Some(spool.path().to_owned()),
            brokers,
            ..BridgeOptions::default()
        }
        .with("INGEST__FORWARD_HEADERS", "x-team")
        .with("KAFKA__STARTUP_TIMEOUT_MS", 1000)
        .with("DELIVERY__ACK_DEADLINE_MS", 500)
    };
    let down = format!("127.0.0.1:{}", support::free_port());
    let first = Bridge::start(options(Some(down)));
    let url = first.url("/superfone/events/crm");
    let event = fixture("TASK_DUE_TIME").to_string();
    let headers = [("x-team", "growth")];
    let (status, reply) =
        post_with(&support::client(), &url, event, Some(&bearer()), &headers).await;
    assert_eq!((status, reply["status"].as_str()), (202, Some("spooled")));
    assert_eq!(reply["notification"], "crm", "{reply}");
    drop(first);

    let second = Bridge::start(options(None));
    let record = &consume(&second.topic("TASK_DUE_TIME"), 1, false)[0];
    assert_eq!(header(record, "superfone-notification"), Some("crm"));
    assert_eq!(header(record, "superfone-h-x-team"), Some("growth"));
}

/// Credentials never reach a record: `check-config` (and the start)
/// refuse the auth header, whatever `auth.header` names, and cookies.
#[test]
fn check_config_refuses_to_forward_the_auth_header_or_cookies() {
    let check = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
        command
            .arg("check-config")
            .env_remove("SUPERFONE_BRIDGE_CONFIG")
            .env("SUPERFONE_AUTH_SECRETS", SECRET);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    const FORWARD: &str = "SUPERFONE_BRIDGE_INGEST__FORWARD_HEADERS";
    for name in [
        "Authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    ] {
        let (code, stderr) = check(&[(FORWARD, &format!("x-team,{name}"))]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("ingest.forward_headers may not name `{name}`"))
                && stderr.contains("readable by every consumer"),
            "{name}: {stderr}"
        );
    }
    let (code, stderr) = check(&[
        (FORWARD, "x-team,X-Api-Key"),
        ("SUPERFONE_BRIDGE_AUTH__HEADER", "x-api-key"),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("it is the auth header (auth.header)"),
        "{stderr}"
    );
    let (code, stderr) = check(&[(FORWARD, "x-team,x-region")]);
    assert_eq!(code, Some(0), "{stderr}");

    let refused = Bridge::try_start(
        BridgeOptions::default().with("INGEST__FORWARD_HEADERS", "authorization"),
    );
    let failure = refused.err().expect("the start is refused");
    assert!(
        failure.logs.contains("may not name `authorization`"),
        "{}",
        failure.logs
    );
}
