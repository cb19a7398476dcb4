//! Opening a spool after a clean stop or a crash: taking the directory's
//! lock, reading every frame log back (a torn tail is cut off; a damaged
//! frame inside a log is skipped by resynchronising on the next intact one),
//! deleting segments with nothing intact in them, starting ids past all
//! that was seen, and handing the files to a new writer thread.

use super::acks::{recover_acks, ACKS_FILE};
use super::fs::cut_to;
use super::ids::{read_high_water, Ids};
use super::index::{Index, SegmentIndex};
use super::parked::{drop_retried, PARKED_FILE};
use super::scan::{scan_log, LogScan, Visit};
use super::writer::{create_segment, Status, Writer};
use super::{io_error, Location, Recovery, Spool, SpoolEntry, SpoolError, SpoolFs, SpoolSettings};
use roaring::RoaringTreemap;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Locked (`flock`) by the process that has the spool open.
const LOCK_FILE: &str = "lock";

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
    let mut next_id = read_high_water(&dir)?.max(acked.max().map_or(1, |id| id + 1));
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
    let current = create_segment(fs.as_ref(), &dir, next_id)?;
    segments.entry(next_id).or_default();
    let index = Arc::new(Mutex::new(Index {
        segments,
        held: Default::default(),
    }));
    let mut writer = Writer {
        fs,
        settings: settings.clone(),
        index: Arc::clone(&index),
        current,
        current_first: next_id,
        current_bytes: 0,
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
        index,
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
/// with no intact entry. Streams: one frame at a time, whatever the spool holds.
fn recover_segments(
    fs: &dyn SpoolFs,
    dir: &Path,
    acked: &RoaringTreemap,
    recovery: &mut Recovery,
    next_id: &mut u64,
    visit: &mut dyn FnMut(SpoolEntry, Location),
) -> Result<BTreeMap<u64, SegmentIndex>, SpoolError> {
    let mut segments = BTreeMap::new();
    for (number, path) in list_segments(dir)? {
        let mut segment = SegmentIndex::default();
        let (mut entries, mut delivered, mut expected) = (0, 0, 0);
        let scan = recover_log(fs, &path, recovery, &mut |entry, offset, len| {
            entries += 1;
            *next_id = (*next_id).max(entry.id + 1);
            if offset > expected {
                segment.damaged.push((expected, offset));
            }
            expected = offset + u64::from(len);
            if acked.contains(entry.id) {
                delivered += 1;
                return;
            }
            segment.live.insert(entry.id);
            let location = Location {
                segment: number,
                offset,
                len,
            };
            visit(entry, location);
        })?;
        if entries == 0 {
            fs.remove(&path).map_err(io_error(&path))?;
            fs.sync_dir(dir).map_err(io_error(dir))?;
            continue;
        }
        recovery.pending += segment.live.len() as usize;
        recovery.delivered += delivered;
        segment.bytes = scan.valid;
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};
    use super::super::format::FRAME_HEADER;

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
}
