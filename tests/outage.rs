//! Outages of the bridge's dependencies: a pod
//! must make events durable whenever its spool can, whatever Kafka and the
//! schema registry are doing; readiness says exactly that; and a long
//! outage must not run it out of memory, before or after a restart.
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::faults::{
    check_records, count_answers, own_broker_options, post_sequenced, post_until_published,
    read_back_and_check,
};
use support::{
    admin_get, consume_with, count_records, fixture, free_port, peak_rss_mib, post, stream_events,
    wait_for_admin, Bridge, BridgeOptions, Broker, Registry,
};

/// The limit the issue sets for a bridge holding a long outage's spool (the
/// chart's memory limit is 256 Mi).
const RSS_LIMIT_MIB: u64 = 128;

/// Waits until `/status` gives the broker check's verdict `reachable` (it
/// is null until the first check has decided) and returns that status.
async fn wait_for_kafka_reachable(
    client: &reqwest::Client,
    bridge: &Bridge,
    reachable: bool,
) -> Value {
    let what = if reachable {
        "Kafka reachable"
    } else {
        "Kafka unreachable"
    };
    wait_for_admin(client, bridge, "/status", what, |_, body| {
        body["kafka"]["reachable"] == reachable
    })
    .await
}

fn unreachable_dependencies(broker_port: u16, registry_port: u16) -> BridgeOptions {
    BridgeOptions {
        brokers: Some(format!("127.0.0.1:{broker_port}")),
        registry_url: Some(format!("http://127.0.0.1:{registry_port}")),
        ..BridgeOptions::default()
    }
    .with("KAFKA__STARTUP_TIMEOUT_MS", 1000)
    .with("REGISTRY__TIMEOUT_MS", 1000)
    .with("DELIVERY__ACK_DEADLINE_MS", 500)
    .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000)
    .without_waiting_for_checks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn started_with_broker_and_registry_down_it_accepts_turns_ready_and_delivers_in_order() {
    let (broker_port, registry_port) = (free_port(), free_port());
    let bridge = Bridge::start(unreachable_dependencies(broker_port, registry_port));
    let client = support::client();
    wait_for_admin(&client, &bridge, "/readyz", "ready", |status, _| {
        status == 200
    })
    .await;

    let answers = stream_events(bridge.ingest_url(), 0..50, 20, 8, Arc::new(|_| {})).await;
    let mut figures = count_answers("started_with_broker_and_registry_down", &answers);
    assert_eq!(figures.spooled_202, 1_000, "{figures:?}");
    // The first broker check gives up after 2 s; the 1,000 answers may all
    // come before it has (`reachable` is null until then).
    let status = wait_for_kafka_reachable(&client, &bridge, false).await;
    assert_eq!(status["spool"]["records"], 1_000, "{status}");
    assert!(
        status["registry"]["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|subject| subject["schema_id"].is_null()),
        "no schema id known yet: {status}"
    );

    // The broker first: the records still wait, since none can be stamped
    // with a registry id yet.
    let broker = Broker::start(broker_port);
    let status = wait_for_kafka_reachable(&client, &bridge, true).await;
    assert_eq!(status["spool"]["records"], 1_000, "{status}");

    // The registry last (empty, as after a rebuild): schemas are registered,
    // the records stamped with the ids and replayed.
    let registry = Registry::start(registry_port);
    let records = consume_with(
        &broker.address(),
        &registry.url(),
        &bridge.topic("TASK_CHANGE"),
        1_000,
    );
    check_records(&mut figures, &answers, &records);
    figures.peak_rss_mib = peak_rss_mib(bridge.pid());
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
    let ids: HashSet<&Value> = records.iter().map(|r| &r["schema_id"]).collect();
    assert_eq!(ids.len(), 1, "one schema id for the event: {ids:?}");
    wait_for_admin(&client, &bridge, "/status", "an empty spool", |_, body| {
        body["spool"]["records"] == 0
    })
    .await;
}

/// A cold start while the broker and the registry hang (frozen: connections
/// open and nothing answers, as a blackholed network looks) must not keep
/// the port closed: the start-up checks run behind an open listener, and
/// the first event is spooled within 5 s of launch. The pod is ready the
/// whole time (its spool takes events, as in any Kafka outage); once both
/// thaw, the event reaches its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_start_with_broker_and_registry_frozen_answers_within_seconds_and_delivers_after() {
    let broker = Broker::start(free_port());
    let registry = Registry::start(free_port());
    broker.freeze();
    registry.freeze();
    let launched = Instant::now();
    // The default start-up timeouts: 10 s for Kafka, 10 s for the registry.
    let bridge = Bridge::start(
        BridgeOptions {
            brokers: Some(broker.address()),
            registry_url: Some(registry.url()),
            ..BridgeOptions::default()
        }
        .without_waiting_for_checks(),
    );
    let listening = launched.elapsed();
    let client = support::client();
    let answer = post_sequenced(&client, &bridge, 7, 0).await;
    let first_answer = launched.elapsed();
    let (ready, reasons) = admin_get(&client, &bridge, "/readyz").await;
    println!(
        "COLD-START-FIGURES {}",
        json!({"ready_line_ms": listening.as_millis(), "first_2xx_ms": first_answer.as_millis(),
               "status": answer.status, "readyz_while_frozen": ready})
    );
    assert_eq!(answer.status, Some(202), "spooled: {:?}", answer.body);
    assert!(
        first_answer < Duration::from_secs(5),
        "first answer {first_answer:?} after launch"
    );
    assert_eq!(ready, 200, "the spool takes events: {reasons}");

    broker.resume();
    registry.resume();
    let records = consume_with(
        &broker.address(),
        &registry.url(),
        &bridge.topic("TASK_CHANGE"),
        1,
    );
    let answers = [answer];
    let mut figures = count_answers("cold_start_frozen_dependencies", &answers);
    check_records(&mut figures, &answers, &records);
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
    wait_for_admin(
        &client,
        &bridge,
        "/status",
        "an empty spool",
        |status, body| {
            body["spool"]["records"] == 0 && body["kafka"]["topics_ready"] == true && status == 200
        },
    )
    .await;
    let (ready, reasons) = admin_get(&client, &bridge, "/readyz").await;
    assert_eq!(ready, 200, "{reasons}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_during_a_registry_outage_publishes_with_the_last_known_ids() {
    let broker = Broker::start(free_port());
    let registry_port = free_port();
    let registry = Registry::start(registry_port);
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let options = || {
        BridgeOptions {
            spool_dir: Some(spool.path().to_owned()),
            registry_url: Some(format!("http://127.0.0.1:{registry_port}")),
            prefix: prefix.clone(),
            ..own_broker_options(&broker)
        }
        .with("REGISTRY__TIMEOUT_MS", 1000)
    };
    let client = support::client();
    let mut bridge = Bridge::start(options());
    let (status, first) = post(&client, &bridge, support::sequenced_event(1, 1).to_string()).await;
    assert_eq!(status, 200, "{first}");
    bridge.terminate();
    bridge.wait_exit(Duration::from_secs(30)).expect("stops");

    drop(registry);
    let mut bridge = Bridge::start(options());
    let (status, second) = post(&client, &bridge, support::sequenced_event(1, 2).to_string()).await;
    assert_eq!(
        (status, second["status"].as_str()),
        (200, Some("published")),
        "published with the id kept in the spool directory: {second}"
    );
    assert_eq!(second["schema_id"], first["schema_id"]);
    bridge.terminate();
    bridge.wait_exit(Duration::from_secs(30)).expect("stops");

    // A rebuilt registry numbers schemas anew: a kept id is checked as soon
    // as the registry answers, and records carry the new registry's id.
    let rebuilt = Registry::start(registry_port);
    let dummy = json!({"schema": r#"{"type":"record","name":"Other","fields":[]}"#});
    for subject in ["other-1-value", "other-2-value"] {
        let url = format!("{}/subjects/{subject}/versions", rebuilt.url());
        assert!(client
            .post(url)
            .json(&dummy)
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    let bridge = Bridge::start(options());
    let (status, third) = post(&client, &bridge, support::sequenced_event(1, 3).to_string()).await;
    assert_eq!(status, 200, "{third}");
    assert_ne!(
        third["schema_id"], first["schema_id"],
        "the rebuilt registry's id"
    );
    let topic = bridge.topic("TASK_CHANGE");
    let records = consume_with(&broker.address(), &rebuilt.url(), &topic, 3);
    let last = records
        .iter()
        .find(|r| r["offset"] == third["offset"] && r["partition"] == third["partition"]);
    assert_eq!(
        last.expect("the third record")["schema_id"],
        third["schema_id"]
    );
}

/// A valid CDR_SUMMARY_READY of about `bytes` of JSON for `contact`.
fn summary(contact: i64, bytes: usize) -> String {
    let mut event = fixture("CDR_SUMMARY_READY");
    let turn = json!({"speaker": "agent", "text": "word ".repeat(40), "start": 1.0, "end": 2.0});
    let per_turn = turn.to_string().len() + 1;
    event["transcription"] = Value::Array(vec![turn; bytes / per_turn + 1]);
    event["contact_id"] = json!(contact);
    event["cdr_uuid"] = json!(uuid::Uuid::now_v7().to_string());
    event.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_a_gigabyte_spooled_in_an_outage_stays_in_bounded_memory_across_a_restart() {
    const EVENTS: i64 = 1_000;
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let options = || {
        BridgeOptions {
            prefix: prefix.clone(),
            spool_dir: Some(spool.path().to_owned()),
            brokers: Some(format!("127.0.0.1:{port}")),
            ..BridgeOptions::default()
        }
        .with("KAFKA__STARTUP_TIMEOUT_MS", 1000)
        .with("DELIVERY__ACK_DEADLINE_MS", 500)
        .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000)
    };
    let broker = Broker::start(port);
    let mut bridge = Bridge::start(options());
    drop(broker);

    let client = support::client();
    let started = Instant::now();
    let posts = (0..4).map(|worker| {
        let (client, url) = (client.clone(), bridge.ingest_url());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in (worker..EVENTS).step_by(4) {
                let auth = format!("Bearer {}", support::SECRET);
                let body = summary(n % 97, 600_000);
                statuses.push(
                    support::post_with(&client, &url, body, Some(&auth), &[])
                        .await
                        .0,
                );
            }
            statuses
        })
    });
    let mut statuses = Vec::new();
    for task in futures::future::join_all(posts).await {
        statuses.extend(task.unwrap());
    }
    let (_, status) = admin_get(&client, &bridge, "/status").await;
    let spooled_mib = status["spool"]["bytes"].as_u64().unwrap_or(0) / (1024 * 1024);
    let during_outage = peak_rss_mib(bridge.pid());
    println!(
        "OUTAGE-FIGURES {}",
        json!({"phase": "outage", "events": EVENTS, "spooled_mib": spooled_mib,
               "seconds": started.elapsed().as_secs(), "peak_rss_mib": during_outage})
    );
    assert!(
        statuses.iter().all(|s| *s == 202),
        "all spooled: {statuses:?}"
    );
    assert!(spooled_mib >= 476, "half a gigabyte spooled: {status}");
    assert!(
        during_outage < RSS_LIMIT_MIB,
        "{during_outage} MiB during the outage"
    );

    bridge.terminate();
    bridge.wait_exit(Duration::from_secs(30)).expect("stops");
    let bridge = Bridge::start(options());
    wait_for_admin(&client, &bridge, "/readyz", "ready", |status, _| {
        status == 200
    })
    .await;
    let after_restart = peak_rss_mib(bridge.pid());
    assert!(
        after_restart < RSS_LIMIT_MIB,
        "{after_restart} MiB after the restart"
    );

    let broker = Broker::start(port);
    let replay_started = Instant::now();
    wait_for_admin(&client, &bridge, "/status", "an empty spool", |_, body| {
        body["spool"]["records"] == 0
    })
    .await;
    let replay_secs = replay_started.elapsed().as_secs_f64();
    let during_replay = peak_rss_mib(bridge.pid());
    let records = count_records(
        &broker.address(),
        &bridge.topic("CDR_SUMMARY_READY"),
        EVENTS as usize,
    );
    println!(
        "OUTAGE-FIGURES {}",
        json!({"phase": "restart_and_replay", "peak_rss_after_restart_mib": after_restart,
               "peak_rss_during_replay_mib": during_replay, "replay_seconds": replay_secs,
               "records": records})
    );
    assert!(records >= EVENTS as usize, "all on the topic: {records}");
    assert!(
        during_replay < RSS_LIMIT_MIB,
        "{during_replay} MiB during the replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_spool_not_the_broker() {
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(
        own_broker_options(&broker)
            .with("SERVER__MAX_BODY_BYTES", 20_000)
            .with("SPOOL__MAX_BYTES", 300_000)
            .with("SPOOL__SEGMENT_BYTES", 50_000)
            .with("DELIVERY__ACK_DEADLINE_MS", 300)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000),
    );
    let client = support::client();
    let ready = |status: u16, _: &Value| status == 200;
    wait_for_admin(&client, &bridge, "/readyz", "ready", ready).await;

    broker.freeze();
    wait_for_kafka_reachable(&client, &bridge, false).await;
    let (status, body) = admin_get(&client, &bridge, "/readyz").await;
    assert_eq!(status, 200, "the spool can take events: {body}");

    // Fill the spool until it has no room for a largest record: not ready.
    let mut answers = Vec::new();
    let mut not_ready = None;
    for sequence in 0..2_000 {
        answers.push(post_sequenced(&client, &bridge, 3, sequence).await);
        let (status, body) = admin_get(&client, &bridge, "/readyz").await;
        if status == 503 {
            not_ready = Some(body);
            break;
        }
    }
    let body = not_ready.expect("readiness turned false as the spool filled");
    assert!(
        body["reasons"][0].as_str().unwrap().contains("spool"),
        "{body}"
    );
    assert!(answers.iter().all(|a| a.status == Some(202)), "spooled");
    let (health, _) = admin_get(&client, &bridge, "/healthz").await;
    assert_eq!(health, 200, "alive even when not ready");

    broker.resume();
    wait_for_admin(&client, &bridge, "/readyz", "ready again", ready).await;
    let mut figures = count_answers("readiness_spool_filled", &answers);
    read_back_and_check(
        &broker.address(),
        &bridge.topic("TASK_CHANGE"),
        &mut figures,
        &answers,
    );
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
}

/// An outage during which the spool cannot take events either (here: a cap
/// smaller than any record) must not leave the bridge believing Kafka is
/// down once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_back_after_a_spool_failure_is_used_again() {
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(
        own_broker_options(&broker)
            .with("SPOOL__MAX_BYTES", 1)
            .with("SPOOL__SEGMENT_BYTES", 1)
            .with("DELIVERY__ACK_DEADLINE_MS", 300)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 1000),
    );
    let client = support::client();
    broker.freeze();
    let refused = post_sequenced(&client, &bridge, 5, 0).await;
    assert_eq!(refused.status, Some(503), "{:?}", refused.body);
    broker.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sequence = 1;
    loop {
        let answer = post_sequenced(&client, &bridge, 5, sequence).await;
        if answer.status == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka is back but events are still refused: {:?}",
            answer.body
        );
        sequence += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Entries lost to damage found while running cannot be read, so their
/// lead is unknown; the lead must not stay behind the spool for good
/// once everything readable has gone to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lead_whose_spooled_entries_were_damaged_on_disk_goes_straight_to_kafka_again() {
    let broker = Broker::start(free_port());
    let spool = tempfile::tempdir().unwrap();
    let mut options = own_broker_options(&broker)
        .with("DELIVERY__ACK_DEADLINE_MS", 300)
        .with("KAFKA__MESSAGE_TIMEOUT_MS", 1000);
    options.spool_dir = Some(spool.path().to_owned());
    let bridge = Bridge::start(options);
    let client = support::client();
    let sequence = post_until_published(&client, &bridge, 41).await;

    broker.freeze();
    wait_for_kafka_reachable(&client, &bridge, false).await;
    for sequence in sequence + 1..=sequence + 6 {
        let answer = post_sequenced(&client, &bridge, 41, sequence).await;
        assert_eq!(answer.status, Some(202), "{:?}", answer.body);
    }
    damage_the_middle_of_the_segment(spool.path());
    let lost = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let logs = bridge.log_text();
            if let Some(line) = logs.lines().find(|line| line.contains("no longer intact")) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the replay read the damaged frame while Kafka was down");
    assert!(!lost.contains("\"lost\":0"), "{lost}");

    broker.resume();
    wait_for_admin(
        &client,
        &bridge,
        "/status",
        "the spool emptied",
        |_, body| body["spool"]["records"] == 0 && body["kafka"]["reachable"] == true,
    )
    .await;
    let answer = post_sequenced(&client, &bridge, 41, sequence + 7).await;
    assert_eq!(
        answer.status,
        Some(200),
        "the lead went to Kafka, not behind a spool with nothing of it left: {:?}",
        answer.body
    );
}

/// Overwrites bytes in the middle of the spool's only segment, as a disk
/// fault would.
fn damage_the_middle_of_the_segment(dir: &std::path::Path) {
    use std::io::{Seek, SeekFrom, Write};
    let segment = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .expect("a spool segment");
    let length = std::fs::metadata(&segment).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.seek(SeekFrom::Start(length / 2)).unwrap();
    file.write_all(&[0xA5; 64]).unwrap();
    file.sync_all().unwrap();
}
