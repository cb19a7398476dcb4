//! The copier's loop: a member of the consumer group `recordings.group_id`
//! (`superfone-bridge-recordings`) on the recording-event topic (Kafka spreads
//! the partitions over replicas; nothing else coordinates them). Each
//! recording event (the others, on the one topic of `topics.single`, are
//! passed over by their `superfone-event` header) becomes a job that runs on its own task, so a slow or retrying
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
use crate::recordings::pointer::CopyStatus;
use crate::recordings::tracker::OffsetTracker;
use crate::vocabulary::headers::GROUP_ID_HEADER;
use crate::vocabulary::EventKind;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::error::SRCError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a copier that could not start waits before trying again.
const START_RETRY: Duration = Duration::from_secs(5);
/// How often the time left on the most urgent link is exported.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// What the copier's process reports about it (`/readyz`, `/status` of
/// `recordings run`): started or not, why not, and how many copies wait.
#[derive(Debug, Default)]
pub struct CopierState {
    running: AtomicBool,
    start_error: Mutex<Option<String>>,
    pending: AtomicUsize,
}

impl CopierState {
    /// The copier has its store, its schema and its consumer.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Why the last try to start failed, while it has not started.
    pub fn start_error(&self) -> Option<String> {
        self.start_error.lock().expect("copier state lock").clone()
    }

    /// Recordings read whose copy has not ended.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn set_start(&self, result: Result<(), String>) {
        self.running.store(result.is_ok(), Ordering::Relaxed);
        *self.start_error.lock().expect("copier state lock") = result.err();
    }
}

/// Runs a copier until `stop`, starting it again until it starts: the
/// registry or the brokers may be down when the bridge starts, and the
/// webhooks must not wait for them.
pub async fn copy_recordings(
    config: Arc<Config>,
    publisher: Arc<Publisher>,
    state: Arc<CopierState>,
    stop: CancellationToken,
) {
    loop {
        match Copier::start(&config, Arc::clone(&publisher), Arc::clone(&state)).await {
            Ok(copier) => {
                tracing::info!(group = %config.recordings.group_id, "recording copier started");
                state.set_start(Ok(()));
                // On its own task, so a panic (a bug) is seen and the
                // copier started again instead of silently gone.
                match tokio::spawn(copier.run(stop.clone())).await {
                    Ok(()) => return state.set_start(Err("stopped".into())),
                    Err(panic) => {
                        tracing::error!(error = %panic, "recording copier failed; starting it again");
                        state.set_start(Err(format!("failed: {panic}")));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "recording copier cannot start yet; trying again");
                state.set_start(Err(error.to_string()));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(START_RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

pub struct Copier {
    consumer: StreamConsumer<CopierContext>,
    /// Partitions taken from this copier by a rebalance.
    revocations: mpsc::UnboundedReceiver<Vec<i32>>,
    topic: String,
    decoder: Arc<AvroDecoder>,
    finisher: Arc<Finisher>,
    /// Recordings read and not finished, at most (`recordings.max_pending`).
    max_pending: usize,
    state: Arc<CopierState>,
}

/// Whether the copier's partitions are paused for `max_pending`: it keeps
/// polling while paused (a consumer that stops polling for
/// `max.poll.interval.ms` is thrown out of its group, and its partitions
/// read again elsewhere), it just receives nothing.
#[derive(Debug, Default, PartialEq, Eq)]
enum Reading {
    #[default]
    On,
    Paused,
}

impl Copier {
    /// Opens the store, registers the pointer schema and joins the group.
    pub async fn start(
        config: &Config,
        publisher: Arc<Publisher>,
        state: Arc<CopierState>,
    ) -> Result<Copier, CopierError> {
        let finisher = Finisher::open(config, publisher).await?;
        let topic = config.topics.topic_for(EventKind::CdrRecordingAvailable);
        let (revoked, revocations) = mpsc::unbounded_channel();
        let consumer = group_consumer(config, CopierContext { revoked })?;
        consumer.subscribe(&[&topic])?;
        Ok(Copier {
            consumer,
            revocations,
            topic,
            decoder: Arc::new(AvroDecoder::new(registry::settings(&config.registry)?)),
            finisher: Arc::new(finisher),
            max_pending: config.recordings.max_pending,
            state,
        })
    }

    /// Copies recordings until `stop`. Copies still running then are
    /// dropped unfinished: their offsets were not committed, so the group
    /// copies them again (into the same objects) after the restart.
    pub async fn run(mut self, stop: CancellationToken) {
        preset_metrics();
        let mut revocations = std::mem::replace(&mut self.revocations, mpsc::unbounded_channel().1);
        let (finished, mut finishing) = mpsc::unbounded_channel::<Position>();
        let mut copies = RunningCopies::new(&stop, finished);
        let mut tracker = OffsetTracker::default();
        let mut reading = Reading::On;
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = gauges.tick() => {
                    metrics::gauge!(crate::observe::metrics::RECORDINGS_NEXT_EXPIRY)
                        .set(self.finisher.copies().next_expiry_seconds());
                }
                Some(partitions) = revocations.recv() => {
                    // Their new owner copies them from the committed offset,
                    // which never passed an unfinished one: stop ours.
                    for partition in partitions {
                        copies.stop_partition(partition);
                        tracker.revoked(partition);
                    }
                    self.report_pending(&tracker);
                    self.resume_if_room(&tracker, &mut reading);
                }
                Some(position) = finishing.recv() => {
                    self.commit_past(&mut tracker, position);
                    self.resume_if_room(&tracker, &mut reading);
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let record = TakenRecord::of(&message);
                        let position = record.position;
                        tracker.started(position.partition, position.offset);
                        if !RecordingJob::is_recording_event(&record.headers) {
                            // Another event of the one topic (`topics.single`):
                            // nothing to copy, its offset may be passed.
                            self.commit_past(&mut tracker, position);
                            continue;
                        }
                        self.report_pending(&tracker);
                        self.pause_if_full(&tracker, &mut reading);
                        copies.start(record, &self.finisher, &self.decoder);
                    }
                    Err(error) => tracing::warn!(%error, "recordings: consumer error"),
                },
            }
        }
        copies.stop().await;
        while let Ok(position) = finishing.try_recv() {
            self.commit_past(&mut tracker, position);
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "recordings: final commit");
        }
    }

    /// Pauses every assigned partition once `max_pending` recordings are
    /// unfinished. Called after each read, so a partition assigned while
    /// paused is paused by its first record.
    fn pause_if_full(&self, tracker: &OffsetTracker, reading: &mut Reading) {
        if tracker.unfinished() < self.max_pending {
            return;
        }
        let paused = self
            .consumer
            .assignment()
            .and_then(|partitions| self.consumer.pause(&partitions));
        match paused {
            Ok(()) if *reading == Reading::On => {
                tracing::info!(
                    unfinished = tracker.unfinished(),
                    "recordings: max_pending reached; reading paused"
                );
                *reading = Reading::Paused;
            }
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "recordings: pausing the partitions failed"),
        }
    }

    /// Resumes reading once a quarter of `max_pending` has ended.
    fn resume_if_room(&self, tracker: &OffsetTracker, reading: &mut Reading) {
        let room = self.max_pending - self.max_pending.div_ceil(4);
        if *reading == Reading::On || tracker.unfinished() > room {
            return;
        }
        let resumed = self
            .consumer
            .assignment()
            .and_then(|partitions| self.consumer.resume(&partitions));
        match resumed {
            Ok(()) => {
                tracing::info!(
                    unfinished = tracker.unfinished(),
                    "recordings: reading resumed"
                );
                *reading = Reading::On;
            }
            Err(error) => tracing::warn!(%error, "recordings: resuming the partitions failed"),
        }
    }

    fn report_pending(&self, tracker: &OffsetTracker) {
        let pending = tracker.unfinished();
        self.state.pending.store(pending, Ordering::Relaxed);
        metrics::gauge!(crate::observe::metrics::RECORDINGS_PENDING).set(pending as f64);
    }

    /// Stores the offset a partition may commit after `position` finished.
    fn commit_past(&self, tracker: &mut OffsetTracker, position: Position) {
        let next = tracker.finished(position.partition, position.offset);
        self.report_pending(tracker);
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

/// Every status and the gauges shown from the start, so an alert on the
/// first `failed` sees an increase from 0 (a series born at 1 has none).
fn preset_metrics() {
    for status in CopyStatus::ALL {
        metrics::counter!(crate::observe::metrics::RECORDINGS, "status" => status.as_str())
            .increment(0);
    }
    metrics::counter!(crate::observe::metrics::RECORDING_BYTES).increment(0);
    metrics::gauge!(crate::observe::metrics::RECORDINGS_PENDING).set(0.0);
    metrics::gauge!(crate::observe::metrics::RECORDINGS_NEXT_EXPIRY).set(0.0);
}

/// The consumer of the group: offsets committed only as `store_offsets`
/// allows (never past an unfinished copy), the bridge's Kafka options.
fn group_consumer(
    config: &Config,
    context: CopierContext,
) -> Result<StreamConsumer<CopierContext>, rdkafka::error::KafkaError> {
    let mut client_config = ClientConfig::new();
    // A copier killed without leaving its group holds its partitions until
    // its session times out (librdkafka's default is 45 s); a restarted pod
    // waits that long for them. Overridable through kafka.options.
    client_config
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000");
    for (key, value) in &config.kafka.options {
        client_config.set(key, value);
    }
    client_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.recordings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(context)
}

/// Tells the copier's loop which partitions a rebalance takes away, so it
/// stops their copies (their new owner starts them again) rather than
/// copying them twice for days.
struct CopierContext {
    revoked: mpsc::UnboundedSender<Vec<i32>>,
}

impl ClientContext for CopierContext {}

impl ConsumerContext for CopierContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let numbers = partitions
                .elements()
                .iter()
                .map(|p| p.partition())
                .collect();
            let _ = self.revoked.send(numbers);
        }
    }
}

/// The copies running, each on its own task (a slow one holds back no
/// other), stopped all at once or by partition (a rebalance took it).
struct RunningCopies {
    tasks: TaskTracker,
    stop_all: CancellationToken,
    by_partition: HashMap<i32, CancellationToken>,
    /// Where a copy says its recording has its terminal record.
    finished: mpsc::UnboundedSender<Position>,
}

impl RunningCopies {
    fn new(stop: &CancellationToken, finished: mpsc::UnboundedSender<Position>) -> Self {
        RunningCopies {
            tasks: TaskTracker::new(),
            stop_all: stop.child_token(),
            by_partition: HashMap::new(),
            finished,
        }
    }

    fn start(&mut self, record: TakenRecord, finisher: &Arc<Finisher>, decoder: &Arc<AvroDecoder>) {
        let position = record.position;
        let stop = self
            .by_partition
            .entry(position.partition)
            .or_insert_with(|| self.stop_all.child_token())
            .clone();
        let (finisher, decoder) = (Arc::clone(finisher), Arc::clone(decoder));
        let finished = self.finished.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                ended = settle(&finisher, &decoder, record) => {
                    if ended {
                        let _ = finished.send(position);
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }

    fn stop_partition(&mut self, partition: i32) {
        if let Some(stop) = self.by_partition.remove(&partition) {
            stop.cancel();
        }
    }

    /// Stops every copy and waits for their tasks to end.
    async fn stop(self) {
        self.stop_all.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A record read from the recording topic, owned, for its job's task.
struct TakenRecord {
    position: Position,
    key: Option<String>,
    headers: Vec<(String, String)>,
    payload: Option<Vec<u8>>,
}

impl TakenRecord {
    fn of(message: &BorrowedMessage<'_>) -> TakenRecord {
        TakenRecord {
            position: Position {
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            headers: record_headers(message),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Brings one record to its end: decoded (waiting out the registry),
/// copied, and its pointer record acknowledged. `false` when no pointer
/// record could be made: the offset must then stay uncommitted.
async fn settle(finisher: &Finisher, decoder: &AvroDecoder, record: TakenRecord) -> bool {
    let job = match decode_patiently(decoder, record.payload.as_deref()).await {
        Ok(value) => {
            RecordingJob::from_event(record.position, record.key.clone(), &value, &record.headers)
                .map_err(|error| error.to_string())
        }
        Err(error) => Err(format!("the record does not decode: {error}")),
    };
    let delivered = match job {
        Ok(job) => finisher.finish(&job, None).await.1,
        Err(error) => {
            let group_id = header(&record.headers, GROUP_ID_HEADER);
            finisher
                .publish(&Finished::failed(record.key, group_id, error))
                .await
        }
    };
    delivered.is_some()
}

/// How often a record whose schema the registry did not give is decoded
/// again before it ends `failed`; between tries the wait doubles from
/// `DECODE_RETRY` to `DECODE_RETRY_MAX`.
const DECODE_ATTEMPTS: u32 = 6;
const DECODE_RETRY: Duration = Duration::from_secs(1);
const DECODE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Decodes a record, waiting out the registry: a transient failure (the
/// registry unreachable, a 5xx) is tried again for as long as it lasts; any
/// other (a schema id it does not know, as during a failover, or bytes that
/// are no Avro) `DECODE_ATTEMPTS` times, the decoder's cached error cleared
/// before each, and then it is the record's `failed`.
async fn decode_patiently(
    decoder: &AvroDecoder,
    payload: Option<&[u8]>,
) -> Result<serde_json::Value, SRCError> {
    let mut wait = DECODE_RETRY;
    let mut final_failures = 0;
    loop {
        let error = match decoder.decode(payload).await {
            Ok(decoded) => return Ok(avro_json::to_json(&decoded.value)),
            Err(error) => error,
        };
        if !error.retriable {
            final_failures += 1;
            if final_failures >= DECODE_ATTEMPTS {
                return Err(error);
            }
            decoder.remove_errors_from_cache();
        }
        tracing::warn!(%error, wait_secs = wait.as_secs(), "recordings: a record does not decode yet; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(DECODE_RETRY_MAX);
    }
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
