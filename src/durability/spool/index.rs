//! The spool's index: what is pending, and where the replay may read. Per
//! segment, its committed length (what is written and fsync'd: a reader
//! never looks past it), the ids of its entries not yet delivered (a
//! compressed bitmap: runs of ids cost bits, not an entry each) and the
//! byte ranges found damaged when it was recovered; plus the few entries
//! held back from the replay while their request settles. Memory grows
//! with segments and damage, not with entries.
//!
//! The writer adds segments and entries and deletes segments; the handles
//! take deliveries out at once (so a replay reading next sees them gone,
//! before the acks file is written); the replay reads through it.

use roaring::RoaringTreemap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// One segment file, as the index knows it.
#[derive(Debug, Default)]
pub(super) struct SegmentIndex {
    /// Bytes written and fsync'd: frames past it are not committed.
    pub(super) bytes: u64,
    /// Ids of its entries not yet delivered.
    pub(super) live: RoaringTreemap,
    /// Byte ranges that held no intact frame when the segment was
    /// recovered, in order: a reader jumps over them.
    pub(super) damaged: Vec<(u64, u64)>,
}

/// Every segment, keyed by the first id it was named by.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) segments: BTreeMap<u64, SegmentIndex>,
    /// Entries committed but not yet for the replay (see `Spool::append_held`).
    pub(super) held: BTreeSet<u64>,
}

impl Index {
    /// The segment that holds `id`, if any does.
    fn segment_of(&mut self, id: u64) -> Option<&mut SegmentIndex> {
        self.segments
            .range_mut(..=id)
            .next_back()
            .map(|(_, segment)| segment)
    }

    /// Whether `id` is an entry still pending.
    pub(super) fn is_live(&self, id: u64) -> bool {
        self.segments
            .range(..=id)
            .next_back()
            .is_some_and(|(_, segment)| segment.live.contains(id))
    }

    /// Takes `id` out of the pending entries; true if it was one of them
    /// (`pending` counts it out then).
    pub(super) fn deliver(&mut self, id: u64, pending: &AtomicU64) -> bool {
        self.held.remove(&id);
        let removed = self
            .segment_of(id)
            .is_some_and(|segment| segment.live.remove(id));
        if removed {
            pending.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The first segment at or after `first`, with its first id.
    pub(super) fn segment_from(&self, first: u64) -> Option<(u64, &SegmentIndex)> {
        self.segments
            .range(first..)
            .next()
            .map(|(first, segment)| (*first, segment))
    }

    /// The first segment after `first`'s, if any.
    pub(super) fn segment_after(&self, first: u64) -> Option<u64> {
        self.segments
            .range(first.saturating_add(1)..)
            .next()
            .map(|(first, _)| *first)
    }

    /// Where a damaged range starting at `offset` in segment `first` ends.
    pub(super) fn damage_at(&self, first: u64, offset: u64) -> Option<u64> {
        self.segments.get(&first).and_then(|segment| {
            segment
                .damaged
                .iter()
                .find(|(start, _)| *start == offset)
                .map(|(_, end)| *end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pending ids cost a compressed bitmap: a long run of them is a few
    /// kilobytes, not an allocation each.
    #[test]
    fn a_million_pending_ids_take_kilobytes() {
        let mut segment = SegmentIndex::default();
        for id in 1..=1_000_000u64 {
            segment.live.insert(id);
        }
        for id in (1..=1_000_000u64).step_by(3) {
            segment.live.remove(id);
        }
        assert_eq!(segment.live.len(), 666_666);
        assert!(
            segment.live.serialized_size() < 200 * 1024,
            "{} bytes",
            segment.live.serialized_size()
        );
    }

    #[test]
    fn a_delivery_counts_out_only_a_pending_entry() {
        let pending = AtomicU64::new(2);
        let mut index = Index::default();
        let mut segment = SegmentIndex::default();
        segment.live.insert(10);
        segment.live.insert(11);
        index.segments.insert(10, segment);
        index.segments.insert(20, SegmentIndex::default());
        assert!(index.deliver(11, &pending));
        assert!(!index.deliver(11, &pending), "twice");
        assert!(!index.deliver(25, &pending), "not in the index");
        assert_eq!(pending.load(Ordering::Relaxed), 1);
        assert!(index.is_live(10) && !index.is_live(11));
        assert_eq!(index.segment_from(11).map(|(first, _)| first), Some(20));
        assert_eq!(index.segment_after(10), Some(20));
        assert_eq!(index.segment_after(20), None);
    }
}
