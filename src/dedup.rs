//! Duplicate suppression. Superfone may deliver the same event twice, so each
//! event gets a dedup key from its identifying fields (see `event::dedup_key`),
//! and a repeat seen within the window is answered from the first delivery
//! instead of being published again.
//!
//! A key is remembered only once its record is durable (broker ack or spool):
//! a repeat that arrives while the first delivery is still in flight waits for
//! its outcome; if the first one failed, the repeat is delivered as new.
//! Memory is bounded: at most `max_entries` keys, each for at most `window`.

use crate::delivery::RecordRef;
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

enum Slot {
    /// `None` while the first delivery runs; the sender is dropped if it fails.
    InFlight(watch::Receiver<Option<FirstDelivery>>),
    Done(FirstDelivery),
}

struct State {
    slots: HashMap<String, (Instant, Slot)>,
    /// Keys in the order they were remembered, for expiry and the size bound.
    order: VecDeque<(Instant, String)>,
}

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
    key: String,
    sender: Option<watch::Sender<Option<FirstDelivery>>>,
    dedup: Dedup,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Dedup {
            window,
            max_entries,
            state: Arc::new(Mutex::new(State {
                slots: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    pub async fn claim(&self, key: &str) -> Claim {
        loop {
            let mut waiting = {
                let mut state = self.state.lock().expect("dedup lock");
                self.expire(&mut state);
                match state.slots.get(key) {
                    Some((_, Slot::Done(first))) => return Claim::Duplicate(first.clone()),
                    Some((_, Slot::InFlight(receiver))) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        state
                            .slots
                            .insert(key.to_owned(), (Instant::now(), Slot::InFlight(receiver)));
                        return Claim::New(Pending {
                            key: key.to_owned(),
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
    pub fn remember(&self, key: &str, first: FirstDelivery) {
        let mut state = self.state.lock().expect("dedup lock");
        let now = Instant::now();
        state.slots.insert(key.to_owned(), (now, Slot::Done(first)));
        state.order.push_back((now, key.to_owned()));
        self.expire(&mut state);
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("dedup lock").slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        while let Some((at, key)) = state.order.front() {
            let expired = now.duration_since(*at) >= self.window;
            if !expired && state.order.len() <= self.max_entries {
                break;
            }
            let key = key.clone();
            let remembered_at = *at;
            state.order.pop_front();
            // Only drop the slot this order entry stands for (not a newer one).
            if matches!(state.slots.get(&key), Some((at, Slot::Done(_))) if *at == remembered_at) {
                state.slots.remove(&key);
            }
        }
    }
}

impl Pending {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The record is durable: remember the key and release waiting repeats.
    pub fn remember(mut self, first: FirstDelivery) {
        self.dedup.remember(&self.key, first.clone());
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Some(first));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut state = self.dedup.state.lock().expect("dedup lock");
            if matches!(state.slots.get(&self.key), Some((_, Slot::InFlight(_)))) {
                state.slots.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(offset: i64) -> FirstDelivery {
        FirstDelivery {
            record: RecordRef {
                topic: "t".into(),
                partition: Some(0),
                offset: Some(offset),
                spool_id: None,
            },
            group_id: "g".into(),
        }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_delivery() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::New(pending) = dedup.claim("k").await else {
            panic!()
        };
        pending.remember(first(5));
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
        pending.remember(first(9));
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
            dedup.remember(&format!("k{n}"), first(n));
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
