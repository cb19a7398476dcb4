//! Reading the pending entries back for the replay, in id order, from
//! where it stands (a `Cursor`): each segment's frames are read in
//! sequence up to its committed length, delivered ones stepped over,
//! ranges found damaged at recovery jumped, and a held entry ends the
//! read. Nothing per entry is kept in memory: the files are the queue.
//!
//! A frame that was intact when written but no longer is (the disk
//! damaged it since) is handled as recovery would at the next start: the
//! read resynchronises on the next intact frame, remembers the range as
//! damaged, and the pending entries that lay in it are lost and said so.

use super::format::{frame_at, read_frame, FRAME_HEADER};
use super::index::Index;
use super::writer::segment_path;
use super::{io_error, Record, SpoolError};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Where the replay stands in the spool: a segment (by its first id) and
/// an offset in it. Every entry before it is delivered or parked.
/// Ordered as the spool is: segments by first id, then offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    segment: u64,
    offset: u64,
}

/// A pending entry read back, and where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub id: u64,
    pub record: Record,
    /// The cursor that reads this entry next.
    pub at: Cursor,
}

/// What one read found: entries in id order, and the cursor past the
/// last frame it looked at.
#[derive(Debug, Default)]
pub struct PendingRead {
    pub entries: Vec<PendingEntry>,
    pub end: Cursor,
}

/// How much one read takes, at most (always at least one entry).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub entries: usize,
    pub bytes: u64,
}

/// The reader's view of the spool: its directory and index.
pub(super) struct PendingReader<'a> {
    pub(super) dir: &'a Path,
    pub(super) index: &'a Mutex<Index>,
    pub(super) pending: &'a AtomicU64,
}

/// Where one segment's read stands.
struct SegmentRead {
    first: u64,
    committed: u64,
    reader: BufReader<File>,
    /// The last entry read in this segment (the search past damage wants
    /// an id above it).
    last_id: u64,
}

enum After {
    Grown(u64),
    Next(u64),
    Last,
}

enum Next {
    /// A frame's entry and its length.
    Frame(u64, Record, u64),
    /// Past the committed end of the segment.
    End,
    /// A held entry: the read stops before it.
    Held,
}

impl PendingReader<'_> {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("spool index lock")
    }

    /// Reads pending entries from `from` on, within `limits`.
    pub(super) fn read(&self, from: Cursor, limits: ReadLimits) -> Result<PendingRead, SpoolError> {
        let mut read = PendingRead {
            entries: Vec::new(),
            end: from,
        };
        let mut bytes = 0;
        while let Some(mut segment) = self.open_segment(&mut read.end)? {
            loop {
                let at = read.end;
                match self.next_frame(&mut segment, &mut read.end)? {
                    Next::End => match self.after_segment(segment.first, read.end.offset) {
                        // Committed to since it was opened: read on in it,
                        // from the file, not from the buffer: it may hold
                        // bytes of a write that failed and was cut back,
                        // since overwritten by a later commit.
                        After::Grown(bytes) => {
                            segment.committed = bytes;
                            segment
                                .reader
                                .seek(SeekFrom::Start(read.end.offset))
                                .map_err(io_error(&segment_path(self.dir, segment.first)))?;
                        }
                        After::Next(next) => {
                            read.end = Cursor {
                                segment: next,
                                offset: 0,
                            };
                            break;
                        }
                        After::Last => return Ok(read),
                    },
                    Next::Held => return Ok(read),
                    Next::Frame(id, record, len) => {
                        read.end.offset += len;
                        if !self.index().is_live(id) {
                            continue;
                        }
                        bytes += len;
                        read.entries.push(PendingEntry { id, record, at });
                        if read.entries.len() >= limits.entries || bytes >= limits.bytes {
                            return Ok(read);
                        }
                    }
                }
            }
        }
        Ok(read)
    }

    /// Where to go at the end of segment `first`'s committed bytes: on in
    /// it if it grew past `offset` since it was opened, else to the next
    /// segment. Asked under one lock: a segment after `first` exists only
    /// once `first`'s last commit is in its length, so no entry is passed.
    fn after_segment(&self, first: u64, offset: u64) -> After {
        let index = self.index();
        match index.segments.get(&first).map(|segment| segment.bytes) {
            Some(bytes) if bytes > offset => After::Grown(bytes),
            _ => index.segment_after(first).map_or(After::Last, After::Next),
        }
    }

    /// Opens the segment `cursor` points into (or the next one, if that is
    /// gone), moving the cursor there; `None` when there is none.
    fn open_segment(&self, cursor: &mut Cursor) -> Result<Option<SegmentRead>, SpoolError> {
        loop {
            let Some((first, committed)) = self
                .index()
                .segment_from(cursor.segment)
                .map(|(first, segment)| (first, segment.bytes))
            else {
                return Ok(None);
            };
            if first != cursor.segment {
                *cursor = Cursor {
                    segment: first,
                    offset: 0,
                };
            }
            let path = segment_path(self.dir, first);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Deleted since (all delivered): the index no longer has it.
                Err(error)
                    if error.kind() == std::io::ErrorKind::NotFound
                        && self.index().segment_from(first).map(|(f, _)| f) != Some(first) =>
                {
                    continue
                }
                Err(error) => return Err(io_error(&path)(error)),
            };
            let mut reader = BufReader::with_capacity(1 << 16, file);
            reader
                .seek(SeekFrom::Start(cursor.offset))
                .map_err(io_error(&path))?;
            return Ok(Some(SegmentRead {
                first,
                committed,
                reader,
                last_id: 0,
            }));
        }
    }

    /// The next frame at `cursor` in `segment`, jumping damaged ranges.
    fn next_frame(
        &self,
        segment: &mut SegmentRead,
        cursor: &mut Cursor,
    ) -> Result<Next, SpoolError> {
        let path = segment_path(self.dir, segment.first);
        loop {
            if cursor.offset >= segment.committed {
                return Ok(Next::End);
            }
            let damage = self.index().damage_at(segment.first, cursor.offset);
            if let Some(end) = damage {
                cursor.offset = end;
                segment
                    .reader
                    .seek(SeekFrom::Start(end))
                    .map_err(io_error(&path))?;
                continue;
            }
            let mut body = Vec::new();
            let available = segment.committed - cursor.offset;
            let Some(entry) = read_frame(&mut segment.reader, available, &mut body) else {
                self.skip_damage(segment, cursor.offset)?;
                continue;
            };
            if self.index().held.contains(&entry.id) {
                return Ok(Next::Held);
            }
            segment.last_id = entry.id;
            let len = (FRAME_HEADER + body.len()) as u64;
            return Ok(Next::Frame(entry.id, entry.record, len));
        }
    }

    /// A committed frame no longer intact: finds the next intact one,
    /// records the range between as damaged, and takes the pending entries
    /// that lay in it out (they cannot be read; a restart would skip them too).
    fn skip_damage(&self, segment: &mut SegmentRead, offset: u64) -> Result<(), SpoolError> {
        let path = segment_path(self.dir, segment.first);
        let mut rest = Vec::new();
        segment
            .reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| {
                (&mut segment.reader)
                    .take(segment.committed - offset)
                    .read_to_end(&mut rest)
            })
            .map_err(io_error(&path))?;
        if frame_at(&rest, 0).is_some() {
            // Intact on a second read: the first failed for another reason
            // (an I/O error). Nothing is skipped; the replay reads it again.
            return Err(io_error(&path)(std::io::Error::other(
                "a spool frame could not be read (intact when read again)",
            )));
        }
        let found = (1..rest.len()).find_map(|at| {
            frame_at(&rest, at)
                .filter(|(entry, _)| entry.id > segment.last_id)
                .map(|(entry, _)| (at as u64, entry.id))
        });
        let (end, next_id) =
            found.map_or((segment.committed, u64::MAX), |(at, id)| (offset + at, id));
        let mut index = self.index();
        let lost: Vec<u64> = index
            .segments
            .get(&segment.first)
            .map(|indexed| {
                indexed
                    .live
                    .iter()
                    .filter(|id| *id > segment.last_id && *id < next_id)
                    .collect()
            })
            .unwrap_or_default();
        for id in &lost {
            index.deliver(*id, self.pending);
        }
        if let Some(indexed) = index.segments.get_mut(&segment.first) {
            indexed.damaged.push((offset, end));
        }
        drop(index);
        tracing::error!(
            path = %path.display(), offset, damaged_bytes = end - offset, lost = lost.len(),
            "spool: a frame on disk is no longer intact; skipped it, and the entries in it are lost"
        );
        segment
            .reader
            .seek(SeekFrom::Start(end))
            .map_err(io_error(&path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};
    use super::*;

    fn all(spool: &super::super::Spool, from: Cursor) -> Result<PendingRead, SpoolError> {
        let limits = ReadLimits {
            entries: usize::MAX,
            bytes: u64::MAX,
        };
        spool.read_pending(from, limits)
    }

    /// A segment that cannot be read now (here: gone from its path, as
    /// EMFILE or a failed open would look) is an error, not a skip: read
    /// again from the same cursor, every entry is still there, in order.
    #[tokio::test]
    async fn a_failed_read_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(spool.append(record(n)).await.unwrap().id);
        }
        let first = segment_path(dir.path(), ids[0]);
        let aside = dir.path().join("aside");
        std::fs::rename(&first, &aside).unwrap();
        assert!(all(&spool, Cursor::default()).is_err());
        std::fs::rename(&aside, &first).unwrap();
        let read = all(&spool, Cursor::default()).unwrap();
        let read: Vec<u64> = read.entries.iter().map(|e| e.id).collect();
        assert_eq!(read, ids);
    }

    /// Delivered entries are stepped over, a held one ends the read until
    /// released, and a cursor kept across deliveries and deleted segments
    /// finds the rest.
    #[tokio::test]
    async fn the_replay_reads_what_is_pending_from_where_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(settings(dir.path())).unwrap();
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(spool.append(record(n)).await.unwrap().id);
        }
        let held = spool.append_held(record(10)).await.unwrap().id;
        let after = spool.append(record(11)).await.unwrap().id;
        for id in &ids[..6] {
            spool.mark_delivered(*id);
        }
        let read = all(&spool, Cursor::default()).unwrap();
        let got: Vec<u64> = read.entries.iter().map(|e| e.id).collect();
        assert_eq!(got, ids[6..].to_vec(), "stops before the held entry");
        for id in &ids[6..] {
            spool.mark_delivered(*id);
        }
        spool.sync().await.unwrap();
        spool.release(held);
        let read = all(&spool, read.end).unwrap();
        let got: Vec<u64> = read.entries.iter().map(|e| e.id).collect();
        assert_eq!(got, vec![held, after]);
        assert_eq!(read.entries[0].record, record(10));
    }
}
