//! The spool's file operations that a crash can strike (writes, fsyncs,
//! truncations, renames, deletions, creations), behind `SpoolFs`, so that a
//! test can put a crash (or any fault) at any one of them and see what the
//! spool recovers; tests/spool_model.rs does. Production uses `RealFs`.
//!
//! Each call is one step a crash can fall between. A replacement is one
//! step, as it is for the spool (the temporary file is renamed only once
//! fsync'd); a `sync_dir` completes the creation, rename or deletion before
//! it. Reads are not behind it: a crash takes nothing from a read, and
//! recovery must read whatever the crash left.

use super::{io_error, SpoolError};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where the spool's files are created, written, made durable and deleted.
pub trait SpoolFs: Send + Sync + 'static {
    /// Opens `path` for appending, creating it if it is missing. A created
    /// file's directory entry is durable only after `sync_dir`.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>>;

    /// Replaces `path` with what `write` writes, atomically: into
    /// `<path>.tmp`, fsync'd, then renamed over `path`. The rename is durable
    /// only after `sync_dir`.
    fn replace(
        &self,
        path: &Path,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()>;

    /// Deletes `path`; durable only after `sync_dir`.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Makes the entries created, renamed or deleted in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file open for appending: every write lands at its end, also after
/// `set_len` cut it back.
pub trait SpoolFile: Send {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;

    /// `fdatasync`: the data written so far survives a power loss.
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync`: the data and the file's metadata survive a power loss.
    fn sync_all(&self) -> io::Result<()>;

    /// Cuts the file back to its first `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's length now.
    fn size(&self) -> io::Result<u64>;
}

/// The operating system's filesystem: what every production spool uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(File);

/// `<path>.tmp`, where a replacement is written before it is renamed.
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

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

impl SpoolFs for RealFs {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn replace(
        &self,
        path: &Path,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let temporary = temporary(path);
        let mut out = BufWriter::new(File::create(&temporary)?);
        write(&mut out)?;
        out.into_inner()
            .map_err(|error| error.into_error())?
            .sync_all()?;
        std::fs::rename(&temporary, path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SpoolFile for RealFile {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
