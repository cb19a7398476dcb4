//! Duplicate suppression. Superfone may deliver the same event twice, so each
//! event is identified by its entity (the lead, the task, the call) and its
//! dedup key (see `event::dedup_key`). An event is a repeat only when it is
//! identical to the **latest** event of its entity seen within the window;
//! then it is answered from that delivery instead of being published again.
//! Any different event in between makes it new: a lead moved A -> B -> A is
//! three records, since a lost transition cannot be repaired downstream and
//! a published repeat carries its dedup key for consumers. When in doubt, publish.
//!
//! An event is remembered only once its record is durable (broker ack or
//! spool). While one event of an entity is in flight, the next event of that
//! entity waits for its outcome, then compares itself with whatever is latest;
//! if the first one failed, the next is delivered as new.
//! Memory is bounded: at most `max_entries` remembered events, each for at
//! most `window`. They live in one queue of fixed-size slots, oldest first,
//! with their group ids in one byte queue beside it and a table of sequence
//! numbers to find an entity's latest slot: no allocation per event, about
//! 110 bytes an entry with a 36-byte group id. (One boxed group id per
//! entry, scattered among the requests' short-lived allocations, kept pages
//! resident that this layout does not: docs/benchmarks/README.md.)
//! Entities and keys are kept as 128-bit fingerprints (SHA-256 prefix).
//!
//! **After a restart the window starts empty: it fails open.** It is not
//! rebuilt from the entries still in the spool, because no spooled entry can
//! be proven to be its entity's latest event. Per-key order holds a newer
//! event behind a spooled one only when both share a Kafka key (topic and
//! contact), and an entity spans keys: a task reassigned to another contact,
//! a lead's CUSTOMER_CREATE and CUSTOMER_CHANGE (two topics), a call's events
//! on three topics. Such a newer event goes straight to Kafka (or is
//! replayed and leaves the spool), and the spool cannot tell. Remembering
//! the older spooled event as the latest answered a genuine change back
//! (A -> B -> A across the restart) `duplicate`, and lost it. Forgetting only
//! publishes a repeat that straddles a restart a second time, with the same
//! `superfone-dedup-key`, which consumers already handle; a false duplicate
//! loses an event Superfone will never send again.

use crate::config::DedupConfig;
use crate::durability::delivery::{Durable, RecordRef};
use crate::durability::flights::{Flight, Flights};
use crate::durability::kafka::Delivered;
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the first delivery of a key went, repeated to its duplicates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FirstDelivery {
    #[serde(flatten)]
    pub record: RecordRef,
    #[serde(rename = "first_group_id")]
    pub group_id: String,
}

/// A dedup key's SHA-256, first 128 bits (as two words, so entries need no
/// 16-byte alignment): collisions are not a concern at any realistic number
/// of keys, and it is a fraction of the key's size.
type Fingerprint = (u64, u64);

fn fingerprint(key: &str) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let word = |at: usize| u64::from_be_bytes(digest[at..at + 8].try_into().expect("8 bytes"));
    (word(0), word(8))
}

/// Group ids longer than this are cut before they are kept (a body can make
/// one megabytes long).
pub const MAX_GROUP_ID_BYTES: usize = 256;

/// Milliseconds since the dedup was created.
type Millis = u64;

/// One remembered event: which entity, which event, when, and where it went.
/// Its group id is `group_id_len` bytes at `group_id_at` in `State::group_ids`.
/// Where it went is `Durable` spread over three fields: as one field the
/// enum takes 24 bytes, as three the slot stays at 64.
struct Slot {
    entity: Fingerprint,
    event: Fingerprint,
    at: Millis,
    /// Number of the group id's first byte in `State::group_ids`.
    group_id_at: u64,
    /// The Kafka offset, or the spool id.
    durable_id: u64,
    partition: i32,
    group_id_len: u16,
    durable_kind: DurableKind,
    /// Index into `State::topics`.
    topic: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

#[derive(Clone, Copy)]
enum DurableKind {
    Published,
    Spooled,
    Parked,
}

impl Slot {
    fn durable(&self) -> Durable {
        match self.durable_kind {
            DurableKind::Published => Durable::Published(Delivered {
                partition: self.partition,
                offset: self.durable_id as i64,
            }),
            DurableKind::Spooled => Durable::Spooled(self.durable_id),
            DurableKind::Parked => Durable::Parked(self.durable_id),
        }
    }
}

/// `durable` as a slot keeps it: kind, id, partition.
fn spread(durable: Durable) -> (DurableKind, u64, i32) {
    match durable {
        Durable::Published(delivered) => (
            DurableKind::Published,
            delivered.offset as u64,
            delivered.partition,
        ),
        Durable::Spooled(id) => (DurableKind::Spooled, id, 0),
        Durable::Parked(id) => (DurableKind::Parked, id, 0),
    }
}

/// A queue whose items keep the number they were pushed with: the item
/// numbered `n` sits at `n - first`.
struct NumberedQueue<T> {
    items: VecDeque<T>,
    /// The number of the item at the front.
    first: u64,
}

impl<T> NumberedQueue<T> {
    fn with_capacity(capacity: usize) -> Self {
        NumberedQueue {
            items: VecDeque::with_capacity(capacity),
            first: 0,
        }
    }

    /// The number the next pushed item gets.
    fn next(&self) -> u64 {
        self.first + self.items.len() as u64
    }

    fn push_back(&mut self, item: T) -> u64 {
        let number = self.next();
        self.items.push_back(item);
        number
    }

    fn pop_front(&mut self) -> Option<(u64, T)> {
        let item = self.items.pop_front()?;
        let number = self.first;
        self.first += 1;
        Some((number, item))
    }

    fn front(&self) -> Option<&T> {
        self.items.front()
    }

    fn get(&self, number: u64) -> &T {
        &self.items[(number - self.first) as usize]
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

impl<T: Copy> NumberedQueue<T> {
    /// Pushes `items`; returns the number of the first.
    fn extend(&mut self, items: &[T]) -> u64 {
        let number = self.next();
        self.items.extend(items);
        number
    }

    fn range(&self, first: u64, count: usize) -> impl Iterator<Item = &T> {
        let start = (first - self.first) as usize;
        self.items.range(start..start + count)
    }

    fn drop_front(&mut self, count: usize) {
        self.items.drain(..count);
        self.first += count as u64;
    }
}

/// Remembered events in the order they were remembered, for expiry and the
/// size bound. An entity remembered again leaves its older slot behind,
/// superseded, until that slot expires.
struct State {
    /// The slots, oldest first, numbered in the order they were remembered.
    slots: NumberedQueue<Slot>,
    /// The slots' group ids, concatenated in slot order.
    group_ids: NumberedQueue<u8>,
    /// Entity -> the number of its latest slot.
    latest: HashTable<u64>,
    hasher: RandomState,
    /// The few topic names, shared by every slot.
    topics: Vec<String>,
    started: Instant,
}

impl State {
    fn new(capacity: usize) -> Self {
        State {
            // The slots and the table are allocated once for the bound:
            // growing them later would hold the old and the new at once, a
            // memory spike under load. The group ids grow with their lengths.
            slots: NumberedQueue::with_capacity(capacity),
            group_ids: NumberedQueue::with_capacity(0),
            latest: HashTable::with_capacity(capacity),
            hasher: RandomState::new(),
            topics: Vec::new(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// The latest remembered slot of `entity`.
    fn latest(&self, entity: Fingerprint) -> Option<&Slot> {
        let hash = self.hasher.hash_one(entity);
        let seq = self
            .latest
            .find(hash, |&seq| self.slots.get(seq).entity == entity)?;
        Some(self.slots.get(*seq))
    }

    fn topic_index(&mut self, topic: &str) -> u8 {
        let index = match self.topics.iter().position(|known| known == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        // One topic per event type: the schemas bound them.
        u8::try_from(index).expect("fewer than 256 topics")
    }

    /// Queues a slot for the event and makes it its entity's latest.
    fn remember(
        &mut self,
        entity: Fingerprint,
        event: Fingerprint,
        topic: &str,
        durable: Durable,
        group_id: &str,
    ) {
        let group_id = cap_group_id(group_id).as_bytes();
        let (durable_kind, durable_id, partition) = spread(durable);
        let topic = self.topic_index(topic);
        let slot = Slot {
            entity,
            event,
            at: self.now(),
            durable_id,
            partition,
            durable_kind,
            group_id_at: self.group_ids.extend(group_id),
            group_id_len: u16::try_from(group_id.len()).expect("capped group id"),
            topic,
        };
        let seq = self.slots.push_back(slot);
        let State {
            slots,
            latest,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(entity);
        match latest.find_mut(hash, |&known| slots.get(known).entity == entity) {
            Some(known) => *known = seq,
            None => {
                latest.insert_unique(hash, seq, |&known| hasher.hash_one(slots.get(known).entity));
            }
        }
    }

    /// Drops the oldest slot, and its entity's entry if it is still the latest.
    fn forget_oldest(&mut self) {
        let Some((seq, slot)) = self.slots.pop_front() else {
            return;
        };
        self.group_ids.drop_front(usize::from(slot.group_id_len));
        let hash = self.hasher.hash_one(slot.entity);
        if let Ok(entry) = self.latest.find_entry(hash, |&known| known == seq) {
            entry.remove();
        }
    }

    fn first_delivery(&self, slot: &Slot) -> FirstDelivery {
        let bytes: Vec<u8> = self
            .group_ids
            .range(slot.group_id_at, usize::from(slot.group_id_len))
            .copied()
            .collect();
        FirstDelivery {
            record: RecordRef::new(&self.topics[usize::from(slot.topic)], slot.durable()),
            group_id: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

/// The longest prefix of `group_id` within `MAX_GROUP_ID_BYTES`, on a
/// character boundary.
pub fn cap_group_id(group_id: &str) -> &str {
    let mut end = group_id.len().min(MAX_GROUP_ID_BYTES);
    while !group_id.is_char_boundary(end) {
        end -= 1;
    }
    &group_id[..end]
}

/// Beyond this many entries the map grows on demand instead.
const PREALLOCATED_ENTRIES_MAX: usize = 1 << 20;

#[derive(Clone)]
pub struct Dedup {
    window: Duration,
    max_entries: usize,
    state: Arc<Mutex<State>>,
    /// Entities with a delivery under way, their events in line: each
    /// waits for the one before it only, so they go in arrival order (all
    /// waiting on one would race when it ends).
    line: Flights<Fingerprint>,
}

/// The outcome of claiming an event.
pub enum Claim {
    /// Not a copy of its entity's latest event: deliver it, then `remember`
    /// (or drop on failure).
    New(Pending),
    /// A copy of the latest event of its entity, which went here.
    Duplicate(FirstDelivery),
}

/// A claimed event whose delivery is under way. Dropping it without
/// `remember` leaves the entity's latest event as it was, so a retry is delivered.
pub struct Pending {
    entity: Fingerprint,
    event: Fingerprint,
    /// Its place in the entity's line: dropped (remembered, or the
    /// request gone), it lets the next event of the entity go.
    turn: Flight<Fingerprint>,
    dedup: Dedup,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        let capacity = max_entries.saturating_add(1).min(PREALLOCATED_ENTRIES_MAX);
        Dedup {
            window,
            max_entries,
            state: Arc::new(Mutex::new(State::new(capacity))),
            line: Flights::default(),
        }
    }

    /// The dedup `config` sets up; `None` when `dedup.enabled` is false.
    pub fn of(config: &DedupConfig) -> Option<Self> {
        config
            .enabled
            .then(|| Dedup::new(config.window_secs, config.max_entries))
    }

    /// Claims the event `key` of `entity`: a duplicate if it equals the
    /// entity's latest event, else new. Waits, in arrival order, while
    /// events of the same entity before it are being delivered.
    pub async fn claim(&self, entity: &str, key: &str) -> Claim {
        let (entity, event) = (fingerprint(entity), fingerprint(key));
        self.expire(&mut self.state.lock().expect("dedup lock"));
        // The one before it ends once delivered or failed: no bound here.
        let turn = self.line.enter(entity, Duration::MAX).await;
        let pending = Pending {
            entity,
            event,
            turn,
            dedup: self.clone(),
        };
        let state = self.state.lock().expect("dedup lock");
        if let Some(latest) = state.latest(entity) {
            if latest.event == event {
                let first = state.first_delivery(latest);
                drop(state);
                drop(pending);
                return Claim::Duplicate(first);
            }
        }
        Claim::New(pending)
    }

    /// Remembers an event whose record is durable, outside a claim.
    #[cfg(test)]
    fn remember(&self, entity: &str, key: &str, topic: &str, durable: Durable, group_id: &str) {
        let mut state = self.state.lock().expect("dedup lock");
        let (entity, event) = (fingerprint(entity), fingerprint(key));
        state.remember(entity, event, topic, durable, group_id);
        self.expire(&mut state);
    }

    fn remember_fingerprints(
        &self,
        entity: Fingerprint,
        event: Fingerprint,
        topic: &str,
        durable: Durable,
        group_id: &str,
    ) {
        let mut state = self.state.lock().expect("dedup lock");
        state.remember(entity, event, topic, durable, group_id);
        self.expire(&mut state);
    }

    /// Entities remembered or in flight.
    pub fn len(&self) -> usize {
        let state = self.state.lock().expect("dedup lock");
        state.latest.len() + self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, state: &mut State) {
        let now = state.now();
        let window = self.window.as_millis() as Millis;
        while let Some(oldest) = state.slots.front() {
            let expired = now.saturating_sub(oldest.at) >= window;
            if !expired && state.slots.len() <= self.max_entries {
                break;
            }
            state.forget_oldest();
        }
    }
}

impl Pending {
    /// The record is durable: it is now its entity's latest event; release
    /// the events of the entity waiting on it.
    pub fn remember(self, topic: &str, durable: Durable, group_id: &str) {
        self.dedup
            .remember_fingerprints(self.entity, self.event, topic, durable, group_id);
        // Remembered first, so the next event of the entity compares with it.
        drop(self.turn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(offset: i64) -> Durable {
        Durable::Published(crate::durability::kafka::Delivered {
            partition: 0,
            offset,
        })
    }

    async fn claim_new(dedup: &Dedup, entity: &str, key: &str) -> Pending {
        match dedup.claim(entity, key).await {
            Claim::New(pending) => pending,
            Claim::Duplicate(first) => panic!("{key} taken for a duplicate of {first:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn events_of_one_entity_get_their_turn_in_arrival_order() {
        let dedup = Dedup::new(Duration::from_secs(60), 100);
        let first = claim_new(&dedup, "task 7", "e0").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 1..=8 {
            let (dedup, order) = (dedup.clone(), Arc::clone(&order));
            waiting.push(tokio::spawn(async move {
                let pending = claim_new(&dedup, "task 7", &format!("e{n}")).await;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
                pending.remember("t", kafka(n), "g");
            }));
            // Each has taken its place in line before the next one comes.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.remember("t", kafka(0), "g");
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (1..=8).collect::<Vec<_>>());
        assert!(dedup.line.is_empty());
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_delivery() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        claim_new(&dedup, "lead", "A")
            .await
            .remember("t", kafka(5), "g");
        assert!(
            matches!(dedup.claim("lead", "A").await, Claim::Duplicate(f) if f.record.offset == Some(5))
        );
    }

    /// lead_stage Interested -> Not interested -> Interested must not be
    /// answered `duplicate` the third time: the change back is news.
    #[tokio::test]
    async fn a_change_back_is_new_not_a_duplicate() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        claim_new(&dedup, "lead", "A")
            .await
            .remember("t", kafka(1), "g1");
        claim_new(&dedup, "lead", "B")
            .await
            .remember("t", kafka(2), "g2");
        claim_new(&dedup, "lead", "A")
            .await
            .remember("t", kafka(3), "g3");
        assert!(
            matches!(dedup.claim("lead", "A").await, Claim::Duplicate(f) if f.record.offset == Some(3)),
            "a copy of the latest event is still a duplicate"
        );
        claim_new(&dedup, "other lead", "A").await;
    }

    #[tokio::test]
    async fn a_concurrent_repeat_waits_for_the_first_outcome() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let pending = claim_new(&dedup, "lead", "A").await;
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move {
                matches!(dedup.claim("lead", "A").await, Claim::Duplicate(f) if f.record.offset == Some(9))
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        pending.remember("t", kafka(9), "g");
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn the_next_event_of_an_entity_waits_then_compares_with_the_latest() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        claim_new(&dedup, "lead", "A")
            .await
            .remember("t", kafka(1), "g");
        let b = claim_new(&dedup, "lead", "B").await;
        let a_again = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim("lead", "A").await, Claim::New(_)) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a_again.is_finished(), "waits while B is in flight");
        b.remember("t", kafka(2), "g");
        assert!(a_again.await.unwrap(), "A after B is new");
    }

    #[tokio::test]
    async fn a_failed_first_delivery_does_not_hide_the_retry() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let pending = claim_new(&dedup, "lead", "A").await;
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim("lead", "A").await, Claim::New(_)) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(pending);
        assert!(
            waiter.await.unwrap(),
            "the waiter becomes the first delivery"
        );
    }

    #[tokio::test]
    async fn memory_is_bounded_by_count_and_window() {
        let dedup = Dedup::new(Duration::from_millis(50), 3);
        for n in 0..5 {
            dedup.remember(&format!("e{n}"), "A", "t", kafka(n), "g");
        }
        assert_eq!(dedup.len(), 3);
        assert!(
            matches!(dedup.claim("e0", "A").await, Claim::New(_)),
            "oldest evicted"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            matches!(dedup.claim("e4", "A").await, Claim::New(_)),
            "expired after the window"
        );
    }

    #[tokio::test]
    async fn a_megabyte_group_id_is_kept_capped() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let huge = "é".repeat(1 << 19);
        dedup.remember("lead", "A", "t", kafka(1), &huge);
        let Claim::Duplicate(first) = dedup.claim("lead", "A").await else {
            panic!()
        };
        assert!(first.group_id.len() <= MAX_GROUP_ID_BYTES);
        assert!(huge.starts_with(&first.group_id));
    }

    /// The slot queue, the group-id byte queue and the table against a plain
    /// list of what was remembered: after any sequence of remembers and
    /// evictions, each entity's latest event (and only it) is a duplicate,
    /// answered with that event's own group id.
    #[test]
    fn the_compact_layout_agrees_with_a_plain_list() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        const MAX_ENTRIES: usize = 6;
        let remember = (0..8u8, 0..3u8, "[a-zé]{0,300}");
        let mut runner = TestRunner::new(Config::with_cases(200));
        let result = runner.run(&proptest::collection::vec(remember, 1..60), |ops| {
            let dedup = Dedup::new(Duration::from_secs(600), MAX_ENTRIES);
            let mut model: VecDeque<(u8, u8, String, Durable)> = VecDeque::new();
            for (offset, (entity, event, group_id)) in ops.into_iter().enumerate() {
                let durable = match offset % 3 {
                    0 => Durable::Published(Delivered {
                        partition: (offset % 7) as i32,
                        offset: offset as i64,
                    }),
                    1 => Durable::Spooled(offset as u64),
                    _ => Durable::Parked(offset as u64),
                };
                let (entity_name, key) = (format!("e{entity}"), format!("k{event}"));
                dedup.remember(&entity_name, &key, "t", durable, &group_id);
                model.push_back((entity, event, cap_group_id(&group_id).to_owned(), durable));
                if model.len() > MAX_ENTRIES {
                    model.pop_front();
                }
                for entity in 0..8u8 {
                    let latest = model.iter().rev().find(|(e, ..)| *e == entity);
                    for event in 0..3u8 {
                        let claim = futures::executor::block_on(
                            dedup.claim(&format!("e{entity}"), &format!("k{event}")),
                        );
                        match (claim, latest) {
                            (
                                Claim::Duplicate(first),
                                Some((_, latest_event, group_id, durable)),
                            ) => {
                                prop_assert_eq!(event, *latest_event);
                                prop_assert_eq!(&first.group_id, group_id);
                                prop_assert_eq!(first.record, RecordRef::new("t", *durable));
                            }
                            (Claim::Duplicate(first), None) => {
                                prop_assert!(false, "e{entity} k{event} evicted, yet {first:?}")
                            }
                            (Claim::New(_), Some((_, latest_event, ..))) => {
                                prop_assert_ne!(event, *latest_event)
                            }
                            (Claim::New(_), None) => {}
                        }
                    }
                }
                let entities = model
                    .iter()
                    .map(|(e, ..)| *e)
                    .collect::<std::collections::HashSet<_>>();
                prop_assert_eq!(dedup.len(), entities.len());
            }
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}
