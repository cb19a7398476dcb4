//! Fault injection against real processes on loopback: the real bridge binary,
//! real tansu brokers owned by each test (frozen with SIGSTOP, or killed and
//! replaced, since tansu's memory storage forgets everything on restart), and
//! the records read back with Confluent's client. Each test prints its figures
//! (`FAULT-FIGURES {...}`; run `scripts/test --test faults -- --nocapture`).
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::faults::{
    check_records, count_answers, once_after, own_broker_options, post_sequenced,
    post_sequenced_to, post_until_published, read_back_and_check,
};
use support::{
    consume_from, free_port, post, signal, stream_events, Answer, Bridge, BridgeOptions, Broker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_mid_stream_loses_nothing_and_keeps_each_leads_order() {
    const CONTACTS: i64 = 250;
    const PER_CONTACT: i64 = 40; // 10,000 events
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(
        own_broker_options(&broker)
            .with("DELIVERY__ACK_DEADLINE_MS", 1000)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 3000),
    );
    let broker_pid = broker.pid();
    let on_progress = once_after(3_000, move || {
        // Stop the broker for longer than message.timeout.ms, then start it again.
        std::thread::spawn(move || {
            signal(broker_pid, "-STOP");
            std::thread::sleep(Duration::from_secs(6));
            signal(broker_pid, "-CONT");
        });
    });
    let answers = stream_events(
        bridge.ingest_url(),
        0..CONTACTS,
        PER_CONTACT,
        16,
        on_progress,
    )
    .await;
    let mut figures = count_answers("broker_stopped_mid_stream", &answers);
    assert!(
        figures.spooled_202 > 0,
        "the outage must have been felt: {figures:?}"
    );
    read_back_and_check(
        &broker.address(),
        &bridge.topic("TASK_CHANGE"),
        &mut figures,
        &answers,
    );
    figures.report();
    assert_eq!(figures.sent, 10_000);
    assert_eq!(
        figures.answered_2xx, figures.sent,
        "no event refused: {figures:?}"
    );
    assert_eq!(figures.lost, 0, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_killed_with_the_broker_down_replays_its_spool_after_restart() {
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let options = |broker: &Broker| {
        BridgeOptions {
            prefix: prefix.clone(),
            spool_dir: Some(spool.path().to_owned()),
            ..own_broker_options(broker)
        }
        .with("DELIVERY__ACK_DEADLINE_MS", 500)
        .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000)
    };
    let first_broker = Broker::start(port);
    let bridge = Bridge::start(options(&first_broker));
    let topic = bridge.topic("TASK_CHANGE");
    // The start-up checks run behind the open listener; phase A wants them done.
    support::wait_for_admin(
        &support::client(),
        &bridge,
        "/status",
        "topics and schema ids ready",
        |_, body| body["kafka"]["topics_ready"] == true && body["registry"]["pending"] == 0,
    )
    .await;

    // Phase A, broker up: everything published, read back before the broker goes.
    let answers_a = stream_events(bridge.ingest_url(), 0..50, 20, 8, Arc::new(|_| {})).await;
    let mut figures_a = count_answers("bridge_killed_phase_a_broker_up", &answers_a);
    assert_eq!(figures_a.published_200, 1_000, "{figures_a:?}");
    check_records(
        &mut figures_a,
        &answers_a,
        &consume_from(&first_broker.address(), &topic, 1_000),
    );
    figures_a.report();
    assert_eq!(figures_a.lost, 0);
    drop(first_broker);

    // Phase B, broker down: spooled; kill -9 the bridge in the middle.
    let bridge_pid = bridge.pid();
    let on_progress = once_after(1_000, move || signal(bridge_pid, "-KILL"));
    let answers_b = stream_events(bridge.ingest_url(), 50..150, 20, 8, on_progress).await;
    drop(bridge);
    let mut figures_b = count_answers("bridge_killed_phase_b_broker_down", &answers_b);
    assert!(figures_b.spooled_202 >= 900, "{figures_b:?}");
    assert_eq!(figures_b.published_200, 0);

    // A new broker (empty), the bridge restarted on the same spool: it replays.
    let second_broker = Broker::start(port);
    let restarted = Bridge::start(options(&second_broker));
    read_back_and_check(&second_broker.address(), &topic, &mut figures_b, &answers_b);
    figures_b.report();
    assert_eq!(figures_b.lost, 0, "{figures_b:?}");
    let replaying = "replaying events left in the spool";
    assert!(restarted.log_text_with(replaying).contains(replaying));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_every_request_in_flight() {
    let broker = Broker::start(free_port());
    let mut bridge = Bridge::start(own_broker_options(&broker));
    let pid = bridge.pid();
    let on_progress = once_after(1_000, move || signal(pid, "-TERM"));
    let answers = stream_events(bridge.ingest_url(), 0..40, 50, 32, on_progress).await;
    let mut figures = count_answers("sigterm_under_load", &answers);
    let status = bridge
        .wait_exit(Duration::from_secs(30))
        .expect("exits after draining");
    assert!(status.success(), "{status}");
    assert!(
        answers.iter().all(|a| a.accepted() || a.status.is_none()),
        "only 2xx, or no response at all (connection refused or closed by the shutdown)"
    );
    let records = read_back_and_check(
        &broker.address(),
        &bridge.topic("TASK_CHANGE"),
        &mut figures,
        &answers,
    );
    // A request the bridge processed must have been answered: an unanswered
    // event found in Kafka would be an answer lost in flight. (A request written
    // to a keep-alive connection just as the shutdown closes it idle is never
    // read: no record, and the client sees a transport error.)
    let processed: std::collections::HashSet<(i64, i64)> = records
        .iter()
        .map(|r| {
            let sequence: i64 =
                serde_json::from_str(r["value"]["updated_value"].as_str().unwrap()).unwrap();
            (r["key"].as_str().unwrap().parse().unwrap(), sequence)
        })
        .collect();
    let unanswered_but_processed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status.is_none() && processed.contains(&(a.contact, a.sequence)))
        .collect();
    assert!(
        unanswered_but_processed.is_empty(),
        "processed but unanswered: {:?}",
        unanswered_but_processed.first()
    );
    figures.report();
    assert!(figures.answered_2xx >= 1_000);
    assert_eq!(figures.lost, 0, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_posted_twice_is_one_record() {
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(own_broker_options(&broker));
    let client = support::client();
    let event = support::sequenced_event(7, 1).to_string();
    let concurrent: Vec<_> = (0..10)
        .map(|_| {
            let (client, url, event) = (client.clone(), bridge.ingest_url(), event.clone());
            tokio::spawn(async move {
                let auth = format!("Bearer {}", support::SECRET);
                support::post_with(&client, &url, event, Some(&auth), &[]).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in concurrent {
        replies.push(task.await.unwrap());
    }
    for _ in 0..5 {
        replies.push(post(&client, &bridge, event.clone()).await);
    }
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    let published: Vec<&Value> = replies
        .iter()
        .map(|(_, b)| b)
        .filter(|b| b["status"] == "published")
        .collect();
    assert_eq!(published.len(), 1, "{replies:?}");
    for (_, reply) in &replies {
        if reply["status"] == "duplicate" {
            assert_eq!(
                reply["offset"], published[0]["offset"],
                "duplicates point at the first delivery"
            );
            assert_eq!(reply["first_group_id"], published[0]["group_id"]);
            assert!(reply["dedup_key"]
                .as_str()
                .unwrap()
                .starts_with("TASK_CHANGE|task_id=100007|"));
        }
    }
    let records = consume_from(&broker.address(), &bridge.topic("TASK_CHANGE"), 1);
    assert_eq!(records.len(), 1, "one record for 15 deliveries");
    println!(
        "FAULT-FIGURES {}",
        json!({"test": "same_event_twice", "sent": 15, "published": 1, "duplicates_answered": 14, "records": records.len()})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_answers_503_without_crashing_and_recovers() {
    let broker = Broker::start(free_port());
    let bridge = Bridge::start(
        own_broker_options(&broker)
            .with("SPOOL__MAX_BYTES", 65_536)
            .with("SPOOL__SEGMENT_BYTES", 16_384)
            .with("DELIVERY__ACK_DEADLINE_MS", 300)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 2000),
    );
    let client = support::client();
    broker.freeze();
    let mut answers = Vec::new();
    let mut sequence = 0;
    while sequence < 2_000 && !answers.iter().any(|a: &Answer| a.status == Some(503)) {
        answers.push(post_sequenced(&client, &bridge, 1, sequence).await);
        sequence += 1;
    }
    let full = answers.last().unwrap().clone();
    assert_eq!(full.status, Some(503), "the spool cap was reached");
    assert_eq!(full.body["status"], "unavailable");
    assert!(
        bridge
            .log_text_with("spool is full")
            .contains("spool is full"),
        "logged loudly"
    );
    broker.resume();

    // Space returns as the spool drains; new events are accepted again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = post_sequenced(&client, &bridge, 1, sequence).await;
        let status = answer.status.unwrap_or_default();
        answers.push(answer);
        sequence += 1;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut figures = count_answers("spool_full", &answers);
    read_back_and_check(
        &broker.address(),
        &bridge.topic("TASK_CHANGE"),
        &mut figures,
        &answers,
    );
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
    assert!(figures.refused_503 >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_oversized_clients_do_not_starve_a_normal_one() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let bridge = Bridge::start(
        BridgeOptions::default()
            .with("DELIVERY__HEADER_READ_TIMEOUT_MS", 1000)
            .with("DELIVERY__BODY_READ_TIMEOUT_MS", 1000),
    );
    let addr = bridge.addr.clone();
    let mut attackers = Vec::new();
    for n in 0..150 {
        let addr = addr.clone();
        attackers.push(std::thread::spawn(move || -> String {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let auth = format!("authorization: Bearer {}\r\n", support::SECRET);
            let _ = match n % 3 {
                // Slow-loris: headers a byte at a time.
                0 => "POST /superfone/events HTTP/1.1\r\nhost: x\r\n".bytes().try_for_each(|byte| {
                    std::thread::sleep(Duration::from_millis(100));
                    stream.write_all(&[byte])
                }),
                // Oversized: a 100 MiB body announced.
                1 => write!(stream, "POST /superfone/events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 104857600\r\n\r\n{}", "x".repeat(10_000)),
                // Slow body: 10 bytes then silence.
                _ => write!(stream, "POST /superfone/events HTTP/1.1\r\nhost: x\r\n{auth}content-length: 1000\r\n\r\n0123456789"),
            };
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response.lines().next().unwrap_or("<closed>").to_owned()
        }));
    }
    let client = support::client();
    let mut answers = Vec::new();
    for sequence in 0..100 {
        answers.push(post_sequenced(&client, &bridge, 9, sequence).await);
    }
    let attacker_results: Vec<String> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut figures = count_answers("slow_and_oversized_flood", &answers);
    assert_eq!(figures.published_200, 100, "{figures:?}");
    let tally = |prefix: &str| {
        attacker_results
            .iter()
            .filter(|line| line.starts_with(prefix))
            .count()
    };
    assert_eq!(
        tally("HTTP/1.1 413"),
        50,
        "oversized bodies refused: {attacker_results:?}"
    );
    assert_eq!(
        tally("HTTP/1.1 408"),
        50,
        "slow bodies timed out: {attacker_results:?}"
    );
    // Slow-loris connections are cut by the header-read timeout (hyper answers 408 or closes).
    let cut = attacker_results
        .iter()
        .enumerate()
        .filter(|(n, line)| n % 3 == 0 && (line.starts_with("HTTP/1.1 408") || *line == "<closed>"))
        .count();
    assert_eq!(cut, 50, "{attacker_results:?}");
    let records = support::consume(&bridge.topic("TASK_CHANGE"), 100, false);
    check_records(&mut figures, &answers, &records);
    figures.report();
    assert_eq!(figures.lost, 0);
}

/// Per-lead order when a record's first attempt outlives its request. The
/// connections to the broker are cut (a gate in front of it), so librdkafka
/// keeps the messages queued and times them out one by one. Record A of a
/// lead misses the ack deadline (202, spooled, its first attempt still
/// queued); record B of the same lead arrives 2.5 s later, within A's
/// deadline. The gate opens between A's message timeout and B's. B
/// used to go straight to librdkafka behind A, land when the gate opened,
/// and A was replayed after it: the lead read B before A. Now B waits until
/// A is settled (spooled) and follows it into the spool. What this run can
/// and cannot show: here (tansu, librdkafka's idempotent producer) B did not
/// overtake A even with the wait taken out (tried: librdkafka failed or held
/// B's queued copy along with A's), so the test guards the order on this
/// stack without having shown the reordering itself; Apache Kafka answers
/// the idempotent producer after a cut differently (epoch bumps), and the
/// wait makes the order independent of that: librdkafka never holds two
/// records of one lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lead_keeps_its_order_when_kafka_returns_between_two_message_timeouts() {
    const LEAD: i64 = 7;
    let (gate, broker, options) = broker_behind_a_gate();
    let bridge = Bridge::start(
        options
            .with("DELIVERY__ACK_DEADLINE_MS", 3000)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 6000),
    );
    let client = support::client();
    let warm = post_sequenced(&client, &bridge, 1, 0).await;
    assert_eq!(warm.status, Some(200), "{warm:?}");

    gate.shut();
    let cut = std::time::Instant::now();
    let first = tokio::spawn({
        let (client, bridge_url) = (client.clone(), bridge.ingest_url());
        async move { post_sequenced_to(&client, &bridge_url, LEAD, 1).await }
    });
    // librdkafka looks for timed-out messages about once a second: B's
    // timeout must fall on a later look than A's.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = tokio::spawn({
        let (client, bridge_url) = (client.clone(), bridge.ingest_url());
        async move { post_sequenced_to(&client, &bridge_url, LEAD, 2).await }
    });
    // Between A's message timeout (about 6.0 s after the cut) and B's (8.5 s).
    tokio::time::sleep_until((cut + Duration::from_millis(7_200)).into()).await;
    gate.open();
    let answers = vec![warm, first.await.unwrap(), second.await.unwrap()];
    for answer in &answers[1..] {
        assert_eq!(answer.status, Some(202), "spooled: {answer:?}");
    }
    let mut figures = count_answers("lead_order_across_message_timeouts", &answers);
    let records = consume_from(&broker.address(), &bridge.topic("TASK_CHANGE"), 3);
    check_records(&mut figures, &answers, &records);
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
}

/// Several events of one lead arriving together while Kafka is slow (every
/// ack takes most of the deadline): each waits for the one before it, and
/// that wait must come out of its deadline, not add to it, or the last ones
/// are answered after Superfone has given up (5 s) and are lost to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_one_lead_under_a_slow_kafka_is_answered_within_the_deadline() {
    const LEAD: i64 = 9;
    const DEADLINE_MS: u64 = 1_500;
    let (gate, broker, options) = broker_behind_a_gate();
    let bridge = Bridge::start(
        options
            .with("DELIVERY__ACK_DEADLINE_MS", DEADLINE_MS)
            .with("KAFKA__MESSAGE_TIMEOUT_MS", 20_000),
    );
    let client = support::client();
    let sequence = post_until_published(&client, &bridge, LEAD).await;

    // A produce round trip now takes about 1 s: most of the deadline.
    gate.slow_down(Duration::from_millis(500));
    let mut burst = Vec::new();
    for next in sequence + 1..=sequence + 6 {
        let (client, url) = (client.clone(), bridge.ingest_url());
        burst.push(tokio::spawn(async move {
            post_sequenced_to(&client, &url, LEAD, next).await
        }));
        // Arrival order is the order to keep.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut answers = Vec::new();
    for answer in burst {
        answers.push(answer.await.unwrap());
    }
    gate.slow_down(Duration::ZERO);
    let slowest = answers.iter().map(|a| a.latency).max().unwrap();
    for answer in &answers {
        assert!(answer.accepted(), "{answer:?}");
    }
    assert!(
        slowest < Duration::from_millis(DEADLINE_MS + 1_000),
        "the deadline plus a spool write at most: the slowest answer took {slowest:?} ({:?})",
        answers
            .iter()
            .map(|a| (a.status, a.latency))
            .collect::<Vec<_>>()
    );
    let mut figures = count_answers("lead_burst_under_slow_kafka", &answers);
    let records = consume_from(&broker.address(), &bridge.topic("TASK_CHANGE"), 6);
    check_records(&mut figures, &answers, &records);
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
}

/// A broker of its own reached through a gate (it advertises the gate's
/// port, so every connection goes through it), and bridge options using it.
fn broker_behind_a_gate() -> (support::store::Gate, Broker, BridgeOptions) {
    let port = free_port();
    let gate = support::store::Gate::start(port);
    let broker = Broker::start_advertising(port, gate.port);
    let options = BridgeOptions {
        brokers: Some(format!("127.0.0.1:{}", gate.port)),
        ..BridgeOptions::default()
    };
    (gate, broker, options)
}
