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
//! Memory is bounded: at most `max_entries` entities, each for at most
//! `window`. Entities and keys are kept as 128-bit fingerprints (SHA-256
//! prefix) and the delivery compactly, about 190 bytes an entry with the
//! group id and the table's spare room (scripts/bench: the map was the
//! largest part of the bridge's memory).

use crate::durability::delivery::{Durable, RecordRef};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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

/// Where the latest event of an entity went, as the map keeps it (64 bytes
/// and the group id).
struct Remembered {
    /// Fingerprint of the event's dedup key.
    event: Fingerprint,
    group_id: Box<str>,
    durable: Durable,
    /// Index into `State::topics`.
    topic: u16,
}

/// Keyed by entity fingerprint: when its latest event was remembered, and
/// which event it was and where it went.
struct State {
    done: HashMap<Fingerprint, (Millis, Remembered)>,
    /// Entities with a delivery under way; their next events wait on it.
    in_flight: HashMap<Fingerprint, watch::Receiver<bool>>,
    /// Entities in the order they were remembered, for expiry and the size bound.
    order: VecDeque<(Millis, Fingerprint)>,
    /// The few topic names, shared by every entry.
    topics: Vec<String>,
    started: Instant,
}

/// Milliseconds since the dedup was created.
type Millis = u64;

impl State {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn remembered(
        &mut self,
        event: Fingerprint,
        topic: &str,
        durable: Durable,
        group_id: &str,
    ) -> Remembered {
        let index = match self.topics.iter().position(|known| known == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        Remembered {
            event,
            group_id: cap_group_id(group_id).into(),
            durable,
            topic: u16::try_from(index).expect("fewer than 65536 topics"),
        }
    }

    fn first_delivery(&self, remembered: &Remembered) -> FirstDelivery {
        FirstDelivery {
            record: RecordRef::new(
                &self.topics[usize::from(remembered.topic)],
                remembered.durable,
            ),
            group_id: remembered.group_id.to_string(),
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
    done: Option<watch::Sender<bool>>,
    dedup: Dedup,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        let capacity = max_entries.saturating_add(1).min(PREALLOCATED_ENTRIES_MAX);
        Dedup {
            window,
            max_entries,
            state: Arc::new(Mutex::new(State {
                // Allocated once for the bound: growing it later would hold
                // the old and the new table at once, a memory spike under load.
                done: HashMap::with_capacity(capacity),
                in_flight: HashMap::new(),
                order: VecDeque::with_capacity(capacity),
                topics: Vec::new(),
                started: Instant::now(),
            })),
        }
    }

    /// Claims the event `key` of `entity`: a duplicate if it equals the
    /// entity's latest event, else new. Waits while another event of the
    /// same entity is being delivered.
    pub async fn claim(&self, entity: &str, key: &str) -> Claim {
        let (entity, event) = (fingerprint(entity), fingerprint(key));
        loop {
            let mut delivering = {
                let mut state = self.state.lock().expect("dedup lock");
                self.expire(&mut state);
                match state.in_flight.get(&entity) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        if let Some((_, latest)) = state.done.get(&entity) {
                            if latest.event == event {
                                return Claim::Duplicate(state.first_delivery(latest));
                            }
                        }
                        let (sender, receiver) = watch::channel(false);
                        state.in_flight.insert(entity, receiver);
                        return Claim::New(Pending {
                            entity,
                            event,
                            done: Some(sender),
                            dedup: self.clone(),
                        });
                    }
                }
            };
            // Delivered or failed (sender dropped): compare again with the latest.
            let _ = delivering.wait_for(|done| *done).await;
        }
    }

    /// Remembers an event whose record is durable, e.g. rebuilt from the
    /// spool at start-up (in spool order, so the latest wins).
    pub fn remember(&self, entity: &str, key: &str, topic: &str, durable: Durable, group_id: &str) {
        self.remember_fingerprints(
            fingerprint(entity),
            fingerprint(key),
            topic,
            durable,
            group_id,
        );
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
        let now = state.now();
        let remembered = state.remembered(event, topic, durable, group_id);
        state.in_flight.remove(&entity);
        state.done.insert(entity, (now, remembered));
        state.order.push_back((now, entity));
        self.expire(&mut state);
    }

    pub fn len(&self) -> usize {
        let state = self.state.lock().expect("dedup lock");
        state.done.len() + state.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, state: &mut State) {
        let now = state.now();
        let window = self.window.as_millis() as Millis;
        while let Some(&(remembered_at, key)) = state.order.front() {
            let expired = now.saturating_sub(remembered_at) >= window;
            if !expired && state.order.len() <= self.max_entries {
                break;
            }
            state.order.pop_front();
            // Only drop the entry this order entry stands for (not a newer one).
            if matches!(state.done.get(&key), Some((at, _)) if *at == remembered_at) {
                state.done.remove(&key);
            }
        }
    }
}

impl Pending {
    /// The record is durable: it is now its entity's latest event; release
    /// the events of the entity waiting on it.
    pub fn remember(mut self, topic: &str, durable: Durable, group_id: &str) {
        self.dedup
            .remember_fingerprints(self.entity, self.event, topic, durable, group_id);
        if let Some(done) = self.done.take() {
            let _ = done.send(true);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done.is_some() {
            let mut state = self.dedup.state.lock().expect("dedup lock");
            state.in_flight.remove(&self.entity);
        }
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

    /// Issue 10, break 3: lead_stage Interested -> Not interested ->
    /// Interested was answered `duplicate` the third time.
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
}
