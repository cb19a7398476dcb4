//! What the fault tests share: the figures a run reports (sent, answered,
//! consumed, lost, duplicates, longest answer, peak RSS) and the check that
//! every 2xx-answered event was read back once, in order per lead.

use super::{consume_from, Answer, Bridge, BridgeOptions, Broker};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a fault run produced, as the closing notes report it.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub test: &'static str,
    pub sent: usize,
    pub answered_2xx: usize,
    pub published_200: usize,
    pub spooled_202: usize,
    pub refused_503: usize,
    pub no_response: usize,
    pub consumed: usize,
    pub duplicate_records: usize,
    pub lost: usize,
    pub max_answer_ms: u128,
    /// The bridge's peak resident memory (VmHWM), where the test measured it.
    pub peak_rss_mib: u64,
}

impl Figures {
    pub fn report(&self) {
        println!("FAULT-FIGURES {}", serde_json::to_string(self).unwrap());
    }
}

pub fn count_answers(test: &'static str, answers: &[Answer]) -> Figures {
    Figures {
        test,
        sent: answers.len(),
        answered_2xx: answers.iter().filter(|a| a.accepted()).count(),
        published_200: answers
            .iter()
            .filter(|a| a.body["status"] == "published")
            .count(),
        spooled_202: answers.iter().filter(|a| a.status == Some(202)).count(),
        refused_503: answers.iter().filter(|a| a.status == Some(503)).count(),
        no_response: answers.iter().filter(|a| a.status.is_none()).count(),
        max_answer_ms: answers
            .iter()
            .map(|a| a.latency.as_millis())
            .max()
            .unwrap_or(0),
        ..Figures::default()
    }
}

/// Checks every 2xx-answered event against the records read back: none lost,
/// repeats counted (and carrying the same dedup key), each contact on one
/// partition with its events in the order they were sent.
pub fn check_records(figures: &mut Figures, answers: &[Answer], records: &[Value]) {
    figures.consumed = records.len();
    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    let mut by_contact: BTreeMap<i64, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for record in records {
        let contact: i64 = record["key"].as_str().unwrap().parse().unwrap();
        let sequence: i64 =
            serde_json::from_str(record["value"]["updated_value"].as_str().unwrap()).unwrap();
        assert!(
            record["headers"]["superfone-dedup-key"].as_str().is_some(),
            "dedup header on every record"
        );
        *seen.entry((contact, sequence)).or_default() += 1;
        let position = (
            record["partition"].as_i64().unwrap(),
            record["offset"].as_i64().unwrap(),
            sequence,
        );
        by_contact.entry(contact).or_default().push(position);
    }
    figures.duplicate_records = seen.values().map(|n| n - 1).sum();
    figures.lost = answers
        .iter()
        .filter(|a| a.accepted() && !seen.contains_key(&(a.contact, a.sequence)))
        .count();
    for (contact, mut positions) in by_contact {
        let partitions: std::collections::BTreeSet<i64> = positions.iter().map(|p| p.0).collect();
        assert_eq!(
            partitions.len(),
            1,
            "contact {contact} spread over partitions {partitions:?}"
        );
        positions.sort();
        let mut first_seen = Vec::new();
        for (_, _, sequence) in positions {
            if !first_seen.contains(&sequence) {
                first_seen.push(sequence);
            }
        }
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "contact {contact} out of order: {first_seen:?}"
        );
    }
}

/// A load-progress callback that runs `action` once, when `threshold` events
/// have been answered: the fault is injected in the middle of the stream.
pub fn once_after(
    threshold: usize,
    action: impl Fn() + Send + Sync + 'static,
) -> Arc<dyn Fn(usize) + Send + Sync> {
    let fired = AtomicBool::new(false);
    Arc::new(move |answered| {
        if answered >= threshold && !fired.swap(true, Ordering::SeqCst) {
            action();
        }
    })
}

/// Posts one sequenced event and records the answer.
pub async fn post_sequenced(
    client: &reqwest::Client,
    bridge: &Bridge,
    contact: i64,
    sequence: i64,
) -> Answer {
    post_sequenced_to(client, &bridge.ingest_url(), contact, sequence).await
}

/// Posts the lead's events from sequence 0 on until one is answered 200
/// from Kafka (the first ones may be spooled while a fresh broker sets up
/// its topics); returns that event's sequence.
pub async fn post_until_published(client: &reqwest::Client, bridge: &Bridge, contact: i64) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut sequence = 0;
    while post_sequenced(client, bridge, contact, sequence)
        .await
        .status
        != Some(200)
    {
        assert!(std::time::Instant::now() < deadline, "never answered 200");
        sequence += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    sequence
}

/// `post_sequenced` to an ingest URL (from a task that does not hold the bridge).
pub async fn post_sequenced_to(
    client: &reqwest::Client,
    url: &str,
    contact: i64,
    sequence: i64,
) -> Answer {
    let started = std::time::Instant::now();
    let (status, body) = super::post_with(
        client,
        url,
        super::sequenced_event(contact, sequence).to_string(),
        Some(&format!("Bearer {}", super::SECRET)),
        &[],
    )
    .await;
    Answer {
        contact,
        sequence,
        status: Some(status),
        body,
        connect_error: false,
        latency: started.elapsed(),
    }
}

/// Reads back everything the events answered 2xx should have produced and
/// checks it (`check_records`); returns the records.
pub fn read_back_and_check(
    brokers: &str,
    topic: &str,
    figures: &mut Figures,
    answers: &[Answer],
) -> Vec<Value> {
    let records = consume_from(brokers, topic, figures.answered_2xx);
    check_records(figures, answers, &records);
    records
}

pub fn own_broker_options(broker: &Broker) -> BridgeOptions {
    BridgeOptions {
        brokers: Some(broker.address()),
        ..BridgeOptions::default()
    }
}
