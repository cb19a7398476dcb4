//! Deliveries: the acks file, which lists the ids Kafka acknowledged, and
//! the segments it lets go. Acks are not fsync'd on the hot path: losing one
//! only re-sends an entry, which consumers can drop by its dedup header. A
//! segment whose entries are all delivered is deleted; when nothing is
//! pending at all, the spool starts over with an empty segment and an empty
//! acks file.

use super::format::{id_frame, read_ids, ID_FRAME};
use super::fs::{cut_to, read_if_present};
use super::writer::Writer;
use super::{io_error, SpoolError, SpoolFs};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

pub(super) const ACKS_FILE: &str = "acks.log";

/// Reads the acks file and cuts a torn tail off it: acks are not fsync'd, so
/// a crash can leave part of a frame, and acks appended after it would be
/// misaligned and unreadable (found by tests/spool_model.rs).
pub(super) fn recover_acks(fs: &dyn SpoolFs, path: &Path) -> Result<HashSet<u64>, SpoolError> {
    let data = read_if_present(path)?;
    let (acked, valid) = read_ids(&data);
    if valid < data.len() {
        tracing::warn!(path = %path.display(), torn_bytes = data.len() - valid, "spool acks file had a torn tail; cut it");
        cut_to(fs, path, valid as u64)?;
    }
    Ok(acked)
}

impl Writer {
    pub(super) fn record_delivered(&mut self, ids: &[u64]) -> Result<(), SpoolError> {
        let mut frames = Vec::with_capacity(ids.len() * ID_FRAME);
        for id in ids {
            frames.extend_from_slice(&id_frame(*id));
            let segment = self.segments.range_mut(..=*id).next_back();
            if let Some((_, segment)) = segment {
                if segment.live.remove(id) {
                    self.status.pending.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.acks
            .write_all(&frames)
            .map_err(io_error(&self.acks_path))?;
        self.collect_garbage()
    }

    /// Deletes fully delivered segments; when nothing is pending at all, starts
    /// over with an empty segment and an empty acks file.
    pub(super) fn collect_garbage(&mut self) -> Result<(), SpoolError> {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, segment)| **first != self.current_first && segment.live.is_empty())
            .map(|(first, _)| *first)
            .collect();
        let current = &self.segments[&self.current_first];
        let reset =
            self.segments.len() == done.len() + 1 && current.live.is_empty() && current.bytes > 0;
        let dir = &self.settings.dir;
        for first in done {
            let segment = self.segments.remove(&first).expect("listed");
            self.fs
                .remove(&segment.path)
                .map_err(io_error(&segment.path))?;
            self.status.used.fetch_sub(segment.bytes, Ordering::Relaxed);
            self.fs.sync_dir(dir).map_err(io_error(dir))?;
        }
        if reset {
            // Everything delivered: reset rather than keep an ever-growing acks file.
            let current = &self.segments[&self.current_first];
            let (path, bytes) = (current.path.clone(), current.bytes);
            self.current.set_len(0).map_err(io_error(&path))?;
            self.acks.set_len(0).map_err(io_error(&self.acks_path))?;
            self.status.used.fetch_sub(bytes, Ordering::Relaxed);
            self.segments
                .get_mut(&self.current_first)
                .expect("current")
                .bytes = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};
    use super::super::Record;

    #[tokio::test]
    async fn survives_reopen_and_forgets_delivered_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, pending, _) = open(settings(dir.path())).unwrap();
        assert!(pending.is_empty());
        let mut ids = Vec::new();
        for n in 0..40 {
            ids.push(spool.append(record(n)).await.unwrap().id);
        }
        assert!(
            dir.path().read_dir().unwrap().count() > 3,
            "rolled over several segments"
        );
        for id in &ids[..25] {
            spool.mark_delivered(*id);
        }
        // Let the writer thread process the acks before "crashing".
        spool.append(record(99)).await.unwrap();
        drop(spool);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (_, pending, recovery) = open(settings(dir.path())).unwrap();
        assert_eq!(recovery.pending, 16);
        let replayed: Vec<Record> = pending.into_iter().map(|e| e.record).collect();
        let expected: Vec<Record> = (25..40).map(record).chain([record(99)]).collect();
        assert_eq!(replayed, expected, "pending entries come back in order");
    }
}
