//! Reading a frame log back (a segment or the parked log): every intact
//! frame visited in order, without holding the log in memory; a damaged
//! frame skipped by resynchronising on the next intact one; and how long
//! the valid prefix is, so recovery can cut a torn tail off.

use super::format::{frame_at, read_frame, FRAME_HEADER};
use super::{io_error, SpoolEntry, SpoolError};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Called with each intact frame of a log: its entry, offset and length.
pub(super) type Visit<'a> = dyn FnMut(SpoolEntry, u64, u32) + 'a;

/// What scanning a frame log found besides its frames.
#[derive(Default)]
pub(super) struct LogScan {
    /// Length of the prefix that ends with the last valid frame.
    pub(super) valid: u64,
    /// Bytes skipped between valid frames.
    pub(super) corrupt: u64,
    /// The file's length.
    pub(super) len: u64,
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
