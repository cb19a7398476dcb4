//! The durable local spool: where an event goes when Kafka cannot acknowledge
//! it within the request's deadline, so the bridge can still answer 2xx.
//!
//! An append-only log of checksummed frames in segment files, written by one
//! thread with group commit: every append waiting when the thread wakes is
//! written and covered by one `fsync` before any of them is acknowledged.
//! Delivered entries are recorded in an acks file (no fsync: losing an ack
//! only re-sends an entry, which consumers can drop by its dedup header); a
//! segment whose entries are all delivered is deleted.
//!
//! Why hand-written: the needs are small and specific (checksummed frames,
//! torn-tail truncation, group commit, per-entry acks, a byte cap), and the
//! queue crates looked at either lack checksums/torn-write recovery or bring a
//! storage engine's worth of machinery.
//!
//! A record Kafka refuses for good (too large, forbidden topic) is *parked*:
//! appended to `parked.log` in the same frame format, with its reason and
//! time as the `superfone-parked-*` headers, fsync'd, and only then
//! acknowledged in the spool, so it leaves the replay without ever being
//! lost. Parked records count towards the byte cap until an operator takes
//! them out (`superfone-bridge spool parked`).

mod format;
mod fs;
mod ids;
mod writer;

pub use fs::{RealFs, SpoolFile, SpoolFs};

use crate::durability::kafka::Record;
use format::{frame, frame_at, id_frame, read_frame, read_ids, FRAME_HEADER, ID_FRAME};
use ids::{read_high_water, Ids};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use writer::{create_segment, segment_path, Command, Park, Segment, Status, Writer};

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
        open(settings, fs, visit)
    }

    /// Appends a record; resolves once it is on disk (fsync'd).
    pub async fn append(&self, record: Record) -> Result<Appended, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append(record, reply))
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records that an entry reached Kafka; it will not be replayed.
    pub fn mark_delivered(&self, id: u64) {
        let _ = self.commands.send(Command::Delivered(id));
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
        stamp(&mut record, reason);
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

pub const PARKED_FILE: &str = "parked.log";
/// Ids of parked records an operator re-published (`spool parked retry`);
/// they leave `parked.log` when the spool is next opened.
pub const RETRIED_FILE: &str = "parked.retried";
/// Why a parked record was refused (the Kafka error).
pub const PARKED_REASON_HEADER: &str = "superfone-parked-reason";
/// When it was parked, RFC 3339 UTC.
pub const PARKED_AT_HEADER: &str = "superfone-parked-at";

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
    let retried = read_ids(&read_if_present(&dir.join(RETRIED_FILE))?).0;
    let mut entries = Vec::new();
    scan_log(&dir.join(PARKED_FILE), &mut |entry, _, _| {
        if !retried.contains(&entry.id) {
            entries.push(entry);
        }
    })?;
    Ok(entries)
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
    let retried = read_ids(&read_if_present(&retried_path)?).0;
    if retried.is_empty() {
        return Ok(());
    }
    let parked_path = dir.join(PARKED_FILE);
    // Streamed, one record at a time: parked records can be large.
    fs.replace(&parked_path, &mut |kept| {
        let mut written = Ok(());
        scan_file(&parked_path, &mut |entry, _, _| {
            if written.is_ok() && !retried.contains(&entry.id) {
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
        let framed = frame(id, record);
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
            self.record_delivered(&[id])?;
        }
        Ok(id)
    }

    fn is_spooled(&self, id: u64) -> bool {
        self.segments
            .range(..=id)
            .next_back()
            .is_some_and(|(_, segment)| segment.live.contains(&id))
    }
}

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

/// Locked (`flock`) by the process that has the spool open.
const LOCK_FILE: &str = "lock";

/// Called with each intact frame of a log: its entry, offset and length.
pub(super) type Visit<'a> = dyn FnMut(SpoolEntry, u64, u32) + 'a;

/// What scanning a frame log found besides its frames.
#[derive(Default)]
pub(super) struct LogScan {
    /// Length of the prefix that ends with the last valid frame.
    valid: u64,
    /// Bytes skipped between valid frames.
    corrupt: u64,
    /// The file's length.
    len: u64,
}

/// Opens (or creates) the spool in `settings.dir`; see `Spool::open_in`.
pub(super) fn open(
    settings: SpoolSettings,
    fs: Arc<dyn SpoolFs>,
    mut visit: impl FnMut(SpoolEntry, Location),
) -> Result<(Spool, Recovery), SpoolError> {
    let dir = settings.dir.clone();
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let lock = lock_dir(&dir)?;
    let acks_path = dir.join(ACKS_FILE);
    let acked = recover_acks(fs.as_ref(), &acks_path)?;
    let mut recovery = Recovery::default();
    // Past the mark, and past what the files show in case it was lost.
    let mut next_id = read_high_water(&dir)?.max(acked.iter().max().map_or(1, |id| id + 1));
    let mut segments = recover_segments(
        fs.as_ref(),
        &dir,
        &acked,
        &mut recovery,
        &mut next_id,
        &mut visit,
    )?;
    drop_retried(fs.as_ref(), &dir)?;
    let parked_path = dir.join(PARKED_FILE);
    let mut parked_entries = 0;
    let parked_scan = recover_log(
        fs.as_ref(),
        &parked_path,
        &mut recovery,
        &mut |entry, _, _| {
            parked_entries += 1;
            next_id = next_id.max(entry.id + 1);
        },
    )?;
    let parked = fs
        .open_append(&parked_path)
        .map_err(io_error(&parked_path))?;
    recovery.parked = parked_entries;
    let ids = Ids::reserve_from(Arc::clone(&fs), &dir, next_id)?;
    let status = Arc::new(Status {
        used: AtomicU64::new(segments.values().map(|s| s.bytes).sum::<u64>() + parked_scan.valid),
        pending: AtomicU64::new(recovery.pending as u64),
        parked: AtomicU64::new(parked_entries as u64),
        health: Default::default(),
    });
    let acks = fs.open_append(&acks_path).map_err(io_error(&acks_path))?;
    let (current, segment) = create_segment(fs.as_ref(), &dir, next_id)?;
    segments.entry(next_id).or_insert(segment);
    let mut writer = Writer {
        fs,
        settings: settings.clone(),
        segments,
        current,
        current_first: next_id,
        acks,
        acks_path,
        parked,
        parked_path,
        ids,
        status: Arc::clone(&status),
    };
    writer.collect_garbage()?;
    let spool = Spool {
        commands: writer.spawn()?,
        dir: Arc::from(dir.as_path()),
        status,
        cap: settings.max_bytes,
        _lock: Arc::new(lock),
    };
    Ok((spool, recovery))
}

/// Takes the spool directory's exclusive lock (`flock` on `LOCK_FILE`,
/// released by the kernel when the process dies, so a crash leaves no
/// stale lock).
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(SpoolError::Io { path, source }),
    }
}

/// The segment files in `dir` with the first id each is named by, in order.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .filter_map(|path| {
            let number = path.file_stem()?.to_str()?.parse().ok();
            if number.is_none() {
                tracing::warn!(path = %path.display(), "ignoring a .seg file not named by its first id");
            }
            Some((number?, path))
        })
        .collect();
    numbered.sort();
    Ok(numbered)
}

/// Recovers every segment in id order, calling `visit` with each entry not
/// yet delivered and raising `next_id` past every entry; deletes segments
/// with no intact entry.
fn recover_segments(
    fs: &dyn SpoolFs,
    dir: &Path,
    acked: &HashSet<u64>,
    recovery: &mut Recovery,
    next_id: &mut u64,
    visit: &mut dyn FnMut(SpoolEntry, Location),
) -> Result<BTreeMap<u64, Segment>, SpoolError> {
    let mut segments = BTreeMap::new();
    for (number, path) in list_segments(dir)? {
        let mut live = HashSet::new();
        let (mut entries, mut delivered) = (0, 0);
        let scan = recover_log(fs, &path, recovery, &mut |entry, offset, len| {
            entries += 1;
            *next_id = (*next_id).max(entry.id + 1);
            if acked.contains(&entry.id) {
                delivered += 1;
            } else {
                live.insert(entry.id);
                let location = Location {
                    segment: number,
                    offset,
                    len,
                };
                visit(entry, location);
            }
        })?;
        if entries == 0 {
            fs.remove(&path).map_err(io_error(&path))?;
            fs.sync_dir(dir).map_err(io_error(dir))?;
            continue;
        }
        recovery.pending += live.len();
        recovery.delivered += delivered;
        let segment = Segment {
            path,
            bytes: scan.valid,
            live,
        };
        segments.insert(number, segment);
    }
    Ok(segments)
}

/// Scans a frame log (segment or parked log), cuts a torn tail off it, and
/// counts what was cut or skipped.
fn recover_log(
    fs: &dyn SpoolFs,
    path: &Path,
    recovery: &mut Recovery,
    visit: &mut Visit<'_>,
) -> Result<LogScan, SpoolError> {
    let scan = scan_log(path, visit)?;
    recovery.corrupt_bytes += scan.corrupt;
    if scan.valid < scan.len {
        recovery.torn_bytes += scan.len - scan.valid;
        cut_to(fs, path, scan.valid)?;
    }
    Ok(scan)
}

/// Cuts a file back to its first `len` bytes, durably (a torn tail found at open).
pub(super) fn cut_to(fs: &dyn SpoolFs, path: &Path, len: u64) -> Result<(), SpoolError> {
    let file = fs.open_append(path).map_err(io_error(path))?;
    file.set_len(len).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// A file's bytes; empty when it does not exist (yet).
pub(super) fn read_if_present(path: &Path) -> Result<Vec<u8>, SpoolError> {
    match std::fs::read(path) {
        Ok(data) => Ok(data),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(io_error(path)(error)),
    }
}

/// Visits the valid frames of a log file one at a time, so a log is never
/// held in memory whole; only the rest of a damaged log is, to search past
/// the damage.
pub(super) fn scan_log(path: &Path, visit: &mut Visit<'_>) -> Result<LogScan, SpoolError> {
    scan_file(path, visit).map_err(io_error(path))
}

/// `scan_log`, for a caller that answers in `std::io` errors.
pub(super) fn scan_file(path: &Path, visit: &mut Visit<'_>) -> std::io::Result<LogScan> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(LogScan::default()),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let (mut at, mut last_id, mut body) = (0, 0, Vec::new());
    while at < len {
        match read_frame(&mut reader, len - at, &mut body) {
            Some(entry) => {
                let frame_len = FRAME_HEADER + body.len();
                last_id = entry.id;
                visit(entry, at, frame_len as u32);
                at += frame_len as u64;
            }
            None => {
                let mut rest = Vec::new();
                reader
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| reader.read_to_end(&mut rest))?;
                let tail = scan_bytes(&rest, last_id, &mut |entry, offset, frame_len| {
                    visit(entry, at + offset, frame_len)
                });
                return Ok(LogScan {
                    valid: at + tail.valid,
                    corrupt: tail.corrupt,
                    len,
                });
            }
        }
    }
    Ok(LogScan {
        valid: at,
        corrupt: 0,
        len,
    })
}

/// Visits the valid frames of an in-memory log. A damaged frame is skipped
/// by searching for the next intact frame with an id above `last_id`;
/// nothing intact after it means a torn tail (the bytes past `valid`).
fn scan_bytes(data: &[u8], mut last_id: u64, visit: &mut Visit<'_>) -> LogScan {
    let mut scan = LogScan {
        len: data.len() as u64,
        ..LogScan::default()
    };
    let mut at = 0;
    while at < data.len() {
        let found = frame_at(data, at).map(|found| (at, found)).or_else(|| {
            (at + 1..data.len()).find_map(|candidate| {
                frame_at(data, candidate)
                    .filter(|(entry, _)| entry.id > last_id)
                    .map(|found| (candidate, found))
            })
        });
        let Some((start, (entry, end))) = found else {
            break;
        };
        scan.corrupt += (start - at) as u64;
        last_id = entry.id;
        visit(entry, start as u64, (end - start) as u32);
        scan.valid = end as u64;
        at = end;
    }
    scan
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

    /// Issue 10, break 6: the replay reads records back by location instead
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

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_valid_prefix_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        for n in 0..3 {
            spool.append(record(n)).await.unwrap();
        }
        drop(spool);
        let segment = dir.path().join(format!("{:020}.seg", 1));
        let mut data = std::fs::read(&segment).unwrap();
        let full = data.len();
        data.truncate(full - 10); // a write torn mid-frame
        std::fs::write(&segment, &data).unwrap();
        let (_, pending, recovery) = open(settings(dir.path())).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(recovery.torn_bytes > 0);
        // Flip a byte inside the second frame: its checksum fails, the first survives.
        let mut data = std::fs::read(&segment).unwrap();
        let last = data.len() - 5;
        data[last] ^= 0xFF;
        std::fs::write(&segment, &data).unwrap();
        let (spool, pending, _) = open(settings(dir.path())).unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
        let id = spool.append(record(7)).await.unwrap().id;
        assert!(
            id > 3,
            "appends continue with ids never issued before, got {id}"
        );
    }

    /// A frame damaged in the middle of a segment loses only itself: reading
    /// resynchronises on the next valid frame and counts what it skipped.
    #[tokio::test]
    async fn a_corrupt_frame_mid_segment_does_not_discard_the_frames_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        for n in 0..5 {
            spool.append(record(n)).await.unwrap();
        }
        drop(spool);
        let segment = dir.path().join(format!("{:020}.seg", 1));
        let mut data = std::fs::read(&segment).unwrap();
        let frame_len = |at: usize| {
            FRAME_HEADER + u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize
        };
        let (first, second) = (frame_len(0), frame_len(frame_len(0)));
        data[first + FRAME_HEADER + 20] ^= 0xFF; // inside the second frame's body
        std::fs::write(&segment, &data).unwrap();
        let (_, pending, recovery) = open(settings(dir.path())).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 3, 4, 5]
        );
        assert_eq!(recovery.corrupt_bytes, second as u64);
        assert_eq!(recovery.torn_bytes, 0);
    }

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
