//! One record Kafka cannot take must never block the others. The largest body the HTTP limit allows must reach its topic,
//! and a burst of them must stay within the memory budget; a record Kafka
//! refuses for good is parked in the spool, reported, and the replay goes on
//! with everything behind it, in order per lead.
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    consume, consume_from, count_records, fixture, free_port, metrics_text, peak_rss_mib, post,
    post_with, rss_mib, Bridge, BridgeOptions, Broker, SECRET,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A valid CDR_SUMMARY_READY for a long call: `bytes` of JSON or a little more.
fn long_call_summary(bytes: usize) -> Value {
    let mut event = fixture("CDR_SUMMARY_READY");
    let turn = json!({"speaker": "customer", "text": "word ".repeat(40), "start": 1.0, "end": 2.0});
    let per_turn = turn.to_string().len() + 1;
    event["transcription"] = Value::Array(vec![turn; bytes / per_turn + 1]);
    event["cdr_uuid"] = json!(uuid::Uuid::now_v7().to_string());
    event
}

fn normal_event(contact: i64, sequence: i64) -> String {
    support::sequenced_event(contact, sequence).to_string()
}

async fn post_normal_events(client: &reqwest::Client, bridge: &Bridge, count: i64) -> Vec<u16> {
    let mut statuses = Vec::new();
    for sequence in 0..count {
        statuses.push(
            post(client, bridge, normal_event(sequence % 7, sequence))
                .await
                .0,
        );
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_allowed_summary_is_published_and_nothing_waits_behind_it() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let summary = long_call_summary(2_800_000);
    let body = summary.to_string();
    assert!(body.len() > 2_800_000 && body.len() < 4 * 1024 * 1024);
    let (status, reply) = post(&client, &bridge, body).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("published")),
        "{reply}"
    );
    let started = Instant::now();
    let statuses = post_normal_events(&client, &bridge, 100).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(consume(&bridge.topic("TASK_CHANGE"), 100, false).len(), 100);
    println!(
        "100 normal events after a 2.8 MB one: on the topic in {:?}",
        started.elapsed()
    );
    let records = consume(&bridge.topic("CDR_SUMMARY_READY"), 1, false);
    assert_eq!(
        records[0]["value"]["transcription"]
            .as_array()
            .unwrap()
            .len(),
        summary["transcription"].as_array().unwrap().len(),
        "decoded whole by Confluent's deserializer"
    );
}

/// A delivery holds several times its body until the broker answers, so 64
/// summaries of 4 MB posted at once once took the bridge to 1.1 GB, past any
/// pod's memory limit; the OOM kill would lose every delivery in flight.
/// Here the budget holds one body at the 1 MiB limit, and a client that stops
/// halfway through its body keeps all of it: 23 more such bodies wait for
/// room instead of growing the process, small events posted meanwhile are
/// answered (they never wait), and once the first body is whole every one is
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_the_largest_bodies_waits_for_the_memory_budget_and_small_events_pass() {
    const LIMIT: usize = 1024 * 1024;
    const WAITING: usize = 23;
    let bridge = Bridge::start(
        BridgeOptions::default()
            .with("SERVER__MAX_BODY_BYTES", LIMIT)
            .with("SERVER__MAX_BODY_BYTES_IN_FLIGHT", LIMIT),
    );
    let client = support::client();
    assert_eq!(post(&client, &bridge, normal_event(1, 0)).await.0, 200);
    let resident_before = rss_mib(bridge.pid());
    let large_body = || {
        let body = long_call_summary(LIMIT - 16 * 1024).to_string();
        assert!(body.len() <= LIMIT);
        body
    };

    // Padded to the limit, so the half-sent body holds the whole budget:
    // the small events get in only because small bodies never wait.
    let mut first = large_body();
    first.push_str(&" ".repeat(LIMIT - first.len()));
    let (first_half, second_half) = first.as_bytes().split_at(first.len() / 2);
    let mut holder = tokio::net::TcpStream::connect(&bridge.addr).await.unwrap();
    let head = format!(
        "POST /superfone/events HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {SECRET}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        first.len()
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    holder.write_all(first_half).await.unwrap();

    let finished = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..WAITING)
        .map(|_| {
            let body = large_body();
            let (client, url, finished) = (client.clone(), bridge.ingest_url(), finished.clone());
            tokio::spawn(async move {
                let auth = format!("Bearer {SECRET}");
                let answer = post_with(&client, &url, body, Some(&auth), &[]).await;
                finished.fetch_add(1, Ordering::SeqCst);
                answer
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &metrics_text(&client, &bridge).await,
        "superfone_body_budget_waits_total",
    ) < WAITING as f64
    {
        assert!(
            Instant::now() < deadline,
            "the large bodies never all waited for room"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let statuses = post_normal_events(&client, &bridge, 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "no large body fits beside the half-sent one"
    );
    let (_, status) = support::admin_get(&client, &bridge, "/status").await;
    assert_eq!(
        (
            &status["http"]["body_bytes_held"],
            &status["http"]["body_budget_bytes"]
        ),
        (&json!(LIMIT), &json!(LIMIT)),
        "the half-sent body holds the whole budget: {status}"
    );
    // Unread, the waiting bodies are in the kernel's socket buffers, not in
    // the bridge: without the budget all 23 MiB of them are read at once.
    let grown_while_waiting = peak_rss_mib(bridge.pid()).saturating_sub(resident_before);
    assert!(
        grown_while_waiting < 12,
        "{WAITING} waiting bodies of 1 MiB grew the bridge by {grown_while_waiting} MiB"
    );

    holder.write_all(second_half).await.unwrap();
    let mut answer = String::new();
    holder.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for answer in waiting {
        let (status, reply) = answer.await.unwrap();
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{reply}"
        );
    }
    println!(
        "{} bodies of 1 MiB, a 1 MiB budget: peak {grown_while_waiting} MiB above the resident \
         {resident_before} MiB while {WAITING} waited, {} MiB once all were published",
        WAITING + 1,
        peak_rss_mib(bridge.pid()).saturating_sub(resident_before)
    );
    let brokers = support::stack().brokers;
    let topic = bridge.topic("CDR_SUMMARY_READY");
    assert_eq!(count_records(&brokers, &topic, WAITING + 1), WAITING + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_non_json_body_is_dead_lettered_and_nothing_waits_behind_it() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let garbage = "not json ".repeat(1_100_000 / 9 + 1);
    let (status, reply) = post(&client, &bridge, garbage.clone()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (400, Some("dead_lettered")),
        "{reply}"
    );
    assert!(
        reply["dead_letter"]["offset"].is_number(),
        "on the broker: {reply}"
    );
    let statuses = post_normal_events(&client, &bridge, 100).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(consume(&bridge.topic("TASK_CHANGE"), 100, false).len(), 100);
    let dead = consume(&bridge.dead_letter_topic(), 1, true);
    assert!(dead[0]["value"] == garbage.as_str(), "kept byte for byte");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A spool holds a record the restarted bridge's producer refuses for good
/// (the body limit was lowered between the two runs, so the record is over
/// `message.max.bytes`): it is parked, and the 100 records spooled around it
/// are replayed in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_for_good_is_parked_and_the_replay_goes_on() {
    let broker = Broker::start(free_port());
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let options = || BridgeOptions {
        prefix: prefix.clone(),
        spool_dir: Some(spool.path().to_owned()),
        brokers: Some(broker.address()),
        ..BridgeOptions::default()
    };
    let mut first = Bridge::start(
        options()
            .with("DELIVERY__ACK_DEADLINE_MS", 300)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000),
    );
    let client = support::client();
    broker.freeze();
    let mut statuses = post_normal_events(&client, &first, 50).await;
    let poison = long_call_summary(1_500_000).to_string();
    let (status, reply) = support::post_with(
        &client,
        &first.ingest_url(),
        poison,
        Some(&format!("Bearer {}", support::SECRET)),
        &[("x-superfone-group-id", "poison-group-1")],
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("spooled")),
        "{reply}"
    );
    for sequence in 50..100 {
        statuses.push(
            post(&client, &first, normal_event(sequence % 7, sequence))
                .await
                .0,
        );
    }
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    first.terminate();
    first.wait_exit(Duration::from_secs(30)).expect("stops");
    broker.resume();

    let second = Bridge::start(options().with("SERVER__MAX_BODY_BYTES", 1024 * 1024));
    let records = consume_from(&broker.address(), &second.topic("TASK_CHANGE"), 100);
    let sequence = |r: &Value| -> i64 {
        r["value"]["updated_value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let distinct: std::collections::BTreeSet<i64> = records.iter().map(sequence).collect();
    assert_eq!(
        distinct.len(),
        100,
        "everything around the poison record arrived"
    );
    // At-least-once: a record the frozen broker took after the first bridge
    // gave up on it is replayed again; order counts first occurrences.
    for contact in 0..7 {
        let mut first_seen: Vec<i64> = Vec::new();
        let key = contact.to_string();
        for record in records.iter().filter(|r| r["key"] == key.as_str()) {
            if !first_seen.contains(&sequence(record)) {
                first_seen.push(sequence(record));
            }
        }
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "{contact}: {first_seen:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = support::metrics_text(&client, &second).await;
        if metric(&text, "superfone_spool_parked_records") >= 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metric(&metrics, "superfone_spool_parked_records"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "superfone_spool_parked_total"), 1.0);
    assert_eq!(
        metric(&metrics, "superfone_spool_records"),
        0.0,
        "nothing left waiting"
    );
    let logs = second.log_text_with("parked");
    let parked_line = logs
        .lines()
        .find(|line| line.contains("parked"))
        .unwrap_or_else(|| panic!("no parked log line:\n{logs}"));
    assert!(parked_line.contains("\"ERROR\""), "{parked_line}");
    assert!(parked_line.contains("poison-group-1"), "{parked_line}");
    assert!(
        parked_line.contains("MessageSizeTooLarge") || parked_line.contains("too large"),
        "{parked_line}"
    );

    // The operator's view: the parked record, why, and the delivery it came from.
    let listed = support::stdout_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_superfone-bridge"))
            .args(["spool", "parked", "list"])
            .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path()),
    );
    let lines: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["group_id"], "poison-group-1");
    assert_eq!(lines[0]["event"], "CDR_SUMMARY_READY");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("too large"),
        "{listed}"
    );
    let exported = support::stdout_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_superfone-bridge"))
            .args(["spool", "parked", "export"])
            .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path()),
    );
    let exported: Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert!(exported["payload_base64"].as_str().unwrap().len() > 1_000_000);

    // The cause fixed (the limit back to what the record needs), the
    // operator re-publishes it; it leaves the list, and the next start drops
    // it from the parked log.
    let parked_cli = |args: &[&str], limit: usize| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
        command
            .args(["spool", "parked"])
            .args(args)
            .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path())
            .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", broker.address())
            .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", &second.prefix)
            .env("SUPERFONE_BRIDGE_SERVER__MAX_BODY_BYTES", limit.to_string());
        command
    };
    let refused = parked_cli(&["retry"], 1024 * 1024).output().unwrap();
    assert!(!refused.status.success(), "still too large for this limit");
    let retried = support::stdout_of(&mut parked_cli(&["retry"], 4 * 1024 * 1024));
    let retried: Value = serde_json::from_str(retried.lines().next().unwrap()).unwrap();
    assert_eq!(retried["status"], "published", "{retried}");
    assert_eq!(retried["spool_id"], lines[0]["spool_id"]);
    let listed = support::stdout_of(&mut parked_cli(&["list"], 4 * 1024 * 1024));
    assert!(listed.is_empty(), "no longer listed: {listed}");
    let records = consume_from(&broker.address(), &second.topic("CDR_SUMMARY_READY"), 1);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["headers"]["superfone-group-id"],
        "poison-group-1"
    );
    assert!(records[0]["headers"]
        .get("superfone-parked-reason")
        .is_none());
}

/// Start-up checks what the brokers say about each topic's
/// max.message.bytes and warns, with the numbers, when an accepted body
/// could not be stored (such a record would be parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_too_small_for_the_body_limit_is_reported_at_start_up() {
    let prefix = support::unique_prefix();
    let small = Bridge::start(
        BridgeOptions {
            prefix: prefix.clone(),
            ..BridgeOptions::default()
        }
        .with("SERVER__MAX_BODY_BYTES", 100_000),
    );
    // It creates the topics behind its open listener: once they exist.
    support::wait_for_admin(
        &support::client(),
        &small,
        "/status",
        "topics created",
        |_, body| body["kafka"]["topics_ready"] == true,
    )
    .await;
    drop(small);
    let bridge = Bridge::start(BridgeOptions {
        prefix: prefix.clone(),
        ..BridgeOptions::default()
    });
    let logs = bridge.log_text_with("topic cannot store the largest record");
    let warning = logs
        .lines()
        .find(|line| line.contains("topic cannot store the largest record"))
        .unwrap_or_else(|| panic!("no warning about the topics' limit:\n{logs}"));
    assert!(warning.contains("\"WARN\""), "{warning}");
    assert!(warning.contains("165536"), "the topic's limit: {warning}");
    assert!(
        warning.contains(&(4 * 1024 * 1024 + 64 * 1024).to_string()),
        "{warning}"
    );
}
