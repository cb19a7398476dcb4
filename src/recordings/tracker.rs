//! Which offsets the copier may commit. Copies finish out of order (a slow
//! or retrying one must not hold back the recordings behind it), but the
//! committed offset of a partition must never pass a recording that has no
//! terminal record yet: after a restart, the group resumes at the oldest
//! unfinished one (and copies again the finished ones after it, which
//! writes the same objects: at-least-once).

use std::collections::{BTreeMap, BTreeSet};

/// The unfinished offsets of every partition, and how far each was read.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    unfinished: BTreeSet<i64>,
    /// The offset after the last one read.
    next: i64,
}

impl OffsetTracker {
    /// A recording at `offset` was read and its copy started.
    pub fn started(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        state.unfinished.insert(offset);
        state.next = state.next.max(offset + 1);
    }

    /// The recording at `offset` has its terminal record. Returns the offset
    /// the partition may now commit (the next one to read after a restart),
    /// if finishing this one moved it.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        let was_oldest = state.unfinished.first() == Some(&offset);
        state.unfinished.remove(&offset);
        was_oldest.then(|| state.committable())
    }

    /// Recordings read whose copies have not ended.
    pub fn unfinished(&self) -> usize {
        self.partitions.values().map(|p| p.unfinished.len()).sum()
    }

    /// Forgets a partition this copier no longer owns (a rebalance).
    pub fn revoked(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

impl Partition {
    fn committable(&self) -> i64 {
        self.unfinished.first().copied().unwrap_or(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_commit_waits_for_the_oldest_unfinished_copy() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..14 {
            tracker.started(0, offset);
        }
        assert_eq!(tracker.finished(0, 12), None, "10 is not finished");
        assert_eq!(tracker.finished(0, 11), None);
        assert_eq!(tracker.finished(0, 10), Some(13), "up to the slow 13");
        assert_eq!(tracker.finished(0, 13), Some(14));
        assert_eq!(tracker.unfinished(), 0);
        assert_eq!(tracker.finished(7, 1), None, "a partition never read");
    }

    proptest! {
        /// Whatever order copies finish in, a committed offset never passes
        /// an unfinished recording, and once all finish it is past them all.
        #[test]
        fn a_commit_never_passes_an_unfinished_recording(
            order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle()
        ) {
            let mut tracker = OffsetTracker::default();
            for offset in 0..40 {
                tracker.started(3, offset);
            }
            let mut done = BTreeSet::new();
            let mut committed = 0;
            for offset in order {
                done.insert(offset);
                if let Some(commit) = tracker.finished(3, offset) {
                    prop_assert!(commit > committed);
                    prop_assert!((0..commit).all(|o| done.contains(&o)));
                    committed = commit;
                }
            }
            prop_assert_eq!(committed, 40);
        }
    }
}
