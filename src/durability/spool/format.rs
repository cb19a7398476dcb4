//! The bytes on disk: record frames (segments, the parked log), id frames
//! (the acks file, the high-water mark, retried ids), and the spool's
//! encoding of a record. Every frame carries a checksum, so a torn or
//! damaged one is told from an intact one.
//!
//! Frame: `len: u32 LE | crc32(body): u32 LE | body`, body = `id: u64 LE | record`.
//!
//! Id frame: `id: u64 LE | crc32(id): u32 LE`.

use super::{Record, SpoolEntry, SpoolError};
use crate::vocabulary::MAX_SPOOL_FRAME_BYTES;
use roaring::RoaringTreemap;
use std::io::Read;

pub(super) const FRAME_HEADER: usize = 8;
pub(super) const ID_FRAME: usize = 12;
/// Larger frames are treated as corruption, so none is ever written
/// (`frame_within_limit`).
const MAX_FRAME: u32 = MAX_SPOOL_FRAME_BYTES as u32;

/// The spool's encoding of a record (length-prefixed fields, little-endian).
trait SpoolCodec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(input: &[u8]) -> Option<Self>;
}

impl SpoolCodec for Record {
    fn encode(&self, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        bytes(out, self.topic.as_bytes());
        match &self.key {
            Some(key) => {
                out.push(1);
                bytes(out, key.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            bytes(out, name.as_bytes());
            bytes(out, value.as_bytes());
        }
        bytes(out, &self.payload);
    }

    fn decode(mut input: &[u8]) -> Option<Record> {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = input.split_at_checked(n)?;
            *input = rest;
            Some(head)
        }
        fn bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(take(input, 4)?.try_into().ok()?) as usize;
            take(input, len)
        }
        fn text(input: &mut &[u8]) -> Option<String> {
            String::from_utf8(bytes(input)?.to_vec()).ok()
        }
        let topic = text(&mut input)?;
        let key = match take(&mut input, 1)?[0] {
            1 => Some(text(&mut input)?),
            _ => None,
        };
        let count = u32::from_le_bytes(take(&mut input, 4)?.try_into().ok()?);
        let headers = (0..count)
            .map(|_| Some((text(&mut input)?, text(&mut input)?)))
            .collect::<Option<_>>()?;
        let payload = bytes(&mut input)?.to_vec();
        Some(Record {
            topic,
            key,
            headers,
            payload,
        })
    }
}

pub(super) fn frame(id: u64, record: &Record) -> Vec<u8> {
    let mut body = Vec::with_capacity(record.payload.len() + 256);
    body.extend_from_slice(&id.to_le_bytes());
    record.encode(&mut body);
    let mut framed = Vec::with_capacity(body.len() + FRAME_HEADER);
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// The frame of a new entry, or `TooLarge` when its readers would refuse
/// it: they would cut it off as a torn tail, with the frames after it.
pub(super) fn frame_within_limit(id: u64, record: &Record) -> Result<Vec<u8>, SpoolError> {
    let framed = frame(id, record);
    let body = framed.len() - FRAME_HEADER;
    if body > MAX_FRAME as usize {
        return Err(SpoolError::TooLarge {
            bytes: body,
            max: MAX_FRAME as usize,
        });
    }
    Ok(framed)
}

/// The entry of a frame body, if its checksum holds and it decodes.
fn decode_body(body: &[u8], crc: u32) -> Option<SpoolEntry> {
    if crc32fast::hash(body) != crc {
        return None;
    }
    let id = u64::from_le_bytes(body.get(..8)?.try_into().expect("8 bytes"));
    let record = Record::decode(&body[8..])?;
    Some(SpoolEntry { id, record })
}

/// A frame header's body length and checksum, if the length is plausible.
fn parse_header(header: &[u8]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    (8..=MAX_FRAME)
        .contains(&len)
        .then_some((len as usize, crc))
}

/// The frame starting at `at`, if one is there whole and intact: its entry and end.
pub(super) fn frame_at(data: &[u8], at: usize) -> Option<(SpoolEntry, usize)> {
    let (len, crc) = parse_header(data.get(at..at + FRAME_HEADER)?)?;
    let end = at + FRAME_HEADER + len;
    let entry = decode_body(data.get(at + FRAME_HEADER..end)?, crc)?;
    Some((entry, end))
}

/// Reads the frame at the reader's position, if it is whole (within
/// `available` bytes) and intact. `body` is a buffer reused between frames.
pub(super) fn read_frame(
    reader: &mut impl Read,
    available: u64,
    body: &mut Vec<u8>,
) -> Option<SpoolEntry> {
    let mut header = [0; FRAME_HEADER];
    reader.read_exact(&mut header).ok()?;
    let (len, crc) = parse_header(&header)?;
    if (FRAME_HEADER + len) as u64 > available {
        return None;
    }
    body.resize(len, 0);
    reader.read_exact(body).ok()?;
    decode_body(body, crc)
}

pub(super) fn id_frame(id: u64) -> [u8; ID_FRAME] {
    let mut frame = [0; ID_FRAME];
    frame[..8].copy_from_slice(&id.to_le_bytes());
    frame[8..].copy_from_slice(&crc32fast::hash(&id.to_le_bytes()).to_le_bytes());
    frame
}

/// The ids of an id-frame log read from `reader` up to the first damaged
/// frame, as a compressed set (an acks file lists every delivery since the
/// spool last emptied: no allocation each), and the length of that valid
/// prefix.
pub(super) fn read_ids(mut reader: impl Read) -> std::io::Result<(RoaringTreemap, u64)> {
    let mut ids = RoaringTreemap::new();
    let mut valid = 0;
    let mut frame = [0; ID_FRAME];
    loop {
        match reader.read_exact(&mut frame) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error),
        }
        let id = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
        if crc32fast::hash(&frame[..8])
            != u32::from_le_bytes(frame[8..].try_into().expect("4 bytes"))
        {
            break;
        }
        ids.insert(id);
        valid += ID_FRAME as u64;
    }
    Ok((ids, valid))
}
