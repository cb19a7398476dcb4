//! `dead-letter replay`: dead letters re-submitted through the conversion
//! path after a schema fix, progress kept as a consumer group.

use crate::config::Config;
use crate::ops::tools::topics::{header, topic_consumer};
use crate::ops::tools::ToolError;
use crate::pipeline::event;
use crate::vocabulary::headers::REPLAYED_FROM_HEADER;
use crate::vocabulary::headers::{FORWARDED_HEADER_PREFIX, NOTIFICATION_HEADER};
use crate::vocabulary::headers::{GROUP_ID_HEADER, RECEIVED_AT_HEADER};
use rdkafka::consumer::CommitMode;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// What `dead-letter replay` reads.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Start at the oldest dead letter instead of after the last replayed one.
    pub from_beginning: bool,
    pub max: Option<usize>,
    /// Stop after this long without a dead letter.
    pub idle_exit: Duration,
}

/// Consumer group whose committed offsets remember how far replay got.
pub const REPLAY_GROUP: &str = "superfone-bridge-dead-letter-replay";

/// Re-submits dead letters through the conversion path with the current
/// schemas (after a schema fix), keeping their original group id and
/// received-at. Records that still do not convert stay where they are.
/// Prints one JSON line per dead letter; returns (replayed, still invalid).
pub async fn replay_dead_letters(
    config: &Config,
    options: ReplayOptions,
    mut out: impl Write,
) -> Result<(usize, usize), ToolError> {
    let routes = crate::pipeline::route::event_routes(config).await?;
    let publisher =
        crate::durability::kafka::Publisher::new(&config.kafka, config.max_record_bytes())?;
    let topic = config.topics.dead_letter_topic();
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::Stored
    };
    let consumer = topic_consumer(config, &topic, REPLAY_GROUP, start)?;
    let (mut replayed, mut still_invalid) = (0, 0);
    while options.max.is_none_or(|max| replayed + still_invalid < max) {
        let message = match tokio::time::timeout(options.idle_exit, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => break,
        };
        let body = message.payload().unwrap_or_default();
        let origin = json!({"topic": message.topic(), "partition": message.partition(), "offset": message.offset()});
        let group_id = header(&message, GROUP_ID_HEADER)
            .unwrap_or_default()
            .to_owned();
        let received_at = header(&message, RECEIVED_AT_HEADER)
            .unwrap_or_default()
            .to_owned();
        let converted = serde_json::from_slice::<Value>(body)
            .map_err(|error| error.to_string())
            .and_then(|parsed| {
                let kind = event::dispatch(&parsed).map_err(|error| error.to_string())?;
                let object = parsed.as_object().expect("dispatch accepted an object");
                let mut record = routes[kind as usize]
                    .record(object, &group_id, &received_at)
                    .map_err(|error| error.to_string())?;
                record.headers.push((
                    REPLAYED_FROM_HEADER.into(),
                    format!(
                        "{}/{}/{}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ),
                ));
                record.headers.extend(origin_headers(&message));
                Ok((kind, record))
            });
        let line = match converted {
            Ok((kind, record)) => {
                let delivered = publisher.publish(&record).await?;
                replayed += 1;
                json!({"status": "replayed", "event": kind.as_str(), "topic": record.topic,
                       "partition": delivered.partition, "offset": delivered.offset,
                       "group_id": group_id, "dead_letter": origin})
            }
            Err(error) => {
                still_invalid += 1;
                json!({"status": "still_invalid", "error": error, "group_id": group_id, "dead_letter": origin})
            }
        };
        writeln!(out, "{line}")?;
        let mut position = TopicPartitionList::new();
        position.add_partition_offset(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset() + 1),
        )?;
        consumer.commit(&position, CommitMode::Sync)?;
    }
    Ok((replayed, still_invalid))
}

/// Which notification sent a dead letter, and its forwarded request
/// headers: the replayed event keeps them, as it would have had them.
fn origin_headers(message: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| h.key == NOTIFICATION_HEADER || h.key.starts_with(FORWARDED_HEADER_PREFIX))
        .map(|h| {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
            (h.key.to_owned(), value.into_owned())
        })
        .collect()
}
