//! Only intact copies count. A bridge copy must have a `stored` pointer
//! record, an object of the recording's size (the record's `bytes` too)
//! and, for every `sha256_every`-th recording, the source's very bytes with
//! the SHA-256 its record states. A ceiling copy is checked for its size.
//! Checked copies are deleted unless kept, so a run's disk use stays at a
//! phase's worth. Blocking: run from `spawn_blocking`.

use crate::recordings::pointers::PointerRecord;
use crate::recordings::source::Pattern;
use crate::recordings::Recording;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How many copies of a phase passed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checked {
    /// Recordings with a `stored` pointer record (the ceiling: every file written).
    pub stored: u64,
    /// Stored, of the right size and, where compared, the right bytes.
    pub intact: u64,
    /// Copies whose bytes and SHA-256 were compared.
    pub sha256_checked: u64,
    /// The first few copies that failed, and why.
    pub problems: Vec<String>,
}

impl Checked {
    fn problem(&mut self, recording: &Recording, problem: String) {
        if self.problems.len() < 10 {
            self.problems.push(format!("{}: {problem}", recording.name));
        }
    }
}

/// Checks the bridge's copies against their pointer records and the source.
pub fn bridge_copies(
    recordings: &[Recording],
    pointers: &BTreeMap<u64, PointerRecord>,
    pattern: &Pattern,
    sha256_every: u64,
    keep: bool,
) -> Checked {
    let mut checked = Checked::default();
    for recording in recordings {
        let Some(pointer) = pointers.get(&recording.seq) else {
            checked.problem(recording, "no pointer record".into());
            continue;
        };
        if pointer.cdr_id != Some(recording.cdr_id) {
            checked.problem(
                recording,
                format!("pointer for cdr_id {:?}", pointer.cdr_id),
            );
            continue;
        }
        if pointer.status != "stored" {
            let error = pointer.error.as_deref().unwrap_or_default();
            checked.problem(recording, format!("{}: {error}", pointer.status));
            continue;
        }
        checked.stored += 1;
        let Some(path) = pointer.object_url.as_deref().and_then(file_of) else {
            checked.problem(recording, format!("object {:?}", pointer.object_url));
            continue;
        };
        let compare = sha256_every > 0 && recording.seq % sha256_every == 0;
        let result = check_size(&path, recording.size, pointer.bytes).and_then(|()| {
            if !compare {
                return Ok(());
            }
            let sha256 = same_bytes(&path, recording, pattern)?;
            match pointer.sha256.as_deref() == Some(sha256.as_str()) {
                true => Ok(()),
                false => Err(format!("sha256 {sha256}, pointer {:?}", pointer.sha256)),
            }
        });
        checked.sha256_checked += u64::from(compare);
        match result {
            Ok(()) => checked.intact += 1,
            Err(problem) => checked.problem(recording, problem),
        }
        if !keep {
            let _ = std::fs::remove_file(&path);
        }
    }
    checked
}

/// Checks the ceiling's files (in `dir`) for their size.
pub fn ceiling_copies(recordings: &[Recording], dir: &Path, keep: bool) -> Checked {
    let mut checked = Checked::default();
    for recording in recordings {
        let path = dir.join(&recording.name);
        if !path.exists() {
            checked.problem(recording, "no file".into());
            continue;
        }
        checked.stored += 1;
        match check_size(&path, recording.size, Some(recording.size)) {
            Ok(()) => checked.intact += 1,
            Err(problem) => checked.problem(recording, problem),
        }
        if !keep {
            let _ = std::fs::remove_file(&path);
        }
    }
    checked
}

fn file_of(object_url: &str) -> Option<PathBuf> {
    object_url.strip_prefix("file://").map(PathBuf::from)
}

fn check_size(path: &Path, size: u64, stated: Option<u64>) -> Result<(), String> {
    let length = std::fs::metadata(path)
        .map_err(|error| error.to_string())?
        .len();
    if length != size || stated != Some(size) {
        return Err(format!("{length} bytes, pointer {stated:?}, source {size}"));
    }
    Ok(())
}

/// Compares the file with the source's bytes; returns its SHA-256 (hex).
fn same_bytes(path: &Path, recording: &Recording, pattern: &Pattern) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let mut hash = Sha256::new();
    let mut read = Vec::new();
    for (index, expected) in pattern.chunks(&recording.name, recording.size).enumerate() {
        read.resize(expected.len(), 0);
        file.read_exact(&mut read)
            .map_err(|error| format!("chunk {index}: {error}"))?;
        if read != expected {
            return Err(format!("chunk {index} differs from the source"));
        }
        hash.update(&read);
    }
    Ok(hash
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}
