//! The record of each key that is being made durable, so that the next
//! record of that key waits until it is settled: acknowledged by Kafka, or
//! spooled (its key then held, so the next one follows it into the spool).
//!
//! Why: librdkafka times queued messages out one by one. If record A of a
//! lead missed the request's deadline (spooled, its first attempt still in
//! librdkafka) while record B of the same lead sat behind it in
//! librdkafka, and Kafka came back between A's timeout and B's, B would
//! land and A be replayed after it. Waiting for the predecessor keeps one
//! record per key in librdkafka's hands. Records of different keys never
//! wait for each other. The wait is bounded: a predecessor settles within
//! its ack deadline plus one spool write; past `deadline + SETTLE_GRACE` the
//! next record goes on anyway (logged), rather than hold a request forever.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long past the ack deadline a record waits for its predecessor's
/// spool write (a disk that slow has bigger problems).
pub const SETTLE_GRACE: Duration = Duration::from_secs(10);

/// The latest record of a key in flight.
struct Latest {
    number: u64,
    settled: watch::Receiver<bool>,
}

struct State<K> {
    latest: HashMap<K, Latest>,
    next_number: u64,
}

/// One entry per key with a record in flight; none per record settled.
/// The keys are records' leads here, and dedup entities in `dedup`, whose
/// events take their turn the same way.
pub struct Flights<K = u64>(Arc<Mutex<State<K>>>);

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Flights(Arc::new(Mutex::new(State {
            latest: HashMap::new(),
            next_number: 0,
        })))
    }
}

impl<K> Clone for Flights<K> {
    fn clone(&self) -> Self {
        Flights(Arc::clone(&self.0))
    }
}

/// A record's place in its key's line: dropping it (settled, or the
/// request gone) lets the next one go.
pub struct Flight<K: Hash + Eq + Copy = u64> {
    flights: Flights<K>,
    key: K,
    number: u64,
    settled: watch::Sender<bool>,
}

impl<K: Hash + Eq + Copy> Flights<K> {
    /// Takes the key's place as its latest record, after waiting (at most
    /// `max_wait`: the ack deadline plus `SETTLE_GRACE`) for the one before
    /// it to settle.
    pub async fn enter(&self, key: K, max_wait: Duration) -> Flight<K> {
        let (settled, receiver) = watch::channel(false);
        let (number, before) = {
            let mut state = self.0.lock().expect("flights lock");
            let number = state.next_number;
            state.next_number += 1;
            let before = state.latest.insert(
                key,
                Latest {
                    number,
                    settled: receiver,
                },
            );
            (number, before)
        };
        if let Some(mut before) = before {
            let waited =
                tokio::time::timeout(max_wait, before.settled.wait_for(|settled| *settled)).await;
            if waited.is_err() {
                tracing::warn!(
                    "the record before this one of the same key is still not settled; sending this one anyway"
                );
            }
        }
        Flight {
            flights: self.clone(),
            key,
            number,
            settled,
        }
    }

    /// Keys with a record in flight.
    pub fn len(&self) -> usize {
        self.0.lock().expect("flights lock").latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Copy> Drop for Flight<K> {
    fn drop(&mut self) {
        self.settled.send_replace(true);
        let mut state = self.flights.0.lock().expect("flights lock");
        if state
            .latest
            .get(&self.key)
            .is_some_and(|latest| latest.number == self.number)
        {
            state.latest.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_record_waits_for_its_keys_predecessor_only() {
        let flights = Flights::default();
        let first = flights.enter(1, Duration::from_secs(5)).await;
        let started = Instant::now();
        let other_key = flights.enter(2, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "another key does not wait"
        );
        drop(other_key);
        let waiting = tokio::spawn({
            let flights = flights.clone();
            async move { flights.enter(1, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the same key waits while the first is in flight"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("goes once the first is settled")
            .unwrap();
        assert_eq!(flights.len(), 1);
        drop(second);
        assert!(flights.is_empty(), "nothing kept once settled");
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let flights = Flights::default();
        let _stuck = flights.enter(1, Duration::from_millis(300)).await;
        let started = Instant::now();
        let _next = flights.enter(1, Duration::from_millis(300)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
