//! Parked records: those Kafka refuses for good (too large, forbidden
//! topic). One is appended to `parked.log` in the segments' frame format,
//! with its reason and time as the `superfone-parked-*` headers, fsync'd,
//! and only then acknowledged in the spool, so it leaves the replay without
//! ever being lost. Parked records count towards the byte cap until an
//! operator takes them out (`superfone-bridge spool parked`).

use super::format::{frame, frame_within_limit, id_frame, read_ids};
use super::fs::read_if_present;
use super::scan::{scan_file, scan_log};
use super::writer::Writer;
use super::{io_error, RealFs, Record, SpoolEntry, SpoolError, SpoolFs};
use crate::vocabulary::headers::{PARKED_AT_HEADER, PARKED_REASON_HEADER};
use std::path::Path;
use std::sync::atomic::Ordering;

pub const PARKED_FILE: &str = "parked.log";
/// Ids of parked records an operator re-published (`spool parked retry`);
/// they leave `parked.log` when the spool is next opened.
pub const RETRIED_FILE: &str = "parked.retried";

/// Gives a record about to be parked its reason and the time, as headers.
pub(super) fn stamp(record: &mut Record, reason: &str) {
    let parked_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    record.headers.extend([
        (PARKED_REASON_HEADER.to_owned(), reason.to_owned()),
        (PARKED_AT_HEADER.to_owned(), parked_at),
    ]);
}

/// Reads the parked records of a spool directory that were not re-published
/// yet (also while a bridge runs: frames are checksummed, and a frame still
/// being written is not yet whole).
pub fn read_parked(dir: &Path) -> Result<Vec<SpoolEntry>, SpoolError> {
    let retried = read_retried(&dir.join(RETRIED_FILE))?;
    let mut entries = Vec::new();
    scan_log(&dir.join(PARKED_FILE), &mut |entry, _, _| {
        if !retried.contains(entry.id) {
            entries.push(entry);
        }
    })?;
    Ok(entries)
}

/// The ids of parked records re-published since the spool was last opened.
fn read_retried(path: &Path) -> Result<roaring::RoaringTreemap, SpoolError> {
    let data = read_if_present(path)?;
    Ok(read_ids(data.as_slice()).map_err(io_error(path))?.0)
}

/// Records that a parked record was re-published (fsync'd): it is no longer
/// listed, and leaves the parked log at the spool's next open. Safe beside a
/// running bridge, which never writes this file.
pub fn mark_retried(dir: &Path, id: u64) -> Result<(), SpoolError> {
    let path = dir.join(RETRIED_FILE);
    let mut file = RealFs.open_append(&path).map_err(io_error(&path))?;
    file.write_all(&id_frame(id))
        .and_then(|()| file.sync_data())
        .map_err(io_error(&path))
}

/// Rewrites the parked log without the records re-published since the last
/// open (temporary file, fsync, rename), then forgets them.
pub(super) fn drop_retried(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
    let retried_path = dir.join(RETRIED_FILE);
    let retried = read_retried(&retried_path)?;
    if retried.is_empty() {
        return Ok(());
    }
    let parked_path = dir.join(PARKED_FILE);
    // Streamed, one record at a time: parked records can be large.
    fs.replace(&parked_path, &mut |kept| {
        let mut written = Ok(());
        scan_file(&parked_path, &mut |entry, _, _| {
            if written.is_ok() && !retried.contains(entry.id) {
                written = kept.write_all(&frame(entry.id, &entry.record));
            }
        })?;
        written
    })
    .map_err(io_error(&parked_path))?;
    fs.remove(&retried_path).map_err(io_error(&retried_path))?;
    fs.sync_dir(dir).map_err(io_error(dir))
}

impl Writer {
    /// Appends the record to the parked log and fsyncs it; then, for a spool
    /// entry, acknowledges it so it leaves the replay.
    pub(super) fn park(&mut self, id: Option<u64>, record: &Record) -> Result<u64, SpoolError> {
        let id = match id {
            Some(id) => id,
            None => {
                self.ids.reserve(1)?;
                self.ids.issue()
            }
        };
        let framed = frame_within_limit(id, record)?;
        let used = self.status.used.load(Ordering::Relaxed);
        // A spooled entry only moves; a new record must fit under the cap.
        let spooled = self.is_spooled(id);
        if used + framed.len() as u64 > self.settings.max_bytes && !spooled {
            return Err(SpoolError::Full {
                used,
                cap: self.settings.max_bytes,
            });
        }
        let before = self.parked.size().unwrap_or(0);
        let written = self
            .parked
            .write_all(&framed)
            .and_then(|()| self.parked.sync_data());
        if let Err(source) = written {
            let _ = self.parked.set_len(before);
            return Err(io_error(&self.parked_path)(source));
        }
        let status = &self.status;
        status
            .used
            .fetch_add(framed.len() as u64, Ordering::Relaxed);
        status.parked.fetch_add(1, Ordering::Relaxed);
        if spooled {
            let delivered = self.index().deliver(id, &self.status.pending);
            // Parked it is: the caller lets go of its key. Without the ack
            // on disk, a restart sends the entry once more (at-least-once).
            if delivered {
                if let Err(error) = self.record_delivered(&[id]) {
                    tracing::error!(%error, id, "parked a spooled entry, but could not record it as done; a restart sends it again");
                }
            }
        }
        Ok(id)
    }

    fn is_spooled(&self, id: u64) -> bool {
        self.index().is_live(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};
    use super::*;

    #[tokio::test]
    async fn a_parked_entry_leaves_the_replay_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        let ids: Vec<u64> = futures::future::join_all((0..3).map(|n| spool.append(record(n))))
            .await
            .into_iter()
            .map(|appended| appended.unwrap().id)
            .collect();
        spool
            .park(Some(ids[1]), record(1), "too large")
            .await
            .unwrap();
        let fresh = spool
            .park(None, record(9), "forbidden topic")
            .await
            .unwrap();
        assert!(!ids.contains(&fresh), "a parked new record gets its own id");
        assert_eq!((spool.pending(), spool.parked()), (2, 2));
        drop(spool);
        let (spool, pending, recovery) = open(settings(dir.path())).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![ids[0], ids[2]]
        );
        assert_eq!((recovery.parked, spool.parked()), (2, 2));
        let parked = read_parked(dir.path()).unwrap();
        assert_eq!(
            parked.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![ids[1], fresh]
        );
        let reason = |entry: &SpoolEntry| {
            entry
                .record
                .headers
                .iter()
                .find(|(name, _)| name == PARKED_REASON_HEADER)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(reason(&parked[0]).as_deref(), Some("too large"));
        assert_eq!(parked[0].record.payload, record(1).payload);

        // Re-published by an operator: no longer listed, and gone from the
        // parked log (and its bytes from the cap) at the next open.
        mark_retried(dir.path(), ids[1]).unwrap();
        let listed: Vec<u64> = read_parked(dir.path())
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(listed, vec![fresh]);
        let used = spool.used_bytes();
        drop(spool);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (spool, _, recovery) = open(settings(dir.path())).unwrap();
        assert_eq!((recovery.parked, spool.parked()), (1, 1));
        assert!(spool.used_bytes() < used);
        assert!(!dir.path().join(RETRIED_FILE).exists());
    }
}
