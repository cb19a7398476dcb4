//! Making one record durable within the request's deadline, and replaying the
//! spool to Kafka in order.
//!
//! - Kafka first: the record is enqueued and, if the broker acknowledges it
//!   within `ack_deadline`, it is `Published`.
//! - Otherwise it is appended to the spool (fsync'd) and `Spooled`. If Kafka
//!   was merely slow, the first attempt keeps running; the replay task waits
//!   for its outcome before anything after it, and skips the entry if it landed.
//! - Per-lead order in flight: a record waits until the one before it of
//!   the same key is settled (`flights`), so librdkafka never holds two of
//!   a lead at once and cannot time the first out and deliver the second.
//! - Per-lead order across the spool: while a key has entries waiting in the
//!   spool, newer records of that key go to the spool too, behind them. While
//!   Kafka is known to be down, every record goes straight to the spool, so
//!   requests are answered fast instead of each waiting out the deadline.
//! - One replay task sends spooled entries in spool order, in windows enqueued
//!   in order (librdkafka's idempotent producer keeps that order per
//!   partition), marks each acknowledged one delivered, and backs off while
//!   Kafka refuses. A window carries one entry per key (`one_per_key`): the
//!   next of a lead waits for the next window, after its predecessor is
//!   settled, since librdkafka times queued messages out one by one and
//!   could land the second after timing out the first. An entry whose outcome is unknown (timed out) is sent again:
//!   at-least-once, with the dedup header to recognise the repeat.
//! - Nothing is kept per spooled entry: the spool's own index says what is
//!   pending, the replay reads it back from the segments in order from
//!   where it stands (a cursor), a window at a time (`REPLAY_WINDOW`
//!   entries, `REPLAY_WINDOW_BYTES`), and per-key order needs only a count
//!   per key that has entries waiting. A long outage costs disk, not memory.
//! - An entry that cannot be read back (an I/O error) is read again, in
//!   place: nothing behind it is sent, and its key stays held.
//! - Nothing is sent before the topics exist (a bridge started while Kafka
//!   was unreachable creates them once it is back), and a record spooled
//!   before its schema had a registry id is stamped with it just before it
//!   is sent (`SchemaIds::stamp`); until then the replay waits.
//! - A record Kafka refuses for good (`PublishError::is_permanent`: too
//!   large, forbidden or invalid topic) is never retried: it is parked in the
//!   spool (`Durable::Parked`), counted, logged at ERROR with its group id, and
//!   the replay goes on with the records behind it. Retrying it would block
//!   every later record of every lead.

use crate::durability::flights::{Flight, Flights, SETTLE_GRACE};
use crate::durability::kafka::{Acknowledgement, Delivered, PublishError, Publisher, Topics};
use crate::durability::spool::{Cursor, PendingEntry, ReadLimits, Spool, SpoolError};
use crate::durability::startup::StartupGate;
use crate::pipeline::registry::{SchemaIds, Unstamped};
use crate::vocabulary::headers::{GROUP_ID_HEADER, RECEIVED_AT_HEADER};
use crate::vocabulary::Record;
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// How often a replay that keeps failing says so in the log.
const STUCK_REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// Most entries the replay task has in flight at once...
const REPLAY_WINDOW: usize = 512;
/// ...and most bytes (a window has at least one entry, whatever its size).
const REPLAY_WINDOW_BYTES: u64 = 8 * 1024 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A shutdown drain stops after this many refused windows in a row: Kafka
/// is down, and waiting out the grace period would only delay the exit.
const DRAIN_ATTEMPTS: u32 = 3;
const DRAIN_RETRY: Duration = Duration::from_millis(500);

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

#[derive(Default)]
struct Backlog {
    /// Entries per record key (hashed): while a key has entries in the
    /// spool, its new records are spooled behind them. One count per key
    /// waiting, not an entry each.
    keys: HashMap<u64, u32>,
    /// First attempts still running for spooled entries: each resolves
    /// `true` if it reached Kafka.
    first_attempts: HashMap<u64, oneshot::Receiver<bool>>,
    /// Where the replay reads on: every entry before it is done, or in `carry`.
    cursor: Cursor,
    /// Entries read and still pending, left for the next window by
    /// `one_per_key` (at most a window's): not read again from disk.
    carry: Vec<PendingEntry>,
    /// When the oldest entry waiting was received, as far as known.
    oldest: Option<OffsetDateTime>,
    /// Records whose key is held and whose spool append has not ended.
    appending: usize,
}

impl Backlog {
    fn hold_key(&mut self, key: Option<u64>) {
        if let Some(key) = key {
            *self.keys.entry(key).or_default() += 1;
        }
    }

    /// With nothing pending and nothing being appended, no key can have
    /// anything waiting: counts left over belong to entries lost to damage
    /// found at run time (unreadable, so their keys are unknown), and
    /// would spool those leads' records for good. They are let go.
    fn forget_keys_if_idle(&mut self, pending: u64) {
        if pending == 0 && self.appending == 0 && !self.keys.is_empty() {
            tracing::warn!(
                keys = self.keys.len(),
                "the spool is empty but keys were still held (entries lost to damage); letting them go"
            );
            self.keys.clear();
            self.oldest = None;
        }
    }

    fn release_key(&mut self, key: Option<u64>) {
        let Some(key) = key else { return };
        if let Some(count) = self.keys.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(&key);
            }
        }
    }
}

/// How one replay window went.
#[derive(Default)]
struct Window {
    /// What the replay waits for, when it could not send everything.
    waiting_for: Option<String>,
    kafka_failed: bool,
}

impl Window {
    /// Kafka refused a record for now: the producer is replaced if it must
    /// be, and the rest waits.
    fn kafka_refused(&mut self, publisher: &Publisher, error: &PublishError) {
        publisher.recover(error);
        self.kafka_failed = true;
        self.waiting_for = Some(format!("Kafka: {error}"));
    }
}

/// What the spool held at start-up, as the replay needs it: how many
/// entries each key has waiting, and when the oldest was received.
#[derive(Default)]
pub struct Recovered {
    keys: HashMap<u64, u32>,
    entries: usize,
    oldest: Option<OffsetDateTime>,
}

impl Recovered {
    /// Counts one pending entry (call in spool order).
    pub fn add(&mut self, record: &Record) {
        if let Some(key) = key_of(record) {
            *self.keys.entry(key).or_default() += 1;
        }
        if self.entries == 0 {
            self.oldest = received_at(record);
        }
        self.entries += 1;
    }

    /// Entries found.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// When a record was received, from its header.
fn received_at(record: &Record) -> Option<OffsetDateTime> {
    let header = record.header(RECEIVED_AT_HEADER)?;
    OffsetDateTime::parse(header, &time::format_description::well_known::Rfc3339).ok()
}

pub struct Delivery {
    publisher: Arc<Publisher>,
    spool: Spool,
    schemas: Arc<SchemaIds>,
    deadline: Duration,
    backlog: Mutex<Backlog>,
    wake: Notify,
    kafka_up: AtomicBool,
    /// The topics exist: created at start-up, or once Kafka was reachable.
    topics_ready: AtomicBool,
    /// What the replay is waiting for, while it waits.
    waiting_for: Mutex<Option<String>>,
    /// When the replay last reported that it is waiting.
    stuck_reported: Mutex<Option<Instant>>,
    /// The record of each key being made durable: the next one waits.
    flights: Flights,
    /// What a delivery waits for while the bridge starts.
    startup: Arc<StartupGate>,
    /// Held by whoever sends from the spool (the replay task, a shutdown
    /// drain): a drain after a replay that did not stop in time waits for
    /// its window instead of sending it a second time beside it.
    replay_turn: tokio::sync::Mutex<()>,
}

/// The per-key ordering key: topic and record key, hashed (a collision
/// only makes a record wait behind another lead's).
/// The window's entries whose key has no earlier entry in it. The others
/// stay pending, and the cursor stops at the first of them, so they go in
/// a later window once the entry before them is settled.
fn one_per_key(entries: &[PendingEntry]) -> impl Iterator<Item = &PendingEntry> {
    let mut keys = HashSet::with_capacity(entries.len());
    entries
        .iter()
        .filter(move |entry| key_of(&entry.record).is_none_or(|key| keys.insert(key)))
}

/// The record's lead (its topic and Kafka key, hashed). A record without a
/// key (a dead letter of an unparsable body) has no order to keep: it
/// never waits for another, nor holds one back.
fn key_of(record: &Record) -> Option<u64> {
    let key = record.key.as_ref()?;
    let mut hasher = std::hash::DefaultHasher::new();
    record.topic.hash(&mut hasher);
    key.hash(&mut hasher);
    Some(hasher.finish())
}

impl Delivery {
    /// `recovered`: entries the spool held at start-up, replayed first.
    /// `topics`: whether the topics are known to exist.
    pub fn new(
        publisher: Arc<Publisher>,
        spool: Spool,
        schemas: Arc<SchemaIds>,
        recovered: Recovered,
        deadline: Duration,
        topics: Topics,
        startup: Arc<StartupGate>,
    ) -> Arc<Self> {
        let delivery = Delivery {
            publisher,
            spool,
            schemas,
            deadline,
            backlog: Mutex::new(Backlog {
                keys: recovered.keys,
                oldest: recovered.oldest,
                ..Backlog::default()
            }),
            wake: Notify::new(),
            kafka_up: AtomicBool::new(true),
            topics_ready: AtomicBool::new(topics == Topics::Ready),
            waiting_for: Mutex::new(None),
            stuck_reported: Mutex::new(None),
            flights: Flights::default(),
            startup,
            replay_turn: tokio::sync::Mutex::new(()),
        };
        Arc::new(delivery)
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    pub fn schemas(&self) -> &Arc<SchemaIds> {
        &self.schemas
    }

    /// The topics exist now: records may be sent.
    pub fn set_topics_ready(&self) {
        self.topics_ready.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn topics_ready(&self) -> bool {
        self.topics_ready.load(Ordering::Relaxed)
    }

    /// What the replay is waiting for, if it is waiting.
    pub fn waiting_for(&self) -> Option<String> {
        self.waiting_for.lock().expect("waiting lock").clone()
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().expect("backlog lock")
    }

    /// Whether the record must go to the spool rather than to Kafka: the
    /// topics do not exist yet, Kafka is down and records are already
    /// waiting, or this record's key has records waiting.
    fn must_spool(&self, record: &Record) -> bool {
        if !self.topics_ready() {
            return true;
        }
        let waiting = self.spool.pending() > 0;
        (!self.kafka_up.load(Ordering::Relaxed) && waiting)
            || key_of(record).is_some_and(|key| self.backlog().keys.contains_key(&key))
    }

    /// Makes the record durable: Kafka by `arrived` plus the ack deadline,
    /// else the spool. The deadline counts from the request's arrival, so
    /// the wait for the record of the same lead ahead of it comes out of
    /// it rather than adding to it: an answer takes the deadline plus a
    /// spool write at most (twice the deadline while the bridge starts).
    pub async fn deliver(
        self: &Arc<Self>,
        mut record: Record,
        arrived: Instant,
    ) -> Result<Durable, SpoolError> {
        let answer_by = tokio::time::Instant::from_std(arrived + self.deadline);
        let key = key_of(&record);
        // Settled (acknowledged, or spooled with its key held) when dropped.
        // Taken in arrival order, before the start-up gate, so the records
        // it releases together keep their lead's order.
        let flight = match key {
            Some(key) => {
                let max_wait = (answer_by + SETTLE_GRACE)
                    .saturating_duration_since(tokio::time::Instant::now());
                Some(self.flights.enter(key, max_wait).await)
            }
            None => None,
        };
        // A start-up wait (at most a deadline, once per start) is not
        // counted: a healthy start publishes its first events.
        let at_gate = tokio::time::Instant::now();
        self.startup.pass().await;
        let answer_by = answer_by + at_gate.elapsed();
        match self.schemas.stamp(&mut record) {
            Ok(()) => {}
            Err(Unstamped::Waiting { .. }) => return self.spool_record(record, None, flight).await,
            Err(Unstamped::Refused { reason }) => return self.park(None, record, &reason).await,
        }
        if self.must_spool(&record) || tokio::time::Instant::now() >= answer_by {
            return self.spool_record(record, None, flight).await;
        }
        let enqueued_at = Instant::now();
        let error = match self.publisher.enqueue(&record) {
            Ok(mut acknowledgement) => {
                match tokio::time::timeout_at(answer_by, &mut acknowledgement).await {
                    Ok(Ok(delivered)) => {
                        crate::observe::metrics::record_produce(enqueued_at.elapsed());
                        self.kafka_up.store(true, Ordering::Relaxed);
                        return Ok(Durable::Published(delivered));
                    }
                    Ok(Err(error)) => error,
                    Err(_deadline) => {
                        // Only a wait of half the deadline or more says
                        // Kafka is slow: a record left little time by the
                        // lead's records before it says nothing of Kafka.
                        if enqueued_at.elapsed() >= self.deadline / 2 {
                            tracing::warn!(deadline = ?self.deadline, "Kafka did not acknowledge in time; spooling the record");
                            self.kafka_up.store(false, Ordering::Relaxed);
                        }
                        return self
                            .spool_record(record, Some(acknowledgement), flight)
                            .await;
                    }
                }
            }
            Err(error) => error,
        };
        if error.is_permanent() {
            return self.park(None, record, &error).await;
        }
        tracing::warn!(%error, "Kafka refused the record; spooling it");
        self.kafka_up.store(false, Ordering::Relaxed);
        self.publisher.recover(&error);
        self.spool_record(record, None, flight).await
    }

    /// Appends the record to the spool for the replay, in a task of its
    /// own: a request dropped half-way (client gone) cannot leave its key
    /// counted without an entry. The key is held from before the append,
    /// so a record of that key arriving meanwhile is spooled behind this
    /// one. `attempt`: a first attempt still running, which the replay
    /// waits for instead of sending the record twice; the entry is held
    /// from the replay until that is known. The key's `flight` moves into
    /// the task and ends after the append: were the request dropped
    /// before, the next record of the key could otherwise be appended
    /// first.
    async fn spool_record(
        self: &Arc<Self>,
        record: Record,
        attempt: Option<Acknowledgement>,
        flight: Option<Flight>,
    ) -> Result<Durable, SpoolError> {
        let key = key_of(&record);
        {
            let mut backlog = self.backlog();
            backlog.hold_key(key);
            backlog.appending += 1;
        }
        let delivery = Arc::clone(self);
        let spooled = tokio::spawn(async move {
            let received = received_at(&record);
            let appended = match attempt {
                Some(_) => delivery.spool.append_held(record).await,
                None => delivery.spool.append(record).await,
            };
            let mut backlog = delivery.backlog();
            backlog.appending -= 1;
            let appended = match appended {
                Ok(appended) => appended,
                Err(error) => {
                    backlog.release_key(key);
                    metrics::counter!(crate::observe::metrics::SPOOL_FAILURES).increment(1);
                    return Err(error);
                }
            };
            backlog.oldest = backlog.oldest.or(received);
            if let Some(attempt) = attempt {
                let (landed, outcome) = oneshot::channel();
                tokio::spawn(async move {
                    let _ = landed.send(attempt.await.is_ok());
                });
                backlog.first_attempts.insert(appended.id, outcome);
                delivery.spool.release(appended.id);
            }
            drop(backlog);
            delivery.wake.notify_one();
            drop(flight);
            Ok(Durable::Spooled(appended.id))
        });
        spooled.await.expect("spool task panicked")
    }

    /// Parks a record Kafka (or the registry) refused for good: a spool
    /// entry (`id`), or a new record. Reported at ERROR with its group id,
    /// and counted.
    async fn park(
        &self,
        id: Option<u64>,
        record: Record,
        reason: &(dyn Display + Sync),
    ) -> Result<Durable, SpoolError> {
        let group_id = record
            .header(GROUP_ID_HEADER)
            .unwrap_or_default()
            .to_owned();
        let (topic, bytes) = (record.topic.clone(), record.payload.len());
        let parked = self.spool.park(id, record, &reason.to_string()).await;
        match &parked {
            Ok(parked_id) => {
                metrics::counter!(crate::observe::metrics::PARKED).increment(1);
                tracing::error!(
                    error = %reason, group_id, topic, bytes, spool_id = parked_id,
                    "the record can never be stored as it is; parked it in the spool \
                     (superfone-bridge spool parked list); the records behind it go on"
                );
            }
            Err(spool_error) => {
                tracing::error!(error = %reason, %spool_error, group_id, topic, "cannot park the refused record");
            }
        }
        parked.map(Durable::Parked)
    }

    /// The entry reached Kafka (or was parked): it leaves the spool, and
    /// its key one count.
    fn complete(&self, id: u64, key: Option<u64>) {
        self.spool.mark_delivered(id);
        self.settled(id, key);
    }

    /// An entry left the spool (delivered or parked): its key lets go of it.
    fn settled(&self, id: u64, key: Option<u64>) {
        let mut backlog = self.backlog();
        backlog.release_key(key);
        backlog.first_attempts.remove(&id);
    }

    /// Entries waiting to reach Kafka.
    pub fn backlog_len(&self) -> usize {
        self.spool.pending() as usize
    }

    /// Entries waiting to reach Kafka, and how long the oldest has waited.
    pub fn backlog_summary(&self) -> (usize, Option<Duration>) {
        let waiting = self.backlog_len();
        let mut backlog = self.backlog();
        if waiting == 0 {
            backlog.oldest = None;
        }
        let oldest = backlog.oldest.map(|at| {
            (OffsetDateTime::now_utc() - at)
                .try_into()
                .unwrap_or_default()
        });
        (waiting, oldest)
    }

    /// Updates the spool gauges once a second until `stop`.
    pub async fn report_spool(self: Arc<Self>, stop: CancellationToken) {
        metrics::gauge!(crate::observe::metrics::SPOOL_MAX_BYTES)
            .set(self.spool.cap_bytes() as f64);
        loop {
            let (records, oldest) = self.backlog_summary();
            metrics::gauge!(crate::observe::metrics::SPOOL_RECORDS).set(records as f64);
            metrics::gauge!(crate::observe::metrics::SPOOL_BYTES)
                .set(self.spool.used_bytes() as f64);
            metrics::gauge!(crate::observe::metrics::SPOOL_PARKED).set(self.spool.parked() as f64);
            metrics::gauge!(crate::observe::metrics::SPOOL_OLDEST_AGE)
                .set(oldest.unwrap_or_default().as_secs_f64());
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {},
                () = stop.cancelled() => return,
            }
        }
    }

    /// The replay task: runs until `stop` is cancelled. A window already
    /// sent is waited for, so acknowledgements that arrive while the bridge
    /// stops are still recorded.
    pub async fn replay(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.replay_once().await {
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

    /// Sends the backlog to Kafka until it is empty or `timeout` passes (a
    /// clean shutdown, `spool drain`); call it once the replay task has
    /// stopped. Gives up early when nothing can be sent: the topics do not
    /// exist, or Kafka refused `DRAIN_ATTEMPTS` windows in a row. Returns the
    /// entries left; a window cut off by the timeout stays in the spool and
    /// is sent again (at-least-once).
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut refused = 0;
        while self.backlog_len() > 0 && refused < DRAIN_ATTEMPTS {
            match tokio::time::timeout_at(deadline, self.replay_once()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(true)) => refused = 0,
                Ok(Some(false)) => {
                    refused += 1;
                    tokio::time::sleep_until(
                        (tokio::time::Instant::now() + DRAIN_RETRY).min(deadline),
                    )
                    .await;
                }
            }
        }
        self.backlog_len()
    }

    /// One step at the head of the spool. `None`: nothing to do; `Some(ok)`:
    /// whether everything attempted reached Kafka.
    async fn replay_once(&self) -> Option<bool> {
        let _turn = self.replay_turn.lock().await;
        if !self.topics_ready() {
            self.report_waiting(Some(
                "Kafka, to create the topics (unreachable since start-up)".into(),
            ));
            return None;
        }
        let (from, carried) = self.take_carry();
        let (entries, end) = match self.read_window(from, carried).await {
            Ok(read) => read,
            Err((error, carried)) => {
                // Read again from the same place: nothing behind it overtakes.
                self.backlog().carry = carried;
                self.report_waiting(Some(format!("the spool, to read entries back: {error}")));
                return Some(false);
            }
        };
        let Some(head) = entries.first() else {
            let mut backlog = self.backlog();
            backlog.cursor = end;
            backlog.forget_keys_if_idle(self.spool.pending());
            return None;
        };
        let head_attempt = {
            let mut backlog = self.backlog();
            backlog.oldest = received_at(&head.record).or(backlog.oldest);
            backlog.first_attempts.remove(&head.id)
        };
        if let Some(attempt) = head_attempt {
            // Read again from the head (it may have come from the carry).
            self.backlog().cursor = head.at.min(from);
            self.settle_first_attempt(head, attempt).await;
            return Some(true);
        }
        let (entries, end) = self.up_to_first_attempt(entries, end);
        let mut window = Window::default();
        let sent = self.send_window(&entries, &mut window).await;
        self.await_window(sent, &mut window).await;
        let clean = window.waiting_for.is_none() && !window.kafka_failed;
        self.advance_cursor(entries, end, clean);
        self.kafka_up.store(!window.kafka_failed, Ordering::Relaxed);
        let progressed = window.waiting_for.is_none();
        self.report_waiting(window.waiting_for);
        Some(progressed)
    }

    /// The window's entries before the first whose first attempt is still
    /// running (the replay waits for it at the head), and where the window ends.
    fn up_to_first_attempt(
        &self,
        mut entries: Vec<PendingEntry>,
        end: Cursor,
    ) -> (Vec<PendingEntry>, Cursor) {
        let backlog = self.backlog();
        match entries
            .iter()
            .position(|entry| backlog.first_attempts.contains_key(&entry.id))
        {
            Some(at) => {
                let end = entries[at].at;
                entries.truncate(at);
                (entries, end)
            }
            None => (entries, end),
        }
    }

    /// Moves the cursor past the window when everything sent went well,
    /// carrying the entries `one_per_key` left; after a failure, back to
    /// the window's first entry still pending, to read it all again.
    fn advance_cursor(&self, entries: Vec<PendingEntry>, end: Cursor, clean: bool) {
        let still: Vec<PendingEntry> = entries
            .into_iter()
            .filter(|entry| self.spool.is_pending(entry.id))
            .collect();
        let mut backlog = self.backlog();
        if clean {
            backlog.cursor = end;
            backlog.carry = still;
        } else {
            backlog.cursor = still.first().map_or(end, |entry| entry.at);
        }
    }

    /// The cursor, and the carried entries still pending.
    fn take_carry(&self) -> (Cursor, Vec<PendingEntry>) {
        let mut backlog = self.backlog();
        let mut carried = std::mem::take(&mut backlog.carry);
        carried.retain(|entry| self.spool.is_pending(entry.id));
        (backlog.cursor, carried)
    }

    /// The head's first attempt (from the request that spooled it) is still
    /// running: nothing behind it is sent until it ends, and if it reached
    /// Kafka the entry is done.
    async fn settle_first_attempt(&self, head: &PendingEntry, attempt: oneshot::Receiver<bool>) {
        if attempt.await.unwrap_or(false) {
            self.complete(head.id, key_of(&head.record));
            self.kafka_up.store(true, Ordering::Relaxed);
        }
    }

    /// The next window's records, read back from the spool off the runtime.
    /// The window: the `carried` entries, then as many read from `from` on
    /// as the window has room for; and where the read ended. On a read
    /// error, the carried entries come back with it.
    async fn read_window(
        &self,
        from: Cursor,
        mut carried: Vec<PendingEntry>,
    ) -> Result<(Vec<PendingEntry>, Cursor), (SpoolError, Vec<PendingEntry>)> {
        let carried_bytes: u64 = carried
            .iter()
            .map(|entry| entry.record.payload.len() as u64)
            .sum();
        if carried.len() >= REPLAY_WINDOW || carried_bytes >= REPLAY_WINDOW_BYTES {
            return Ok((carried, from));
        }
        let spool = self.spool.clone();
        let limits = ReadLimits {
            entries: REPLAY_WINDOW - carried.len(),
            bytes: REPLAY_WINDOW_BYTES - carried_bytes,
        };
        let read = tokio::task::spawn_blocking(move || spool.read_pending(from, limits))
            .await
            .expect("spool read task panicked");
        match read {
            Ok(read) => {
                carried.extend(read.entries);
                Ok((carried, read.end))
            }
            Err(error) => Err((error, carried)),
        }
    }

    /// Enqueues the window's records in spool order, each stamped with its
    /// schema id; stops at the first that must wait (registry, Kafka).
    /// Records Kafka can never take are parked on the way.
    async fn send_window(
        &self,
        entries: &[PendingEntry],
        window: &mut Window,
    ) -> Vec<(u64, Record, Acknowledgement)> {
        let mut sent = Vec::with_capacity(entries.len());
        for entry in one_per_key(entries) {
            let (id, mut record) = (entry.id, entry.record.clone());
            match self.schemas.stamp(&mut record) {
                Ok(()) => {}
                Err(Unstamped::Refused { reason }) => {
                    self.park_spooled(id, record, &reason).await;
                    continue;
                }
                Err(Unstamped::Waiting { subject }) => {
                    window.waiting_for =
                        Some(format!("the schema registry, for the id of {subject}"));
                    break;
                }
            }
            match self.publisher.enqueue(&record) {
                Ok(acknowledgement) => sent.push((id, record, acknowledgement)),
                Err(error) if error.is_permanent() => self.park_spooled(id, record, &error).await,
                Err(error) => {
                    window.kafka_refused(&self.publisher, &error);
                    break;
                }
            }
        }
        sent
    }

    /// Waits for the window's acknowledgements: each acknowledged entry is
    /// done, each refused for good parked, the rest sent again next time.
    async fn await_window(&self, sent: Vec<(u64, Record, Acknowledgement)>, window: &mut Window) {
        for (id, record, acknowledgement) in sent {
            match acknowledgement.await {
                Ok(_) => {
                    metrics::counter!(crate::observe::metrics::REPLAYED).increment(1);
                    self.complete(id, key_of(&record));
                }
                Err(error) if error.is_permanent() => self.park_spooled(id, record, &error).await,
                Err(error) => window.kafka_refused(&self.publisher, &error),
            }
        }
    }

    /// Parks a spooled entry (which takes it out of the spool's pending
    /// entries); on success its key lets go of it. If even the park fails
    /// (disk), the entry stays and is tried again.
    async fn park_spooled(&self, id: u64, record: Record, reason: &(dyn Display + Sync)) {
        let key = key_of(&record);
        if self.park(Some(id), record, reason).await.is_ok() {
            self.settled(id, key);
        }
    }

    /// Records what the replay waits for; says so at WARN at most every
    /// `STUCK_REPORT_INTERVAL`.
    fn report_waiting(&self, waiting: Option<String>) {
        let Some(reason) = waiting else {
            *self.waiting_for.lock().expect("waiting lock") = None;
            return;
        };
        *self.waiting_for.lock().expect("waiting lock") = Some(reason.clone());
        let mut last = self.stuck_reported.lock().expect("stuck lock");
        if last.is_some_and(|at| at.elapsed() < STUCK_REPORT_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let (waiting, oldest) = self.backlog_summary();
        tracing::warn!(
            waiting_for = %reason, waiting, oldest_secs = oldest.unwrap_or_default().as_secs(),
            "spool replay is waiting; it retries with backoff"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, key: &str) -> PendingEntry {
        PendingEntry {
            id,
            record: Record {
                topic: "t".into(),
                key: Some(key.into()),
                headers: Vec::new(),
                payload: Vec::new(),
            },
            at: Cursor::default(),
        }
    }

    #[test]
    fn a_window_sends_one_entry_of_each_key_in_spool_order() {
        let window = [
            entry(1, "a"),
            entry(2, "b"),
            entry(3, "a"),
            entry(4, "c"),
            entry(5, "b"),
        ];
        let sent: Vec<u64> = one_per_key(&window).map(|entry| entry.id).collect();
        assert_eq!(sent, [1, 2, 4]);
    }
}
