//! What the Kafka readers (`tail`, `dead-letter replay`, `recordings`, `schema drift`)
//! share: which topic a target names, a consumer assigned every partition
//! of it, reading a topic to its end, and reading a header.

use crate::config::Config;
use crate::ops::tools::ToolError;
use crate::vocabulary::EventKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;

/// How long the brokers may leave a reader to its end without a record
/// before it gives up: an outage, not a quiet topic (the end is known).
const STALLED: Duration = Duration::from_secs(30);
/// How long the metadata may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// A record stamped this long after a reader started was written after it
/// (whatever the skew between clocks): `read_to_end` stops there.
const LATE: Duration = Duration::from_secs(60);

pub fn resolve_topic(config: &Config, target: &str) -> String {
    if let Some(kind) = EventKind::from_name(&target.to_ascii_uppercase()) {
        config.topics.topic_for(kind)
    } else if target.eq_ignore_ascii_case("dead_letter") {
        config.topics.dead_letter_topic()
    } else {
        target.to_owned()
    }
}

/// A consumer reading one topic from the given start, all partitions assigned.
pub(super) fn topic_consumer(
    config: &Config,
    topic: &str,
    group_id: &str,
    start: Offset,
) -> Result<StreamConsumer, ToolError> {
    let consumer: StreamConsumer = consumer_config(config, group_id).create()?;
    assign_all(&consumer, topic, start)?;
    Ok(consumer)
}

fn consumer_config(config: &Config, group_id: &str) -> ClientConfig {
    let mut client_config = ClientConfig::new();
    for (key, value) in &config.kafka.options {
        client_config.set(key, value);
    }
    client_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "50");
    client_config
}

/// Assigns every partition of `topic` to `consumer` from `start`; returns them.
fn assign_all(
    consumer: &StreamConsumer,
    topic: &str,
    start: Offset,
) -> Result<Vec<i32>, ToolError> {
    let metadata =
        tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ToolError::NoSuchTopic(topic.to_owned()));
    }
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;
    Ok(partitions)
}

/// Every record of `topic`, from the oldest to its end: a partition is
/// read until the consumer reaches the high watermark its fetch reports
/// (librdkafka's partition EOF), so the reading ends when it has read
/// everything, not after a quiet spell. `NoSuchTopic` if it does not exist.
///
/// Not the high watermark asked for up front (ListOffsets): a broker may
/// answer it per record batch (tansu answers a 3-record batch's end as 1),
/// and records past it would be missed. On a partition written faster than
/// it is read, the first record written `LATE` after the start ends it.
pub(super) async fn read_to_end(
    config: &Config,
    topic: &str,
) -> Result<Vec<OwnedMessage>, ToolError> {
    read_to_end_from(config, topic, Offset::Beginning, None).await
}

/// Like `read_to_end`, from `start` in each partition (`OffsetTail(n)`: its
/// last n records), keeping at most `max` records.
pub(super) async fn read_to_end_from(
    config: &Config,
    topic: &str,
    start: Offset,
    max: Option<usize>,
) -> Result<Vec<OwnedMessage>, ToolError> {
    let started = OffsetDateTime::now_utc();
    let late = (started + LATE).unix_timestamp() * 1000;
    let group_id = format!("superfone-bridge-read-{}", uuid::Uuid::now_v7());
    let consumer: StreamConsumer = consumer_config(config, &group_id)
        .set("enable.partition.eof", "true")
        .create()?;
    let mut reading: BTreeSet<i32> = assign_all(&consumer, topic, start)?.into_iter().collect();
    let mut records = Vec::new();
    while !reading.is_empty() && max.is_none_or(|max| records.len() < max) {
        let message = match tokio::time::timeout(STALLED, consumer.recv()).await {
            Err(_) => {
                return Err(ToolError::Stalled {
                    topic: topic.to_owned(),
                    partitions: reading.len(),
                    seconds: STALLED.as_secs(),
                })
            }
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                reading.remove(&partition);
                continue;
            }
            Ok(message) => message?,
        };
        if !reading.contains(&message.partition()) {
            continue;
        }
        if message.timestamp().to_millis().is_some_and(|at| at > late) {
            reading.remove(&message.partition());
            continue;
        }
        records.push(message.detach());
    }
    Ok(records)
}

pub(super) fn header<'a>(
    message: &'a rdkafka::message::BorrowedMessage<'_>,
    name: &str,
) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}
