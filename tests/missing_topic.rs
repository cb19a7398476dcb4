//! A topic that goes missing while the bridge runs (deleted, being
//! recreated, not yet propagated) is a wait, not a poison: the events for it
//! are answered 2xx and spooled, never parked, and reach Kafka in order once
//! the topic is back: recreated by the bridge with `kafka.create_topics`, or
//! by an operator without it.
//!
//! What tansu can and cannot show. tansu 0.6 acknowledges a produce to a
//! topic it has deleted (Apache Kafka answers UNKNOWN_TOPIC_OR_PARTITION,
//! which librdkafka retries while it refreshes the topic's metadata), and it
//! creates a missing topic whenever a metadata request allows it (as Kafka
//! does with `auto.create.topics.enable`). So these tests have the bridge's
//! librdkafka refresh its topics' metadata every 500 ms and mark a topic
//! missing 500 ms after it disappears (`topic.metadata.refresh.interval.ms`,
//! `topic.metadata.propagation.max.ms`; librdkafka's defaults are 5 min and
//! 30 s), and wait for that before posting: from then on librdkafka fails
//! every record for the topic at once with "Local: Unknown topic", the state
//! Apache Kafka leads to. What they cannot show: the records Apache Kafka
//! refuses in flight, and a topic that several brokers learn at different
//! times.
#![cfg(feature = "e2e")]

mod support;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::faults::{check_records, count_answers, post_sequenced};
use support::{metrics_text, wait_for_admin, Answer, Bridge, BridgeOptions};

/// How long the bridge's librdkafka takes at most to mark a deleted topic
/// missing with the settings of `fast_metadata`, with a margin.
const NOTICED: Duration = Duration::from_secs(3);

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", support::stack().brokers)
        .create()
        .unwrap()
}

async fn delete_topic(topic: &str) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin().delete_topics(&[topic], &options).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Creates `topic` as an operator would.
async fn create_topic(topic: &str) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(topic, 3, TopicReplication::Fixed(1));
    let results = admin().create_topics(&[new], &options).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// How many partitions the broker lists for `topic`; `None` when it lists
/// no such topic (asking for every topic, which creates none).
fn partitions_of(topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::stack().brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let listed = metadata
        .topics()
        .iter()
        .find(|listed| listed.name() == topic)?;
    Some(listed.partitions().len())
}

/// librdkafka settings (`kafka.options_dir`) that make the bridge learn of a
/// deleted topic within a second, and `extra` ones.
fn fast_metadata(dir: &Path, extra: &[(&str, &str)]) {
    let settings = [
        ("topic.metadata.refresh.interval.ms", "500"),
        ("topic.metadata.propagation.max.ms", "500"),
    ];
    for (key, value) in settings.iter().chain(extra) {
        std::fs::write(dir.join(key), value).unwrap();
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Posts events 1..=per_contact for contacts 1 to 3, a contact's in sequence.
async fn post_events(client: &reqwest::Client, bridge: &Bridge, per_contact: i64) -> Vec<Answer> {
    let mut answers = Vec::new();
    for sequence in 1..=per_contact {
        for contact in 1..=3 {
            answers.push(post_sequenced(client, bridge, contact, sequence).await);
        }
    }
    answers
}

/// Every answer 2xx, none `parked`, and nothing parked in the spool.
async fn assert_accepted_none_parked(
    client: &reqwest::Client,
    bridge: &Bridge,
    answers: &[Answer],
) {
    let statuses: Vec<String> = answers
        .iter()
        .map(|a| format!("{:?} {}", a.status, a.body["status"]))
        .collect();
    assert!(
        answers
            .iter()
            .all(|a| a.accepted() && a.body["status"] != "parked"),
        "{statuses:?}"
    );
    let (_, status) = support::admin_get(client, bridge, "/status").await;
    assert_eq!(status["spool"]["parked"], 0, "{status}");
    let metrics = metrics_text(client, bridge).await;
    assert_eq!(metric(&metrics, "superfone_spool_parked_total"), 0.0);
}

/// Waits until the spool has sent everything, then reads the topic back and
/// checks every event answered 2xx is there once, in order per contact.
async fn assert_arrived_in_order(client: &reqwest::Client, bridge: &Bridge, answers: &[Answer]) {
    wait_for_admin(
        client,
        bridge,
        "/status",
        "an empty spool",
        |_, body: &Value| body["spool"]["records"] == 0,
    )
    .await;
    let mut figures = count_answers("missing_topic", answers);
    let records = support::consume(&bridge.topic("TASK_CHANGE"), answers.len(), false);
    check_records(&mut figures, answers, &records);
    figures.report();
    assert_eq!(figures.lost, 0, "{figures:?}");
}

/// With `kafka.create_topics` (the default), the bridge creates the topic
/// again, as start-up does (its partitions, not a broker's defaults from an
/// auto-creation), and sends what waited, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_is_created_again_and_its_events_arrive_in_order() {
    const PARTITIONS: usize = 5;
    let options_dir = tempfile::tempdir().unwrap();
    fast_metadata(options_dir.path(), &[]);
    let bridge = Bridge::start(
        BridgeOptions::default()
            .with("KAFKA__TOPIC_PARTITIONS", PARTITIONS)
            .with("KAFKA__OPTIONS_DIR", options_dir.path().display()),
    );
    let client = support::client();
    let before = post_sequenced(&client, &bridge, 1, 0).await;
    assert_eq!(before.body["status"], "published", "{:?}", before.body);

    delete_topic(&bridge.topic("TASK_CHANGE")).await;
    tokio::time::sleep(NOTICED).await;
    let started = Instant::now();
    let answers = post_events(&client, &bridge, 10).await;
    assert_accepted_none_parked(&client, &bridge, &answers).await;
    assert_arrived_in_order(&client, &bridge, &answers).await;
    assert_eq!(
        partitions_of(&bridge.topic("TASK_CHANGE")),
        Some(PARTITIONS)
    );
    println!(
        "30 events for a deleted topic: in Kafka, in order, {:?} after the first was posted",
        started.elapsed()
    );
}

/// Without `kafka.create_topics` the topic is not the bridge's to create:
/// its events wait in the spool (answered 202, not parked) until an
/// operator creates it, then arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_topics_events_wait_in_the_spool_for_the_operator() {
    let options_dir = tempfile::tempdir().unwrap();
    // librdkafka's default lets a producer's metadata request create the
    // topic where the broker allows it; here only the operator does.
    fast_metadata(options_dir.path(), &[("allow.auto.create.topics", "false")]);
    let options = BridgeOptions::default();
    let topic = format!("{}task_change", options.prefix);
    create_topic(&topic).await;
    let bridge = Bridge::start(
        options
            .with("KAFKA__CREATE_TOPICS", false)
            .with("KAFKA__OPTIONS_DIR", options_dir.path().display()),
    );
    let client = support::client();
    let before = post_sequenced(&client, &bridge, 1, 0).await;
    assert_eq!(before.body["status"], "published", "{:?}", before.body);

    delete_topic(&topic).await;
    tokio::time::sleep(NOTICED).await;
    let answers = post_events(&client, &bridge, 5).await;
    assert_accepted_none_parked(&client, &bridge, &answers).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, status) = support::admin_get(&client, &bridge, "/status").await;
    assert_eq!(
        status["spool"]["records"],
        answers.len(),
        "all wait: {status}"
    );
    assert_eq!(
        partitions_of(&topic),
        None,
        "the topic was created behind the operator's back"
    );

    create_topic(&topic).await;
    assert_arrived_in_order(&client, &bridge, &answers).await;
}
