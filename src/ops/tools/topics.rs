//! What the Kafka readers (`tail`, `dead-letter replay`) share: which topic
//! a target names, a consumer assigned every partition of it, and reading
//! a header.

use crate::config::Config;
use crate::ops::tools::ToolError;
use crate::vocabulary::EventKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

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
    let mut client_config = ClientConfig::new();
    for (key, value) in &config.kafka.options {
        client_config.set(key, value);
    }
    let consumer: StreamConsumer = client_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
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
    for partition in partitions {
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
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
