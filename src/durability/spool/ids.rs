//! Entry ids and their durable high-water mark.
//!
//! Ids are never reused, across any sequence of restarts and crashes: the
//! acks file may still list ids whose segments are gone, so a reused id would
//! be taken for delivered. Ids are reserved in blocks: before an id is issued,
//! `high_water` (written to a temporary file, fsync'd, renamed, directory
//! fsync'd) already lies past it, and every open starts at that mark. One
//! write per `ID_BLOCK` appends; a restart skips the rest of the block.

use super::format::{id_frame, read_ids};
use super::fs::read_if_present;
use super::{io_error, SpoolError, SpoolFs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HIGH_WATER_FILE: &str = "high_water";
/// Ids reserved by one write of the high-water mark.
const ID_BLOCK: u64 = 1 << 20;

/// The ids the writer issues, each below the durable high-water mark.
pub(super) struct Ids {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    next: u64,
    /// The durable high-water mark: ids below it may be issued.
    reserved_until: u64,
}

/// The durable high-water mark: no id below it may be issued again.
pub(super) fn read_high_water(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(HIGH_WATER_FILE);
    let data = read_if_present(&path)?;
    let mark = read_ids(data.as_slice()).map_err(io_error(&path))?.0.max();
    if mark.is_none() && !data.is_empty() {
        // Written by rename, so never torn: a bad checksum is damage.
        tracing::error!(path = %path.display(), "spool high-water mark is corrupt; ignoring it");
    }
    Ok(mark.unwrap_or(0))
}

fn write_high_water(fs: &dyn SpoolFs, dir: &Path, next_id: u64) -> Result<(), SpoolError> {
    let path = dir.join(HIGH_WATER_FILE);
    fs.replace(&path, &mut |out| out.write_all(&id_frame(next_id)))
        .map_err(io_error(&path))?;
    fs.sync_dir(dir).map_err(io_error(dir))
}

impl Ids {
    /// Ids from `next` on (past every id the spool's files show), with a
    /// block reserved past it at once.
    pub(super) fn reserve_from(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        next: u64,
    ) -> Result<Ids, SpoolError> {
        let reserved_until = next + ID_BLOCK;
        write_high_water(fs.as_ref(), dir, reserved_until)?;
        Ok(Ids {
            fs,
            dir: dir.to_owned(),
            next,
            reserved_until,
        })
    }

    /// The id `issue` hands out next.
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Hands out the next id; `reserve` must have covered it.
    pub(super) fn issue(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    /// Makes sure the durable high-water mark lies past the next `count` ids.
    pub(super) fn reserve(&mut self, count: u64) -> Result<(), SpoolError> {
        if self.next + count >= self.reserved_until {
            let reserved_until = self.next + count + ID_BLOCK;
            write_high_water(self.fs.as_ref(), &self.dir, reserved_until)?;
            self.reserved_until = reserved_until;
        }
        Ok(())
    }

    /// Writes the mark again as it is: a probe that the disk still takes
    /// a durable write.
    pub(super) fn rewrite(&self) -> Result<(), SpoolError> {
        write_high_water(self.fs.as_ref(), &self.dir, self.reserved_until)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};

    /// Ids once derived from the segments that survive meant that
    /// after a drain and two restarts an old id was handed out again and the
    /// acks file, still listing it, made a 202-answered entry vanish.
    #[tokio::test]
    async fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut issued = Vec::new();
        {
            let (spool, _, _) = open(settings(dir.path())).unwrap();
            for n in 0..3 {
                issued.push(spool.append(record(n)).await.unwrap().id);
            }
        }
        {
            let (spool, pending, _) = open(settings(dir.path())).unwrap();
            assert_eq!(pending.len(), 3);
            for entry in &pending {
                spool.mark_delivered(entry.id);
            }
            spool.sync().await.unwrap();
        }
        {
            let (spool, pending, _) = open(settings(dir.path())).unwrap();
            assert!(pending.is_empty());
            let id = spool.append(record(7)).await.unwrap().id;
            assert!(
                !issued.contains(&id),
                "id {id} was issued before: {issued:?}"
            );
            issued.push(id);
        }
        let (spool, pending, _) = open(settings(dir.path())).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.record.clone()).collect::<Vec<_>>(),
            vec![record(7)],
            "the entry answered 202 is still pending"
        );
        let id = spool.append(record(8)).await.unwrap().id;
        assert!(
            !issued.contains(&id),
            "id {id} was issued before: {issued:?}"
        );
    }
}
