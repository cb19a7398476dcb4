//! The rdkafka producer: one idempotent `acks=all` producer for every topic,
//! start-up checks (broker metadata, topic creation), the publish future that
//! resolves only once the broker acknowledged the record, and the final flush.
//!
//! Every body the HTTP limit accepts must fit the producer, the topics and
//! the broker: `message.max.bytes` and the topics' `max.message.bytes` are
//! set from `server.max_body_bytes` plus `RECORD_OVERHEAD_BYTES`, and errors
//! that no retry can cure (`PublishError::is_permanent`) are told apart, so
//! the spool parks such a record instead of retrying it forever.
//!
//! A missing topic (deleted, being recreated, not yet propagated) is not one
//! of them: its records wait in the spool, in order, while the publisher
//! restores the topic (`Publisher::recover`): created again as start-up
//! creates it when `kafka.create_topics` is on, and its metadata asked for,
//! since librdkafka fails every record of a topic it believes missing at
//! once and would not ask again by itself for minutes.

use crate::config::{Config, KafkaConfig};
use crate::durability::reports::ServedProducer;
use crate::vocabulary::{EventKind, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Statistics};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid Kafka client configuration: {0}")]
    Client(#[source] KafkaError),
    #[error("Kafka brokers {brokers} unreachable: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("the broker did not acknowledge the record: {0}")]
    Delivery(#[source] KafkaError),
    /// Retried: the topic comes back, created again or by an operator.
    #[error("topic {topic} does not exist (deleted, or not created yet): {source}")]
    MissingTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// The Kafka error codes no retry can cure for one record: it is too large,
/// its topic is invalid or forbidden, or the broker refuses its format.
/// Everything else (timeouts, transport, leadership changes, a fenced or
/// fatal producer, which is replaced, a missing topic) is retried.
const PERMANENT_CODES: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::InvalidMessageSize,
    RDKafkaErrorCode::MessageBatchTooLarge,
    RDKafkaErrorCode::InvalidRecord,
    RDKafkaErrorCode::InvalidTimestamp,
    RDKafkaErrorCode::InvalidTopic,
    RDKafkaErrorCode::TopicAuthorizationFailed,
    RDKafkaErrorCode::ClusterAuthorizationFailed,
    RDKafkaErrorCode::UnsupportedForMessageFormat,
    RDKafkaErrorCode::UnsupportedCompressionType,
    RDKafkaErrorCode::PolicyViolation,
    RDKafkaErrorCode::InvalidRequiredAcks,
    RDKafkaErrorCode::BadMessage,
    RDKafkaErrorCode::InvalidArgument,
];

/// The codes of a record whose topic (or partition) the brokers do not know:
/// librdkafka's own "Local: Unknown topic" for a topic its metadata says is
/// missing (every record then fails at once, until a metadata answer lists
/// the topic again), and the brokers' UNKNOWN_TOPIC_OR_PARTITION. Topic
/// names are checked at start (`Config::validate`), so these mean missing,
/// never invalid.
const MISSING_TOPIC_CODES: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::UnknownTopic,
    RDKafkaErrorCode::UnknownTopicOrPartition,
    RDKafkaErrorCode::UnknownPartition,
];

/// How often a missing topic is restored at most (created, its metadata
/// asked for), and how long one restoration may take.
const RESTORE_INTERVAL: Duration = Duration::from_secs(1);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(5);

impl PublishError {
    /// Why the broker did not take a record for `topic`.
    fn delivery(error: KafkaError, topic: &str) -> Self {
        match error.rdkafka_error_code() {
            Some(code) if MISSING_TOPIC_CODES.contains(&code) => PublishError::MissingTopic {
                topic: topic.to_owned(),
                source: error,
            },
            _ => PublishError::Delivery(error),
        }
    }

    /// The record can never be stored as it is: retrying it would only block
    /// the records behind it.
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishError::Delivery(error) => error
                .rdkafka_error_code()
                .is_some_and(|code| PERMANENT_CODES.contains(&code)),
            _ => false,
        }
    }
}

/// Codes with which brokers that answered refuse to create a topic as
/// configured: no retry changes the answer, the deployment must.
const CREATE_REFUSAL_CODES: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::TopicAuthorizationFailed,
    RDKafkaErrorCode::ClusterAuthorizationFailed,
    RDKafkaErrorCode::PolicyViolation,
    RDKafkaErrorCode::InvalidConfig,
    RDKafkaErrorCode::InvalidTopic,
    RDKafkaErrorCode::InvalidPartitions,
    RDKafkaErrorCode::InvalidReplicationFactor,
    RDKafkaErrorCode::InvalidReplicaAssignment,
    RDKafkaErrorCode::InvalidRequest,
];

impl PublishError {
    /// The brokers refused to create a topic as configured. Anything else
    /// at creation (a timeout, no controller yet) passes with a retry.
    pub fn is_creation_refusal(&self) -> bool {
        matches!(self, PublishError::CreateTopic { code, .. } if CREATE_REFUSAL_CODES.contains(code))
    }
}

/// The topics the bridge creates when they are missing, with a
/// `max.message.bytes` that fits `max_record_bytes`.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub names: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i32,
    pub max_record_bytes: usize,
}

impl TopicSpec {
    /// The topics `config` names, each once: one per event (or one for
    /// all, `topics.single`), the dead-letter topic and, when the recording
    /// copier runs, its pointer records'.
    pub fn of(config: &Config) -> TopicSpec {
        let mut names: Vec<String> = Vec::new();
        for topic in EventKind::ALL.map(|kind| config.topics.topic_for(kind)) {
            if !names.contains(&topic) {
                names.push(topic);
            }
        }
        names.push(config.topics.dead_letter_topic());
        if config.recordings.enabled {
            names.push(config.topics.recording_copies_topic());
        }
        TopicSpec {
            names,
            partitions: config.kafka.topic_partitions,
            replication_factor: config.kafka.topic_replication_factor,
            max_record_bytes: config.max_record_bytes(),
        }
    }
}

/// Whether the bridge's topics are known to exist when delivery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    /// They exist (created at start-up, or not the bridge's to create):
    /// records may be sent.
    Ready,
    /// Kafka was unreachable at start-up: they are created once it is back,
    /// and records wait in the spool until then.
    Pending,
}

/// The brokers' answer about the cluster and the bridge's topics.
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    /// `host:port` of each broker the metadata lists.
    pub brokers: Vec<String>,
    /// Why the topics' configs could not be described, if they could not.
    pub configs_error: Option<String>,
    pub topics: Vec<TopicFacts>,
}

/// The brokers' answer about one topic.
#[derive(Debug, Clone)]
pub struct TopicFacts {
    pub name: String,
    /// `None`: the topic does not exist.
    pub partitions: Option<usize>,
    /// The error the brokers give for this topic (e.g. not authorized).
    pub error: Option<String>,
    /// `None`: the brokers did not tell.
    pub max_message_bytes: Option<usize>,
}

/// What the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Resolves when the broker acknowledged (or librdkafka gave up on) one enqueued record.
pub type Acknowledgement =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Delivered, PublishError>> + Send>>;

/// Feeds librdkafka's statistics into the metrics, logs its client-level
/// errors (e.g. all brokers down) as warnings (the delivery path reports the
/// consequences itself), and completes each record's acknowledgement with
/// its delivery report.
pub struct BridgeContext;

impl ClientContext for BridgeContext {
    fn stats(&self, statistics: Statistics) {
        crate::observe::metrics::record_kafka_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "librdkafka");
    }
}

impl ProducerContext for BridgeContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<Delivered, KafkaError>>>;

    fn delivery(&self, report: &DeliveryResult<'_>, acknowledgement: Self::DeliveryOpaque) {
        let result = match report {
            Ok(message) => Ok(Delivered {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        // The request may have gone (its deadline spooled the record): no one to tell.
        let _ = acknowledgement.send(result);
    }
}

type KafkaProducer = Arc<ServedProducer<BridgeContext>>;

pub struct Publisher {
    /// Replaced when librdkafka reports a fatal error (e.g. the idempotent
    /// producer was fenced after in-flight requests timed out): a fatal
    /// producer never recovers, and the spool replays what it lost.
    producer: RwLock<KafkaProducer>,
    /// When the producer was last replaced: a burst of failures from the old
    /// producer's queue must not replace the new one again.
    replaced_at: std::sync::Mutex<Option<std::time::Instant>>,
    client_config: ClientConfig,
    brokers: String,
    /// Where each producer's delivery reports are served.
    runtime: tokio::runtime::Handle,
    /// How a missing topic is created again: `kafka.create_topics`'
    /// partitions, replication and `max.message.bytes` (no names); `None`
    /// when topics are not the bridge's to create.
    creates: Option<TopicSpec>,
    /// When each missing topic was last restored.
    restored: Mutex<HashMap<String, Instant>>,
}

impl Publisher {
    /// `max_record_bytes`: the largest record the producer must accept
    /// (`Config::max_record_bytes`); a larger pass-through
    /// `message.max.bytes` is kept. Call it inside the Tokio runtime, which
    /// serves the delivery reports.
    pub fn new(config: &KafkaConfig, max_record_bytes: usize) -> Result<Self, PublishError> {
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", "superfone-bridge")
            .set("compression.type", config.compression.as_str())
            .set("linger.ms", millis(config.linger_ms))
            .set("message.timeout.ms", millis(config.message_timeout_ms))
            .set("partitioner", config.partitioner.as_str())
            .set(
                "statistics.interval.ms",
                millis(config.statistics_interval_ms),
            );
        if config.create_topics {
            // The bridge creates its topics, with its partitions and
            // max.message.bytes: a broker auto-creating a deleted one with
            // its own defaults on a metadata request would race it.
            client_config.set("allow.auto.create.topics", "false");
        }
        for (key, value) in &config.options {
            client_config.set(key, value);
        }
        let configured_max = config
            .options
            .get("message.max.bytes")
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(0);
        client_config.set(
            "message.max.bytes",
            configured_max.max(max_record_bytes).to_string(),
        );
        // Set last so pass-through options cannot weaken the delivery guarantee.
        client_config
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let runtime = tokio::runtime::Handle::current();
        let producer = create_producer(&client_config, &runtime).map_err(PublishError::Client)?;
        Ok(Publisher {
            producer: RwLock::new(producer),
            replaced_at: std::sync::Mutex::new(None),
            client_config,
            brokers: config.brokers.clone(),
            runtime,
            creates: config.create_topics.then(|| TopicSpec {
                names: Vec::new(),
                partitions: config.topic_partitions,
                replication_factor: config.topic_replication_factor,
                max_record_bytes,
            }),
            restored: Mutex::new(HashMap::new()),
        })
    }

    fn producer(&self) -> KafkaProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Replaces the producer when it cannot recover by itself: librdkafka
    /// declared it fatally failed, or the broker fenced its producer id (seen
    /// after in-flight requests time out and the idempotent producer bumps its
    /// epoch). Returns whether it did. A missing topic is restored in the
    /// background (`restore_topic`). Cheap: call it after any failed delivery.
    pub fn recover(&self, error: &PublishError) -> bool {
        if let PublishError::MissingTopic { topic, .. } = error {
            self.restore_topic(topic);
            return false;
        }
        let fenced = matches!(
            error,
            PublishError::Delivery(
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::UnknownProducerId
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::InvalidProducerIdMapping
                ) | KafkaError::Canceled
            )
        );
        let mut producer = self.producer.write().expect("producer lock");
        let fatal = producer.client().fatal_error();
        if !fenced && fatal.is_none() {
            return false;
        }
        let mut replaced_at = self.replaced_at.lock().expect("replaced_at lock");
        if replaced_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        tracing::error!(%error, fatal = ?fatal, "Kafka producer cannot recover; replacing it");
        match create_producer(&self.client_config, &self.runtime) {
            Ok(fresh) => {
                metrics::counter!(crate::observe::metrics::PRODUCER_REPLACEMENTS).increment(1);
                let failed = std::mem::replace(&mut *producer, fresh);
                *replaced_at = Some(std::time::Instant::now());
                // Dropping a producer can block on its queue: not on the runtime.
                std::thread::spawn(move || drop(failed));
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot create a new Kafka producer");
                false
            }
        }
    }

    /// Restores a topic the brokers do not know, in the background and at
    /// most every `RESTORE_INTERVAL`: creates it as start-up does when
    /// `kafka.create_topics` is on, then asks the brokers for its metadata.
    /// librdkafka fails every record of a topic it believes missing at once
    /// and would not ask again until `topic.metadata.refresh.interval.ms`
    /// (5 minutes); this answer tells it the topic exists once it does.
    fn restore_topic(&self, topic: &str) {
        {
            let mut restored = self.restored.lock().expect("restored lock");
            if restored
                .get(topic)
                .is_some_and(|at| at.elapsed() < RESTORE_INTERVAL)
            {
                return;
            }
            restored.insert(topic.to_owned(), Instant::now());
        }
        let creates = self.creates.clone().map(|shape| {
            let spec = TopicSpec {
                names: vec![topic.to_owned()],
                ..shape
            };
            (self.client_config.clone(), spec, self.brokers.clone())
        });
        let (producer, topic) = (self.producer(), topic.to_owned());
        self.runtime.spawn(async move {
            if let Some((client_config, spec, brokers)) = creates {
                match create_topics(&client_config, &spec, RESTORE_TIMEOUT, &brokers).await {
                    Ok(created) if !created.is_empty() => {
                        tracing::warn!(%topic, "the topic was missing; created it again (kafka.create_topics)");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, %topic, "the topic is missing and cannot be created yet"),
                }
            }
            let asked = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(RESTORE_TIMEOUT))
                    .map(|_| ())
            })
            .await;
            if let Ok(Err(error)) = asked {
                tracing::debug!(%error, "metadata of a missing topic not fetched");
            }
        });
    }

    /// Waits until broker metadata can be fetched: the brokers are reachable.
    pub async fn check_broker(&self, timeout: Duration) -> Result<(), PublishError> {
        self.metadata(timeout).await.map(|_| ())
    }

    /// The cluster's metadata (brokers, every topic), fetched off the runtime.
    async fn metadata(&self, timeout: Duration) -> Result<Metadata, PublishError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
        })
        .await
        .expect("metadata task panicked")
        .map_err(|source| PublishError::Unreachable {
            brokers: self.brokers.clone(),
            source,
        })
    }

    /// Creates the topics of `spec` that do not exist yet; existing ones are
    /// left as they are. Returns those it created.
    pub async fn create_topics(
        &self,
        spec: &TopicSpec,
        timeout: Duration,
    ) -> Result<Vec<String>, PublishError> {
        create_topics(&self.client_config, spec, timeout, &self.brokers).await
    }

    /// Asks the brokers for each topic's `max.message.bytes` and says, at
    /// WARN with the numbers, which topics cannot store a record as large as
    /// an accepted body can become (such records would be parked). A broker
    /// that does not describe configs (some Kafka-compatible brokers) is
    /// reported once at WARN; the check never stops the bridge. Returns the
    /// topics found too small.
    pub async fn check_topic_limits(&self, spec: &TopicSpec, timeout: Duration) -> Vec<String> {
        let limits = match self.max_message_bytes(&spec.names, timeout).await {
            Ok(limits) => limits,
            Err(error) => {
                tracing::warn!(%error, "the brokers did not describe the topics' configs; max.message.bytes not checked");
                return Vec::new();
            }
        };
        let mut too_small = Vec::new();
        for (name, limit) in spec.names.iter().zip(limits) {
            match limit {
                Some(limit) if limit < spec.max_record_bytes => {
                    tracing::warn!(
                        topic = %name, max_message_bytes = limit, largest_record = spec.max_record_bytes,
                        "topic cannot store the largest record an accepted body can become \
                         (server.max_body_bytes + 64 KiB): raise its max.message.bytes or lower \
                         server.max_body_bytes; larger events will be parked"
                    );
                    too_small.push(name.clone());
                }
                Some(_) => {}
                None => {
                    tracing::warn!(topic = %name, "the brokers did not tell this topic's max.message.bytes; not checked")
                }
            }
        }
        too_small
    }

    /// Each topic's `max.message.bytes`, in the order of `names`; `None`
    /// where the brokers did not tell (an absent topic, a broker that does
    /// not describe it).
    async fn max_message_bytes(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<Option<usize>>, KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config.create()?;
        let resources: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|name| ResourceSpecifier::Topic(name))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(timeout));
        let described = admin.describe_configs(&resources, &options).await?;
        Ok(described
            .into_iter()
            .map(|result| {
                result.ok().and_then(|resource| {
                    resource
                        .get("max.message.bytes")?
                        .value
                        .as_deref()?
                        .parse::<usize>()
                        .ok()
                })
            })
            .collect())
    }

    /// What the brokers say about the cluster and each of `names`
    /// (`check-config --online`). Fails only when the brokers cannot be asked.
    pub async fn describe_topics(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<ClusterFacts, PublishError> {
        let metadata = self.metadata(timeout).await?;
        let max_message_bytes = self.max_message_bytes(names, timeout).await;
        let topics = names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let listed = metadata.topics().iter().find(|topic| topic.name() == name);
                let error = listed
                    .and_then(|topic| topic.error())
                    .map(RDKafkaErrorCode::from);
                let absent =
                    listed.is_none() || error == Some(RDKafkaErrorCode::UnknownTopicOrPartition);
                TopicFacts {
                    name: name.clone(),
                    partitions: listed
                        .filter(|_| !absent)
                        .map(|topic| topic.partitions().len()),
                    error: error.filter(|_| !absent).map(|code| code.to_string()),
                    max_message_bytes: match &max_message_bytes {
                        Ok(limits) if !absent => limits[index],
                        _ => None,
                    },
                }
            })
            .collect();
        Ok(ClusterFacts {
            brokers: metadata
                .brokers()
                .iter()
                .map(|broker| format!("{}:{}", broker.host(), broker.port()))
                .collect(),
            configs_error: max_message_bytes.err().map(|error| error.to_string()),
            topics,
        })
    }

    /// Hands a record to librdkafka now (so records enter its queue in call
    /// order, which keeps per-key order) and returns the acknowledgement future.
    pub fn enqueue(&self, record: &Record) -> Result<Acknowledgement, PublishError> {
        let topic = record.topic.clone();
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (name, value)| {
                headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                })
            });
        let (acknowledge, acknowledgement) = oneshot::channel();
        let mut base_record =
            BaseRecord::<str, [u8], _>::with_opaque_to(&record.topic, Box::new(acknowledge))
                .payload(&record.payload)
                .headers(headers);
        if let Some(key) = &record.key {
            base_record = base_record.key(key);
        }
        self.producer()
            .send(base_record)
            .map_err(|(error, _)| PublishError::delivery(error, &topic))?;
        Ok(Box::pin(async move {
            match acknowledgement.await {
                Ok(result) => result.map_err(|error| PublishError::delivery(error, &topic)),
                // The producer was dropped with the record still queued.
                Err(_) => Err(PublishError::Delivery(KafkaError::Canceled)),
            }
        }))
    }

    /// Publishes one record and resolves once the broker acknowledged it.
    pub async fn publish(&self, record: &Record) -> Result<Delivered, PublishError> {
        self.enqueue(record)?.await
    }

    /// Waits for records still queued in librdkafka, bounded by `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .expect("flush task panicked")
    }
}

/// A duration as librdkafka's `*.ms` settings take it: whole milliseconds.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Creates the topics of `spec` that do not exist yet, with an admin client
/// of `client_config`; returns those it created.
async fn create_topics(
    client_config: &ClientConfig,
    spec: &TopicSpec,
    timeout: Duration,
    brokers: &str,
) -> Result<Vec<String>, PublishError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config.create().map_err(PublishError::Client)?;
    let max_bytes = spec.max_record_bytes.to_string();
    let new_topics: Vec<NewTopic<'_>> = spec
        .names
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            )
            .set("max.message.bytes", &max_bytes)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| PublishError::Unreachable {
            brokers: brokers.to_owned(),
            source,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(PublishError::CreateTopic { topic, code }),
        }
    }
    Ok(created)
}

/// A producer with `client_config` whose delivery reports `runtime` serves.
fn create_producer(
    client_config: &ClientConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<KafkaProducer, KafkaError> {
    let producer: BaseProducer<BridgeContext> = client_config.create_with_context(BridgeContext)?;
    Ok(ServedProducer::start(producer, runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 9 of the loopback (discard): records time out.
    fn unreachable_publisher(message_timeout_ms: u64) -> Publisher {
        publisher("127.0.0.1:9", message_timeout_ms)
    }

    fn publisher(brokers: &str, message_timeout_ms: u64) -> Publisher {
        let config = KafkaConfig {
            brokers: brokers.into(),
            message_timeout_ms: Duration::from_millis(message_timeout_ms),
            ..KafkaConfig::default()
        };
        Publisher::new(&config, 1 << 20).unwrap()
    }

    fn record() -> Record {
        Record {
            topic: "reports".into(),
            key: Some("contact".into()),
            headers: vec![("superfone-group-id".into(), "g-1".into())],
            payload: b"value".to_vec(),
        }
    }

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// Durations reach librdkafka as whole milliseconds, the codec and the
    /// partitioner by their librdkafka names.
    #[tokio::test(flavor = "current_thread")]
    async fn the_producer_gets_the_config_in_librdkafkas_terms() {
        let publisher = unreachable_publisher(2_500);
        let setting = |key| publisher.client_config.get(key);
        assert_eq!(setting("message.timeout.ms"), Some("2500"));
        assert_eq!(setting("linger.ms"), Some("1"));
        assert_eq!(setting("statistics.interval.ms"), Some("5000"));
        assert_eq!(setting("compression.type"), Some("lz4"));
        assert_eq!(setting("partitioner"), Some("murmur2_random"));
    }

    /// A missing topic waits for the topic to come back; what no retry can
    /// fix (size, authorization, an invalid name) is parked.
    #[test]
    fn a_missing_topic_is_retried_and_only_incurable_errors_are_permanent() {
        let error = |code| PublishError::delivery(KafkaError::MessageProduction(code), "t");
        for code in MISSING_TOPIC_CODES {
            let missing = error(*code);
            assert!(
                matches!(&missing, PublishError::MissingTopic { topic, .. } if topic == "t"),
                "{missing:?}"
            );
            assert!(!missing.is_permanent(), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert!(error(code).is_permanent(), "{code:?}");
        }
        assert!(!error(RDKafkaErrorCode::MessageTimedOut).is_permanent());
    }

    /// With `create_topics` the bridge, not a broker's auto-creation, makes
    /// its topics; a pass-through option still has the last word.
    #[tokio::test(flavor = "current_thread")]
    async fn creating_topics_turns_off_auto_creation_unless_overridden() {
        let auto_create = |create_topics, options: &[(&str, &str)]| {
            let config = KafkaConfig {
                create_topics,
                options: options
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
                ..KafkaConfig::default()
            };
            let publisher = Publisher::new(&config, 1 << 20).unwrap();
            let setting = publisher.client_config.get("allow.auto.create.topics");
            setting.map(str::to_owned)
        };
        assert_eq!(auto_create(true, &[]).as_deref(), Some("false"));
        assert_eq!(auto_create(false, &[]), None);
        let overridden = auto_create(true, &[("allow.auto.create.topics", "true")]);
        assert_eq!(overridden.as_deref(), Some("true"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_report_completes_its_record_with_no_polling_thread() {
        let publisher = unreachable_publisher(300);
        let failed = tokio::time::timeout(Duration::from_secs(10), publisher.publish(&record()))
            .await
            .expect("the delivery report never reached the record");
        match failed {
            Err(PublishError::Delivery(error)) => assert_eq!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::MessageTimedOut),
                "{error}"
            ),
            other => panic!("expected a timed-out delivery, got {other:?}"),
        }
        assert!(
            !thread_names().iter().any(|name| name.contains("polling")),
            "{:?}",
            thread_names()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_reports_in_a_burst_each_reach_their_record() {
        let publisher = unreachable_publisher(500);
        let acknowledgements: Vec<_> = (0..2_000)
            .map(|_| publisher.enqueue(&record()).unwrap())
            .collect();
        let outcomes = tokio::time::timeout(
            Duration::from_secs(20),
            futures::future::join_all(acknowledgements),
        )
        .await
        .expect("a delivery report was lost");
        assert!(outcomes
            .iter()
            .all(|outcome| matches!(outcome, Err(PublishError::Delivery(_)))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_producer_fails_its_queued_records_and_ends_its_task() {
        // A broker that accepts the connection and never answers: librdkafka
        // queues no event, so only the drop itself can end the serving task.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Handle::current();
        let tasks_before = runtime.metrics().num_alive_tasks();
        let publisher = publisher(&silent.local_addr().unwrap().to_string(), 60_000);
        assert_eq!(runtime.metrics().num_alive_tasks(), tasks_before + 1);
        let queued = publisher.enqueue(&record()).unwrap();
        // The serving task drains the queue and waits for librdkafka.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(publisher);
        let outcome = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("a record queued in a dropped producer was never answered");
        assert!(
            matches!(outcome, Err(PublishError::Delivery(_))),
            "{outcome:?}"
        );
        for _ in 0..100 {
            if runtime.metrics().num_alive_tasks() == tasks_before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the serving task outlived its producer");
    }
}
