//! Making one record durable within the request's deadline, and replaying the
//! spool to Kafka in order.
//!
//! - Kafka first: the record is enqueued and, if the broker acknowledges it
//!   within `ack_deadline`, it is `Published`.
//! - Otherwise it is appended to the spool (fsync'd) and `Spooled`. If Kafka
//!   was merely slow, the first attempt keeps running; the replay task waits
//!   for its outcome before anything after it, and skips the entry if it landed.
//! - Per-lead order across the spool: while a key has entries waiting in the
//!   spool, newer records of that key go to the spool too, behind them. While
//!   Kafka is known to be down, every record goes straight to the spool, so
//!   requests are answered fast instead of each waiting out the deadline.
//! - One replay task sends spooled entries in spool order, in windows enqueued
//!   in order (librdkafka's idempotent producer keeps that order per
//!   partition), marks each acknowledged one delivered, and backs off while
//!   Kafka refuses. An entry whose outcome is unknown (timed out) is sent again:
//!   at-least-once, with the dedup header to recognise the repeat.
//! - A record Kafka refuses for good (`PublishError::is_permanent`: too
//!   large, forbidden or invalid topic) is never retried: it is parked in the
//!   spool (`Durable::Parked`), counted, logged at ERROR with its group id, and
//!   the replay goes on with the records behind it. Retrying it would block
//!   every later record of every lead.

use crate::kafka::{Acknowledgement, Delivered, PublishError, Publisher, Record};
use crate::spool::{Spool, SpoolEntry, SpoolError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// How often a replay that keeps failing says so in the log.
const STUCK_REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// Most entries the replay task has in flight at once.
const REPLAY_WINDOW: usize = 512;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    Published(Delivered),
    Spooled(u64),
    /// Kafka refused it for good; kept in the spool's parked records.
    Parked(u64),
}

/// Where a record is durable, as response bodies and duplicates report it:
/// a Kafka partition and offset, or a spool id.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RecordRef {
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_id: Option<u64>,
}

impl RecordRef {
    pub fn new(topic: &str, durable: Durable) -> Self {
        let (partition, offset, spool_id) = match durable {
            Durable::Published(delivered) => {
                (Some(delivered.partition), Some(delivered.offset), None)
            }
            Durable::Spooled(id) | Durable::Parked(id) => (None, None, Some(id)),
        };
        RecordRef {
            topic: topic.to_owned(),
            partition,
            offset,
            spool_id,
        }
    }
}

struct Queued {
    record: Record,
    queued_at: std::time::Instant,
    /// A first attempt still running: resolves `true` if it reached Kafka.
    first_attempt: Option<oneshot::Receiver<bool>>,
}

#[derive(Default)]
struct Backlog {
    entries: BTreeMap<u64, Queued>,
    keys: HashMap<String, usize>,
}

pub struct Delivery {
    publisher: Arc<Publisher>,
    spool: Spool,
    deadline: Duration,
    backlog: Mutex<Backlog>,
    wake: Notify,
    kafka_up: AtomicBool,
    /// When the replay last reported that it is waiting for Kafka.
    stuck_reported: Mutex<Option<std::time::Instant>>,
}

fn key_of(record: &Record) -> String {
    format!(
        "{}\u{0}{}",
        record.topic,
        record.key.as_deref().unwrap_or_default()
    )
}

impl Delivery {
    /// `recovered`: entries the spool held at start-up, replayed first.
    pub fn new(
        publisher: Arc<Publisher>,
        spool: Spool,
        recovered: Vec<SpoolEntry>,
        deadline: Duration,
    ) -> Arc<Self> {
        let delivery = Delivery {
            publisher,
            spool,
            deadline,
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
            kafka_up: AtomicBool::new(true),
            stuck_reported: Mutex::new(None),
        };
        for entry in recovered {
            delivery.queue(entry.id, entry.record, None);
        }
        Arc::new(delivery)
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    fn queue(&self, id: u64, record: Record, first_attempt: Option<oneshot::Receiver<bool>>) {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        *backlog.keys.entry(key_of(&record)).or_default() += 1;
        backlog.entries.insert(
            id,
            Queued {
                record,
                queued_at: std::time::Instant::now(),
                first_attempt,
            },
        );
        drop(backlog);
        self.wake.notify_one();
    }

    fn must_spool(&self, record: &Record) -> bool {
        !self.kafka_up.load(Ordering::Relaxed)
            || self
                .backlog
                .lock()
                .expect("backlog lock")
                .keys
                .contains_key(&key_of(record))
    }

    /// Makes the record durable: Kafka within the deadline, else the spool.
    pub async fn deliver(&self, record: Record) -> Result<Durable, SpoolError> {
        if !self.must_spool(&record) {
            let enqueued_at = std::time::Instant::now();
            match self.publisher.enqueue(&record) {
                Ok(mut acknowledgement) => {
                    match tokio::time::timeout(self.deadline, &mut acknowledgement).await {
                        Ok(Ok(delivered)) => {
                            crate::metrics::record_produce(enqueued_at.elapsed());
                            return Ok(Durable::Published(delivered));
                        }
                        Ok(Err(error)) if error.is_permanent() => {
                            return self.park(None, record, &error).await;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "Kafka refused the record; spooling it");
                            self.kafka_up.store(false, Ordering::Relaxed);
                            self.publisher.recover(&error);
                        }
                        Err(_deadline) => {
                            tracing::warn!(deadline = ?self.deadline, "Kafka did not acknowledge in time; spooling the record");
                            self.kafka_up.store(false, Ordering::Relaxed);
                            return self.spool_behind_attempt(record, acknowledgement).await;
                        }
                    }
                }
                Err(error) if error.is_permanent() => {
                    return self.park(None, record, &error).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot enqueue the record; spooling it");
                    self.kafka_up.store(false, Ordering::Relaxed);
                    self.publisher.recover(&error);
                }
            }
        }
        let id = self.append(record.clone()).await?;
        self.queue(id, record, None);
        Ok(Durable::Spooled(id))
    }

    /// Parks a record Kafka refused for good: a spool entry (`id`), or a new
    /// record. Reported at ERROR with its group id, and counted.
    async fn park(
        &self,
        id: Option<u64>,
        record: Record,
        error: &PublishError,
    ) -> Result<Durable, SpoolError> {
        let group_id = record
            .header(crate::ingest::GROUP_ID_HEADER)
            .unwrap_or_default()
            .to_owned();
        let (topic, bytes) = (record.topic.clone(), record.payload.len());
        let parked = self.spool.park(id, record, &error.to_string()).await;
        match &parked {
            Ok(parked_id) => {
                metrics::counter!(crate::metrics::PARKED).increment(1);
                tracing::error!(
                    %error, group_id, topic, bytes, spool_id = parked_id,
                    "Kafka refused the record for good; parked it in the spool \
                     (superfone-bridge spool parked list); the records behind it go on"
                );
            }
            Err(spool_error) => {
                tracing::error!(%error, %spool_error, group_id, topic, "cannot park the record Kafka refused");
            }
        }
        parked.map(Durable::Parked)
    }

    async fn append(&self, record: Record) -> Result<u64, SpoolError> {
        let result = self.spool.append(record).await;
        if result.is_err() {
            metrics::counter!(crate::metrics::SPOOL_FAILURES).increment(1);
        }
        result
    }

    /// Spools a record whose first attempt is still running; the replay task
    /// waits for that attempt instead of sending the record twice.
    async fn spool_behind_attempt(
        &self,
        record: Record,
        attempt: Acknowledgement,
    ) -> Result<Durable, SpoolError> {
        let id = self.append(record.clone()).await?;
        let (landed, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let _ = landed.send(attempt.await.is_ok());
        });
        self.queue(id, record, Some(outcome));
        Ok(Durable::Spooled(id))
    }

    /// The entry reached Kafka: it leaves the backlog and the spool.
    fn complete(&self, id: u64) {
        self.forget(id);
        self.spool.mark_delivered(id);
    }

    /// Takes an entry out of the backlog.
    fn forget(&self, id: u64) {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if let Some(queued) = backlog.entries.remove(&id) {
            let key = key_of(&queued.record);
            if let Some(count) = backlog.keys.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    backlog.keys.remove(&key);
                }
            }
        }
    }

    /// Entries waiting to reach Kafka.
    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().expect("backlog lock").entries.len()
    }

    /// Entries waiting to reach Kafka, and how long the oldest has waited.
    fn backlog_summary(&self) -> (usize, Option<Duration>) {
        let backlog = self.backlog.lock().expect("backlog lock");
        let oldest = backlog
            .entries
            .values()
            .next()
            .map(|q| q.queued_at.elapsed());
        (backlog.entries.len(), oldest)
    }

    /// Updates the spool gauges once a second until `stop`.
    pub async fn report_spool(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let (records, oldest) = self.backlog_summary();
            metrics::gauge!(crate::metrics::SPOOL_RECORDS).set(records as f64);
            metrics::gauge!(crate::metrics::SPOOL_BYTES).set(self.spool.used_bytes() as f64);
            metrics::gauge!(crate::metrics::SPOOL_PARKED).set(self.spool.parked() as f64);
            metrics::gauge!(crate::metrics::SPOOL_OLDEST_AGE)
                .set(oldest.unwrap_or_default().as_secs_f64());
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {},
                () = stop.cancelled() => return,
            }
        }
    }

    /// The replay task: runs until `stop` is cancelled.
    pub async fn replay(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let progressed = tokio::select! {
                progressed = self.replay_once() => progressed,
                () = stop.cancelled() => break,
            };
            match progressed {
                Some(true) => backoff = Duration::from_millis(100),
                Some(false) => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                None => tokio::select! {
                    () = self.wake.notified() => {},
                    () = stop.cancelled() => break,
                },
            }
        }
    }

    /// One step at the head of the backlog. `None`: nothing to do; `Some(ok)`:
    /// whether everything attempted reached Kafka.
    async fn replay_once(&self) -> Option<bool> {
        let (head, attempt) = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            let (id, queued) = backlog.entries.iter_mut().next()?;
            (*id, queued.first_attempt.take())
        };
        if let Some(attempt) = attempt {
            if attempt.await.unwrap_or(false) {
                self.complete(head);
                self.kafka_up.store(true, Ordering::Relaxed);
            }
            return Some(true);
        }
        let window: Vec<(u64, Record)> = {
            let backlog = self.backlog.lock().expect("backlog lock");
            backlog
                .entries
                .iter()
                .take_while(|(_, queued)| queued.first_attempt.is_none())
                .take(REPLAY_WINDOW)
                .map(|(id, queued)| (*id, queued.record.clone()))
                .collect()
        };
        let mut acknowledgements = Vec::with_capacity(window.len());
        let mut all_ok = true;
        for (id, record) in &window {
            match self.publisher.enqueue(record) {
                Ok(acknowledgement) => acknowledgements.push((*id, record, acknowledgement)),
                Err(error) if error.is_permanent() => self.park_spooled(*id, record, &error).await,
                Err(error) => {
                    self.publisher.recover(&error);
                    self.report_stuck(*id, &error);
                    all_ok = false;
                    break;
                }
            }
        }
        for (id, record, acknowledgement) in acknowledgements {
            match acknowledgement.await {
                Ok(_) => {
                    metrics::counter!(crate::metrics::REPLAYED).increment(1);
                    self.complete(id);
                }
                Err(error) if error.is_permanent() => self.park_spooled(id, record, &error).await,
                Err(error) => {
                    self.publisher.recover(&error);
                    self.report_stuck(id, &error);
                    all_ok = false;
                }
            }
        }
        self.kafka_up.store(all_ok, Ordering::Relaxed);
        if all_ok {
            tracing::debug!(count = window.len(), "replayed spooled records");
        }
        Some(all_ok)
    }

    /// Parks a spooled entry; on success it leaves the backlog. If even the
    /// park fails (disk), the entry stays and is tried again.
    async fn park_spooled(&self, id: u64, record: &Record, error: &PublishError) {
        if self.park(Some(id), record.clone(), error).await.is_ok() {
            self.forget(id);
        }
    }

    /// Says, at most every `STUCK_REPORT_INTERVAL`, why the replay is waiting.
    fn report_stuck(&self, id: u64, error: &PublishError) {
        let mut last = self.stuck_reported.lock().expect("stuck lock");
        if last.is_some_and(|at| at.elapsed() < STUCK_REPORT_INTERVAL) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let (waiting, oldest) = self.backlog_summary();
        tracing::warn!(
            %error, spool_id = id, waiting, oldest_secs = oldest.unwrap_or_default().as_secs(),
            "spool replay is waiting for Kafka; it retries with backoff"
        );
    }
}
