//! Deliveries: the acks file, which lists the ids Kafka acknowledged, and
//! the segments it lets go. Acks are not fsync'd on the hot path: losing one
//! only re-sends an entry, which consumers can drop by its dedup header. A
//! segment whose entries are all delivered is deleted; when nothing is
//! pending at all, the spool starts over with an empty segment and an empty
//! acks file.

use super::format::{id_frame, read_ids, ID_FRAME};
use super::fs::cut_to;
use super::writer::{segment_path, Writer};
use super::{io_error, SpoolError, SpoolFs};
use roaring::RoaringTreemap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::Ordering;

pub(super) const ACKS_FILE: &str = "acks.log";

/// Reads the acks file (streamed, into a compressed set) and cuts a torn
/// tail off it: acks are not fsync'd, so a crash can leave part of a frame,
/// and acks appended after it would be misaligned and unreadable (found by
/// tests/spool_model.rs).
pub(super) fn recover_acks(fs: &dyn SpoolFs, path: &Path) -> Result<RoaringTreemap, SpoolError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RoaringTreemap::new())
        }
        Err(error) => return Err(io_error(path)(error)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    let (acked, valid) =
        read_ids(BufReader::with_capacity(1 << 16, file)).map_err(io_error(path))?;
    if valid < len {
        tracing::warn!(path = %path.display(), torn_bytes = len - valid, "spool acks file had a torn tail; cut it");
        cut_to(fs, path, valid)?;
    }
    Ok(acked)
}

impl Writer {
    /// Appends deliveries to the acks file (the index already took them
    /// out) and deletes what they freed.
    pub(super) fn record_delivered(&mut self, ids: &[u64]) -> Result<(), SpoolError> {
        let mut frames = Vec::with_capacity(ids.len() * ID_FRAME);
        for id in ids {
            frames.extend_from_slice(&id_frame(*id));
        }
        self.acks
            .write_all(&frames)
            .map_err(io_error(&self.acks_path))?;
        self.collect_garbage()
    }

    /// Deletes fully delivered segments. When nothing is pending at all,
    /// starts a new segment and deletes the current one too, then empties
    /// the acks file: no segment holds an id it lists any more.
    pub(super) fn collect_garbage(&mut self) -> Result<(), SpoolError> {
        let (done, reset) = {
            let index = self.index();
            let done: Vec<(u64, u64)> = index
                .segments
                .iter()
                .filter(|(first, segment)| **first != self.current_first && segment.live.is_empty())
                .map(|(first, segment)| (*first, segment.bytes))
                .collect();
            let current = &index.segments[&self.current_first];
            let reset = index.segments.len() == done.len() + 1
                && current.live.is_empty()
                && current.bytes > 0;
            (done, reset)
        };
        for (first, bytes) in done {
            self.delete_segment(first, bytes)?;
        }
        if reset {
            let (old, bytes) = (self.current_first, self.current_bytes);
            self.start_segment()?;
            self.delete_segment(old, bytes)?;
            self.acks.set_len(0).map_err(io_error(&self.acks_path))?;
        }
        Ok(())
    }

    /// Deletes a segment with nothing pending: out of the index first, so a
    /// replay reading never finds the index naming a file already gone.
    fn delete_segment(&mut self, first: u64, bytes: u64) -> Result<(), SpoolError> {
        let dir = &self.settings.dir;
        let path = segment_path(dir, first);
        self.index().segments.remove(&first);
        self.status.used.fetch_sub(bytes, Ordering::Relaxed);
        self.fs.remove(&path).map_err(io_error(&path))?;
        self.fs.sync_dir(dir).map_err(io_error(dir))
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
