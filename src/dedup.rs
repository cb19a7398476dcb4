//! Duplicate suppression. Superfone may deliver the same event twice, so each
//! event gets a dedup key from its identifying fields (see `event::dedup_key`),
//! and a repeat seen within the window is answered from the first delivery
//! instead of being published again.
//!
//! A key is remembered only once its record is durable (broker ack or spool):
//! a repeat that arrives while the first delivery is still in flight waits for
//! its outcome; if the first one failed, the repeat is delivered as new.
//! Memory is bounded: at most `max_entries` keys, each for at most `window`.
//! A key is kept as a 128-bit fingerprint (SHA-256 prefix) and its first
//! delivery compactly, about 170 bytes an entry with the group id and the
//! table's spare room (scripts/bench: the map was the largest part of the
//! bridge's memory).

use crate::delivery::{Durable, RecordRef};
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

/// Where a first delivery went, as the map keeps it (48 bytes and the group id).
struct Remembered {
    group_id: Box<str>,
    durable: Durable,
    /// Index into `State::topics`.
    topic: u16,
}

/// `Done` entries: the key, when it was remembered, and where it went.
struct State {
    done: HashMap<Fingerprint, (Millis, Remembered)>,
    /// First deliveries still under way; repeats wait on them (few at a time).
    in_flight: HashMap<Fingerprint, watch::Receiver<Option<FirstDelivery>>>,
    /// Keys in the order they were remembered, for expiry and the size bound.
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

    fn remembered(&mut self, topic: &str, durable: Durable, group_id: &str) -> Remembered {
        let index = match self.topics.iter().position(|known| known == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        Remembered {
            group_id: group_id.into(),
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

/// Beyond this many entries the map grows on demand instead.
const PREALLOCATED_ENTRIES_MAX: usize = 1 << 20;

#[derive(Clone)]
pub struct Dedup {
    window: Duration,
    max_entries: usize,
    state: Arc<Mutex<State>>,
}

/// The outcome of claiming a key.
pub enum Claim {
    /// First delivery of this key: deliver it, then `remember` (or drop on failure).
    New(Pending),
    Duplicate(FirstDelivery),
}

/// A claimed key whose delivery is under way. Dropping it without
/// `remember` forgets the key, so a retry is delivered.
pub struct Pending {
    fingerprint: Fingerprint,
    sender: Option<watch::Sender<Option<FirstDelivery>>>,
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

    pub async fn claim(&self, key: &str) -> Claim {
        let fingerprint = fingerprint(key);
        loop {
            let mut waiting = {
                let mut state = self.state.lock().expect("dedup lock");
                self.expire(&mut state);
                if let Some((_, first)) = state.done.get(&fingerprint) {
                    return Claim::Duplicate(state.first_delivery(first));
                }
                match state.in_flight.get(&fingerprint) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        state.in_flight.insert(fingerprint, receiver);
                        return Claim::New(Pending {
                            fingerprint,
                            sender: Some(sender),
                            dedup: self.clone(),
                        });
                    }
                }
            };
            // Wait for the first delivery's outcome; if it failed, claim again.
            let outcome = waiting
                .wait_for(Option::is_some)
                .await
                .map(|first| first.clone());
            if let Ok(Some(first)) = outcome {
                return Claim::Duplicate(first);
            }
        }
    }

    /// Remembers a key whose record is durable, e.g. rebuilt from the spool at start-up.
    pub fn remember(&self, key: &str, topic: &str, durable: Durable, group_id: &str) {
        self.remember_fingerprint(fingerprint(key), topic, durable, group_id);
    }

    /// Returns the first delivery as duplicates will be told it.
    fn remember_fingerprint(
        &self,
        fingerprint: Fingerprint,
        topic: &str,
        durable: Durable,
        group_id: &str,
    ) -> FirstDelivery {
        let mut state = self.state.lock().expect("dedup lock");
        let now = state.now();
        let remembered = state.remembered(topic, durable, group_id);
        let first = state.first_delivery(&remembered);
        state.in_flight.remove(&fingerprint);
        state.done.insert(fingerprint, (now, remembered));
        state.order.push_back((now, fingerprint));
        self.expire(&mut state);
        first
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
    /// The record is durable: remember the key and release waiting repeats.
    pub fn remember(mut self, topic: &str, durable: Durable, group_id: &str) {
        let first = self
            .dedup
            .remember_fingerprint(self.fingerprint, topic, durable, group_id);
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Some(first));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut state = self.dedup.state.lock().expect("dedup lock");
            state.in_flight.remove(&self.fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(offset: i64) -> Durable {
        Durable::Published(crate::kafka::Delivered {
            partition: 0,
            offset,
        })
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_delivery() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::New(pending) = dedup.claim("k").await else {
            panic!()
        };
        pending.remember("t", kafka(5), "g");
        assert!(
            matches!(dedup.claim("k").await, Claim::Duplicate(f) if f.record.offset == Some(5))
        );
    }

    #[tokio::test]
    async fn a_concurrent_repeat_waits_for_the_first_outcome() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::New(pending) = dedup.claim("k").await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move {
                matches!(dedup.claim("k").await, Claim::Duplicate(f) if f.record.offset == Some(9))
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        pending.remember("t", kafka(9), "g");
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_failed_first_delivery_does_not_hide_the_retry() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::New(pending) = dedup.claim("k").await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim("k").await, Claim::New(_)) }
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
            dedup.remember(&format!("k{n}"), "t", kafka(n), "g");
        }
        assert_eq!(dedup.len(), 3);
        assert!(
            matches!(dedup.claim("k0").await, Claim::New(_)),
            "oldest evicted"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            matches!(dedup.claim("k4").await, Claim::New(_)),
            "expired after the window"
        );
    }
}
