//! The copier's loop: a member of the consumer group `recordings.group_id`
//! (`superfone-bridge-recordings`) on the recording-event topic (Kafka spreads
//! the partitions over replicas; nothing else coordinates them). Each
//! record becomes a job that runs on its own task, so a slow or retrying
//! copy never holds back the ones behind it; each job ends in a pointer
//! record acknowledged by Kafka (`Finisher`), and only then may the
//! partition's committed offset pass it (`OffsetTracker`).

use crate::config::Config;
use crate::durability::kafka::Publisher;
use crate::pipeline::avro_json;
use crate::pipeline::registry;
pub use crate::recordings::finish::CopierError;
use crate::recordings::finish::{Finished, Finisher};
use crate::recordings::job::{Position, RecordingJob};
use crate::recordings::tracker::OffsetTracker;
use crate::vocabulary::headers::GROUP_ID_HEADER;
use crate::vocabulary::EventKind;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Recordings read but not finished, at most: past it the copier stops
/// reading until one finishes (a long outage of the store must not fill
/// memory with jobs).
const MAX_UNFINISHED: usize = 1024;
/// How long a copier that could not start waits before trying again.
const START_RETRY: Duration = Duration::from_secs(5);
/// How often the time left on the most urgent link is exported.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs a copier until `stop`, starting it again until it starts: the
/// registry or the brokers may be down when the bridge starts, and the
/// webhooks must not wait for them.
pub async fn copy_recordings(
    config: Arc<Config>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    loop {
        match Copier::start(&config, Arc::clone(&publisher)).await {
            Ok(copier) => {
                tracing::info!(group = %config.recordings.group_id, "recording copier started");
                return copier.run(stop).await;
            }
            Err(error) => tracing::warn!(%error, "recording copier cannot start yet; trying again"),
        }
        tokio::select! {
            () = tokio::time::sleep(START_RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

pub struct Copier {
    consumer: StreamConsumer,
    topic: String,
    decoder: AvroDecoder,
    finisher: Arc<Finisher>,
}

impl Copier {
    /// Opens the store, registers the pointer schema and joins the group.
    pub async fn start(config: &Config, publisher: Arc<Publisher>) -> Result<Copier, CopierError> {
        let finisher = Finisher::open(config, publisher).await?;
        let topic = config.topics.topic_for(EventKind::CdrRecordingAvailable);
        let consumer = group_consumer(config)?;
        consumer.subscribe(&[&topic])?;
        Ok(Copier {
            consumer,
            topic,
            decoder: AvroDecoder::new(registry::settings(&config.registry)?),
            finisher: Arc::new(finisher),
        })
    }

    /// Copies recordings until `stop`. Copies still running then are
    /// dropped unfinished: their offsets were not committed, so the group
    /// copies them again (into the same objects) after the restart.
    pub async fn run(self, stop: CancellationToken) {
        let (finished, mut finishing) = mpsc::unbounded_channel::<Position>();
        let mut tracker = OffsetTracker::default();
        let jobs = TaskTracker::new();
        let stop_jobs = stop.child_token();
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = gauges.tick() => {
                    metrics::gauge!(crate::observe::metrics::RECORDINGS_NEXT_EXPIRY)
                        .set(self.finisher.copies().next_expiry_seconds());
                }
                Some(position) = finishing.recv() => self.commit_past(&mut tracker, position),
                message = self.consumer.recv(), if tracker.unfinished() < MAX_UNFINISHED => {
                    let message = match message {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "recordings: consumer error");
                            continue;
                        }
                    };
                    let (position, job) = self.read(&message).await;
                    tracker.started(position.partition, position.offset);
                    metrics::gauge!(crate::observe::metrics::RECORDINGS_PENDING)
                        .set(tracker.unfinished() as f64);
                    let finisher = Arc::clone(&self.finisher);
                    let (finished, stop_job) = (finished.clone(), stop_jobs.clone());
                    jobs.spawn(async move {
                        let end = async {
                            match job {
                                Ok(job) => { finisher.finish(&job, None).await; }
                                Err(unreadable) => { finisher.publish(&unreadable).await; }
                            }
                        };
                        tokio::select! {
                            () = end => { let _ = finished.send(position); }
                            () = stop_job.cancelled() => {}
                        }
                    });
                }
            }
        }
        stop_jobs.cancel();
        jobs.close();
        jobs.wait().await;
        while let Ok(position) = finishing.try_recv() {
            self.commit_past(&mut tracker, position);
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "recordings: final commit");
        }
    }

    /// Reads a record into a job, or into the pointer report that says why
    /// it cannot be one (undecodable, no link, no id: `failed`).
    async fn read(
        &self,
        message: &BorrowedMessage<'_>,
    ) -> (Position, Result<RecordingJob, Finished>) {
        let position = Position {
            partition: message.partition(),
            offset: message.offset(),
        };
        let headers = record_headers(message);
        let key = message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned());
        let job = match self.decoder.decode(message.payload()).await {
            Ok(decoded) => {
                let value = avro_json::to_json(&decoded.value);
                RecordingJob::from_event(position, key.clone(), &value, &headers)
                    .map_err(|error| error.to_string())
            }
            Err(error) => Err(format!("the record does not decode: {error}")),
        };
        let job =
            job.map_err(|error| Finished::failed(key, header(&headers, GROUP_ID_HEADER), error));
        (position, job)
    }

    /// Stores the offset a partition may commit after `position` finished.
    fn commit_past(&self, tracker: &mut OffsetTracker, position: Position) {
        let next = tracker.finished(position.partition, position.offset);
        metrics::gauge!(crate::observe::metrics::RECORDINGS_PENDING)
            .set(tracker.unfinished() as f64);
        let Some(next) = next else {
            return;
        };
        let mut offsets = TopicPartitionList::new();
        let stored = offsets
            .add_partition_offset(&self.topic, position.partition, Offset::Offset(next))
            .and_then(|()| self.consumer.store_offsets(&offsets));
        if let Err(error) = stored {
            // A partition lost in a rebalance: its new owner copies again.
            tracing::debug!(%error, partition = position.partition, "recordings: offset not stored");
        }
    }
}

/// The consumer of the group: offsets committed only as `store_offsets`
/// allows (never past an unfinished copy), the bridge's Kafka options.
fn group_consumer(config: &Config) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut client_config = ClientConfig::new();
    for (key, value) in &config.kafka.options {
        client_config.set(key, value);
    }
    client_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.recordings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
}

fn record_headers(message: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    let value = header.value.unwrap_or_default();
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}
