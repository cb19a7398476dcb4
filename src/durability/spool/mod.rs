//! The durable local spool: where an event goes when Kafka cannot acknowledge
//! it within the request's deadline, so the bridge can still answer 2xx.
//!
//! An append-only log of checksummed frames in segment files, written by one
//! thread with group commit: every append waiting when the thread wakes is
//! written and covered by one `fsync` before any of them is acknowledged.
//! Delivered entries are recorded in an acks file (no fsync: losing an ack
//! only re-sends an entry, which consumers can drop by its dedup header); a
//! segment whose entries are all delivered is deleted. Records Kafka refuses
//! for good are parked in a log of their own. What is pending is an index
//! per segment (a bitmap of ids), and the replay reads the pending entries
//! back from the segments in order, so memory grows with segments, not
//! with entries.
//!
//! Why hand-written: the needs are small and specific (checksummed frames,
//! torn-tail truncation, group commit, per-entry acks, a byte cap), and the
//! queue crates looked at either lack checksums/torn-write recovery or bring a
//! storage engine's worth of machinery.
//!
//! This file is the handle (`Spool`) and the types it shares; each concern
//! behind it has a file of its own: `format` (frames, checksums, the record
//! encoding), `ids` (the id high-water mark), `acks` (deliveries and the
//! segments they free), `parked`, `writer` (the writer thread, group
//! commit), `index` (what is pending, per segment), `pending` (reading it
//! back for the replay), `scan` (reading a frame log back, resynchronising past damage),
//! `recovery` (opening: the lock, torn tails cut, ids past all seen), and
//! `fs` (the file operations a crash can strike, behind `SpoolFs`).

mod acks;
mod format;
mod fs;
mod ids;
mod index;
mod parked;
mod pending;
mod recovery;
mod scan;
mod writer;

pub use fs::{RealFs, SpoolFile, SpoolFs};
pub use parked::{mark_retried, read_parked, PARKED_FILE, RETRIED_FILE};
pub use pending::{Cursor, PendingEntry, PendingRead, ReadLimits};

use crate::vocabulary::Record;
use format::read_frame;
use index::Index;
use pending::PendingReader;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use writer::{segment_path, Append, Command, Park, Status};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool is full: {used} of {cap} bytes used")]
    Full { used: u64, cap: u64 },
    #[error("spool writer has stopped")]
    Closed,
    #[error("spool entry {id} is not intact in {path} at offset {offset}")]
    Damaged { id: u64, path: PathBuf, offset: u64 },
    #[error("spool {dir} is in use by another process (a running bridge, or `spool drain`)")]
    Locked { dir: PathBuf },
    #[error("record of {bytes} bytes is larger than a spool frame holds ({max} bytes)")]
    TooLarge { bytes: usize, max: usize },
}

impl SpoolError {
    /// The same error again, for each append or probe that one failed write
    /// refuses (`std::io::Error` is not `Clone`).
    fn duplicate(&self) -> SpoolError {
        match self {
            SpoolError::Io { path, source } => SpoolError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            SpoolError::Full { used, cap } => SpoolError::Full {
                used: *used,
                cap: *cap,
            },
            SpoolError::Closed => SpoolError::Closed,
            SpoolError::Damaged { id, path, offset } => SpoolError::Damaged {
                id: *id,
                path: path.clone(),
                offset: *offset,
            },
            SpoolError::Locked { dir } => SpoolError::Locked { dir: dir.clone() },
            SpoolError::TooLarge { bytes, max } => SpoolError::TooLarge {
                bytes: *bytes,
                max: *max,
            },
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub id: u64,
    pub record: Record,
}

/// What opening an existing spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub pending: usize,
    pub delivered: usize,
    /// Bytes cut from segment tails that failed their checksum (torn writes).
    pub torn_bytes: u64,
    /// Bytes skipped inside segments: damaged frames followed by valid ones.
    pub corrupt_bytes: u64,
    /// Records parked (refused by Kafka for good) and still kept.
    pub parked: usize,
}

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

/// Where a frame lies: the segment file (named by `segment`), the offset of
/// the frame in it and the frame's length. Replay reads records from disk by
/// location instead of keeping them in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// A record made durable: its id and where it lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: u64,
    pub location: Location,
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    commands: mpsc::UnboundedSender<Command>,
    dir: Arc<Path>,
    status: Arc<Status>,
    index: Arc<Mutex<Index>>,
    cap: u64,
    /// Holds the directory's exclusive lock while any handle lives: two
    /// processes writing one spool would each replay and delete the other's
    /// entries.
    _lock: Arc<File>,
}

impl Spool {
    /// Opens (or creates) the spool, truncating torn tails, and calls
    /// `visit` with each entry not yet delivered, in append order, one at a
    /// time: the spool is never read into memory whole.
    pub fn open(
        settings: SpoolSettings,
        visit: impl FnMut(SpoolEntry, Location),
    ) -> Result<(Spool, Recovery), SpoolError> {
        Spool::open_in(settings, Arc::new(RealFs), visit)
    }

    /// `open`, with every file the spool writes created, written, made
    /// durable and deleted through `fs` (a test's, that crashes at a chosen
    /// operation; `open` uses `RealFs`).
    pub fn open_in(
        settings: SpoolSettings,
        fs: Arc<dyn SpoolFs>,
        visit: impl FnMut(SpoolEntry, Location),
    ) -> Result<(Spool, Recovery), SpoolError> {
        recovery::open(settings, fs, visit)
    }

    /// Appends a record; resolves once it is on disk (fsync'd).
    pub async fn append(&self, record: Record) -> Result<Appended, SpoolError> {
        self.append_as(record, false).await
    }

    /// Appends a record the replay must not read until `release(id)`: its
    /// request has something to settle first (a first attempt still
    /// running, which the replay must know of before it reaches the entry).
    pub async fn append_held(&self, record: Record) -> Result<Appended, SpoolError> {
        self.append_as(record, true).await
    }

    async fn append_as(&self, record: Record, held: bool) -> Result<Appended, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append(Append {
                record,
                reply,
                held,
            }))
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Lets the replay read an entry appended with `append_held`.
    pub fn release(&self, id: u64) {
        self.index().held.remove(&id);
    }

    /// Records that an entry reached Kafka: it will not be replayed (a
    /// replay reading next sees it gone at once; the acks file follows).
    pub fn mark_delivered(&self, id: u64) {
        self.index().deliver(id, &self.status.pending);
        let _ = self.commands.send(Command::Delivered(id));
    }

    /// Reads pending entries back (blocking: call it off the async
    /// runtime), in id order from `from`, within `limits`; stops before an
    /// entry still held. An I/O error leaves the cursor where it was: read
    /// again later, nothing is skipped.
    pub fn read_pending(
        &self,
        from: Cursor,
        limits: ReadLimits,
    ) -> Result<PendingRead, SpoolError> {
        PendingReader {
            dir: &self.dir,
            index: &self.index,
            pending: &self.status.pending,
        }
        .read(from, limits)
    }

    /// Whether entry `id` is still waiting to be delivered.
    pub fn is_pending(&self, id: u64) -> bool {
        self.index().is_live(id)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("spool index lock")
    }

    /// Parks a record Kafka refused for good: `id` names a spool entry,
    /// which leaves the replay; `None` parks a record not yet spooled. The
    /// record gets the reason and time as headers. Resolves once the parked
    /// copy is fsync'd, with its id.
    pub async fn park(
        &self,
        id: Option<u64>,
        mut record: Record,
        reason: &str,
    ) -> Result<u64, SpoolError> {
        parked::stamp(&mut record, reason);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Park(Park { id, record, reply }))
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records parked and kept.
    pub fn parked(&self) -> u64 {
        self.status.parked.load(Ordering::Relaxed)
    }

    /// Makes every ack sent so far durable (at shutdown).
    pub async fn sync(&self) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Sync(reply))
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Writes to the disk (the high-water mark, fsync'd) to check that the
    /// spool can still make an event durable.
    pub async fn probe(&self) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Probe(reply))
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Why the last write to disk failed; `None` when it succeeded.
    pub fn write_error(&self) -> Option<String> {
        self.status.health.fault()
    }

    /// Whether a record of `bytes` (framed) fits under the cap now.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.used_bytes().saturating_add(bytes) <= self.cap
    }

    /// Reads spool entries back from disk, by the ids and locations their
    /// appends returned (blocking: call it off the async runtime). An entry
    /// not found intact where it was written is an error of its own.
    pub fn read(&self, wanted: &[(u64, Location)]) -> Vec<Result<Record, SpoolError>> {
        let mut open: Option<(u64, PathBuf, BufReader<File>)> = None;
        let mut body = Vec::new();
        wanted
            .iter()
            .map(|&(id, location)| {
                if open
                    .as_ref()
                    .is_none_or(|(segment, ..)| *segment != location.segment)
                {
                    let path = segment_path(&self.dir, location.segment);
                    let file = File::open(&path).map_err(io_error(&path))?;
                    open = Some((location.segment, path, BufReader::new(file)));
                }
                let (_, path, reader) = open.as_mut().expect("opened above");
                reader
                    .seek(SeekFrom::Start(location.offset))
                    .map_err(io_error(path))?;
                match read_frame(reader, u64::from(location.len), &mut body) {
                    Some(entry) if entry.id == id => Ok(entry.record),
                    _ => Err(SpoolError::Damaged {
                        id,
                        path: path.clone(),
                        offset: location.offset,
                    }),
                }
            })
            .collect()
    }

    /// Entries appended and not yet delivered.
    pub fn pending(&self) -> u64 {
        self.status.pending.load(Ordering::Relaxed)
    }

    /// Bytes of segment files on disk.
    pub fn used_bytes(&self) -> u64 {
        self.status.used.load(Ordering::Relaxed)
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap
    }
}

/// What the tests of every part of the spool open it with.
#[cfg(test)]
mod fixtures {
    use super::*;

    /// Opens a spool, collecting its pending entries.
    pub(super) fn open(
        settings: SpoolSettings,
    ) -> Result<(Spool, Vec<SpoolEntry>, Recovery), SpoolError> {
        let mut pending = Vec::new();
        let (spool, recovery) = Spool::open(settings, |entry, _| pending.push(entry))?;
        Ok((spool, pending, recovery))
    }

    pub(super) fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            segment_bytes: 4096,
        }
    }

    pub(super) fn record(n: usize) -> Record {
        Record {
            topic: "t".into(),
            key: n.is_multiple_of(2).then(|| format!("k{n}")),
            headers: vec![("h".into(), format!("v{n}"))],
            payload: vec![n as u8; 300],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{open, record, settings};
    use super::*;
    use std::collections::HashSet;

    /// The records at `wanted`, each read back intact.
    fn read_all(spool: &Spool, wanted: &[(u64, Location)]) -> Vec<Record> {
        spool.read(wanted).into_iter().map(Result::unwrap).collect()
    }

    /// The replay reads records back by location instead
    /// of holding them; locations survive a reopen and a reset of the
    /// current segment (its offsets are reused by later ids).
    #[tokio::test]
    async fn entries_are_read_back_from_disk_by_location() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        let mut appended = Vec::new();
        for n in 0..30 {
            appended.push(spool.append(record(n)).await.unwrap());
        }
        let wanted: Vec<(u64, Location)> = appended.iter().map(|a| (a.id, a.location)).collect();
        assert_eq!(
            read_all(&spool, &wanted),
            (0..30).map(record).collect::<Vec<_>>()
        );
        assert!(
            wanted
                .iter()
                .map(|(_, l)| l.segment)
                .collect::<HashSet<_>>()
                .len()
                > 1,
            "read across segments"
        );
        drop(spool);

        let mut found = Vec::new();
        let (spool, _) = Spool::open(settings(dir.path()), |entry, location| {
            found.push((entry, location))
        })
        .unwrap();
        let wanted: Vec<(u64, Location)> = found.iter().map(|(e, l)| (e.id, *l)).collect();
        assert_eq!(
            read_all(&spool, &wanted),
            (0..30).map(record).collect::<Vec<_>>()
        );
        assert!(
            matches!(
                spool.read(&[(9_999, wanted[0].1)])[0],
                Err(SpoolError::Damaged { .. })
            ),
            "another id at that location is not taken for the entry"
        );

        // Everything delivered: the current segment is reset, and new ids
        // are written at its old offsets.
        for (id, _) in &wanted {
            spool.mark_delivered(*id);
        }
        let later = spool.append(record(77)).await.unwrap();
        spool.sync().await.unwrap();
        let again = spool.append(record(78)).await.unwrap();
        let read = spool.read(&[(later.id, later.location), (again.id, again.location)]);
        let read: Vec<Record> = read.into_iter().map(Result::unwrap).collect();
        assert_eq!(read, vec![record(77), record(78)]);
    }
}
