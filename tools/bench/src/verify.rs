//! Counting on the broker: every event topic is read from the beginning to
//! its high watermark, and each record's group id header says which phase
//! and request it came from. Only these records count as deliveries. The
//! soak reads through the same reader (`read_topics`), keeping each
//! record's partition and offset to check the order per lead.

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use superfone_bridge::vocabulary::headers::GROUP_ID_HEADER;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the topics must stay quiet after the watermarks were reached.
const QUIET: Duration = Duration::from_secs(2);

/// Sequence numbers found on the broker, per phase, for group ids `<run>-<phase>-<seq>`.
pub type Found = HashMap<String, HashSet<u64>>;

/// Reads `topics` completely (blocking; call from `spawn_blocking`).
pub fn records_on_broker(brokers: &str, topics: &[String], run: &str) -> anyhow::Result<Found> {
    let prefix = format!("{run}-");
    let mut found = Found::new();
    read_topics(brokers, topics, &format!("{run}-verify"), |record| {
        if let Some((phase, seq)) = record
            .group_id
            .and_then(|id| id.strip_prefix(&prefix))
            .and_then(|rest| rest.rsplit_once('-'))
        {
            if let Ok(seq) = seq.parse() {
                found.entry(phase.to_owned()).or_default().insert(seq);
            }
        }
    })?;
    Ok(found)
}

/// One record as read back: where it lies and what identifies it.
pub struct ReadBack<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// The `superfone-group-id` header.
    pub group_id: Option<&'a str>,
}

/// Reads `topics` from their beginning to past their high watermarks and
/// hands every record to `each`, in offset order within each partition
/// (blocking; call from `spawn_blocking`).
pub fn read_topics(
    brokers: &str,
    topics: &[String],
    consumer_group: &str,
    mut each: impl FnMut(ReadBack<'_>),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", consumer_group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the verifying consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    let mut highs: HashMap<(String, i32), i64> = HashMap::new();
    let mut past_watermark = 0u64;
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default();
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
            if high > low {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
                remaining.insert((topic.clone(), partition), high);
                highs.insert((topic.clone(), partition), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut last_progress = Instant::now();
    // Past the watermarks read at the start, keep reading until the topics
    // stay quiet for a while: tansu was seen reporting a high watermark that
    // lagged its last acknowledged records, which made them look lost.
    loop {
        let idle = last_progress.elapsed();
        if remaining.is_empty() && idle >= QUIET {
            break;
        }
        anyhow::ensure!(
            remaining.is_empty() || idle < TIMEOUT,
            "reading back stalled with {} partitions unfinished",
            remaining.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.context("reading back records")?;
        last_progress = Instant::now();
        let group_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == GROUP_ID_HEADER)
                .and_then(|header| std::str::from_utf8(header.value?).ok())
        });
        each(ReadBack {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            group_id,
        });
        let key = (message.topic().to_owned(), message.partition());
        if highs
            .get(&key)
            .is_some_and(|high| message.offset() >= *high)
        {
            past_watermark += 1;
        }
        if remaining
            .get(&key)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&key);
        }
    }
    if past_watermark > 0 {
        eprintln!(
            "[bench] {past_watermark} records were beyond the high watermarks the broker reported"
        );
    }
    Ok(())
}
