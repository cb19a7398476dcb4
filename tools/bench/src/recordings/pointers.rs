//! The pointer records as they arrive: a consumer of
//! `<prefix>recording_copies` from its first record, each value decoded
//! through the registry (Confluent's wire format, as any reader of the
//! topic would), kept per phase by the group id `<run>-<phase>-<seq>` that
//! the recording event carried and the copier passed on.

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use superfone_bridge::config::Config;
use superfone_bridge::pipeline::{avro_json, registry};
use superfone_bridge::vocabulary::headers::GROUP_ID_HEADER;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// One pointer record, as read back.
#[derive(Debug, Clone)]
pub struct PointerRecord {
    pub status: String,
    pub cdr_id: Option<i64>,
    pub object_url: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// `stored_at`: when the copy was complete (the bridge's clock), Unix ms.
    pub stored_at_ms: Option<f64>,
    /// The record's Kafka timestamp, Unix ms.
    pub kafka_ms: f64,
    pub error: Option<String>,
}

/// The first pointer record of each recording, by phase and sequence number.
type Seen = HashMap<String, BTreeMap<u64, PointerRecord>>;

/// What the reader hands the waiters.
#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Seen>>,
    arrived: Arc<Notify>,
    /// Whether the timestamps are the producer's (CreateTime) or the broker's.
    timestamp_kind: Arc<Mutex<Option<&'static str>>>,
}

/// Follows the pointer topic until dropped.
pub struct Pointers {
    shared: Shared,
    reader: tokio::task::JoinHandle<()>,
}

impl Pointers {
    /// Starts reading `config`'s pointer topic (it must exist) from the start.
    pub fn follow(config: &Config, run: &str) -> anyhow::Result<Pointers> {
        let topic = config.topics.recording_copies_topic();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", format!("{run}-pointers"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the pointer reader")?;
        let metadata = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)
        })?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment.add_partition_offset(&topic, partition.id(), Offset::Beginning)?;
        }
        anyhow::ensure!(assignment.count() > 0, "{topic} has no partitions");
        consumer.assign(&assignment)?;
        let decoder = AvroDecoder::new(registry::settings(&config.registry)?);
        let shared = Shared::default();
        let reader = tokio::spawn(read(consumer, decoder, format!("{run}-"), shared.clone()));
        Ok(Pointers { shared, reader })
    }

    /// Waits until `count` recordings of `phase` have a pointer record, for
    /// at most `timeout`; returns those that do, by sequence number.
    pub async fn wait_for(
        &self,
        phase: &str,
        count: usize,
        timeout: Duration,
    ) -> BTreeMap<u64, PointerRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let found = self.of(phase);
            if found.len() >= count || Instant::now() >= deadline {
                return found;
            }
            let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
        }
    }

    /// The pointer records of `phase` so far.
    pub fn of(&self, phase: &str) -> BTreeMap<u64, PointerRecord> {
        let seen = self.shared.seen.lock().expect("seen");
        seen.get(phase).cloned().unwrap_or_default()
    }

    /// `CreateTime` (the bridge's producer stamped the records) or `LogAppendTime`.
    pub fn timestamp_kind(&self) -> &'static str {
        let kind = self.shared.timestamp_kind.lock().expect("kind");
        kind.unwrap_or("none")
    }
}

impl Drop for Pointers {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads pointer records until aborted, keeping the first of each recording.
async fn read(consumer: StreamConsumer, decoder: AvroDecoder, prefix: String, shared: Shared) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                eprintln!("[bench] reading pointer records: {error}");
                continue;
            }
        };
        let Some((phase, seq)) = group_id(&message, &prefix) else {
            continue;
        };
        let Some(pointer) = decode(&decoder, &message).await else {
            eprintln!("[bench] a pointer record of {phase}-{seq} did not decode");
            continue;
        };
        let mut kind = shared.timestamp_kind.lock().expect("kind");
        kind.get_or_insert(timestamp_kind(&message));
        drop(kind);
        let mut seen = shared.seen.lock().expect("seen");
        seen.entry(phase).or_default().entry(seq).or_insert(pointer);
        shared.arrived.notify_waiters();
    }
}

/// The phase and sequence number of a record's group id `<run>-<phase>-<seq>`.
fn group_id(message: &BorrowedMessage<'_>, prefix: &str) -> Option<(String, u64)> {
    let headers = message.headers()?;
    let value = headers
        .iter()
        .find(|header| header.key == GROUP_ID_HEADER)?
        .value?;
    let (phase, seq) = std::str::from_utf8(value)
        .ok()?
        .strip_prefix(prefix)?
        .rsplit_once('-')?;
    Some((phase.to_owned(), seq.parse().ok()?))
}

async fn decode(decoder: &AvroDecoder, message: &BorrowedMessage<'_>) -> Option<PointerRecord> {
    let decoded = decoder.decode(message.payload()).await.ok()?;
    let fields = avro_json::to_json(&decoded.value);
    let text = |name: &str| fields[name].as_str().map(str::to_owned);
    Some(PointerRecord {
        status: text("status")?,
        cdr_id: fields["cdr_id"].as_i64(),
        object_url: text("object_url"),
        bytes: fields["bytes"].as_u64(),
        sha256: text("sha256"),
        stored_at_ms: text("stored_at").and_then(|at| unix_ms(&at)),
        kafka_ms: message.timestamp().to_millis()? as f64,
        error: text("error"),
    })
}

fn timestamp_kind(message: &BorrowedMessage<'_>) -> &'static str {
    match message.timestamp() {
        Timestamp::CreateTime(_) => "CreateTime",
        Timestamp::LogAppendTime(_) => "LogAppendTime",
        Timestamp::NotAvailable => "none",
    }
}

fn unix_ms(rfc3339: &str) -> Option<f64> {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e6)
}

/// Now, as Unix milliseconds (the clock the bridge stamps its records with).
pub fn now_ms() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}
