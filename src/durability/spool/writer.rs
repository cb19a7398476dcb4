//! The writer thread, the one owner of the spool's files. Commands from the
//! handles queue up while it writes; each time it wakes it takes every one
//! waiting (group commit): acks first, then parks, then all the appends,
//! written at once and covered by one `fsync` before any of them is
//! acknowledged.

use super::format::frame_within_limit;
use super::ids::Ids;
use super::index::Index;
use super::{io_error, Appended, Location, Record, SpoolError, SpoolFile, SpoolFs, SpoolSettings};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Appends taken in one group commit, at most.
const MAX_BATCH: usize = 1024;

pub(super) enum Command {
    Append(Append),
    Delivered(u64),
    Park(Park),
    Sync(oneshot::Sender<Result<(), SpoolError>>),
    Probe(oneshot::Sender<Result<(), SpoolError>>),
}

type AppendReply = oneshot::Sender<Result<Appended, SpoolError>>;

/// A record to append; `held`: kept from the replay until released.
pub(super) struct Append {
    pub(super) record: Record,
    pub(super) reply: AppendReply,
    pub(super) held: bool,
}

/// A record to park: a spool entry (`id`), or a new record not yet spooled.
pub(super) struct Park {
    pub(super) id: Option<u64>,
    pub(super) record: Record,
    pub(super) reply: oneshot::Sender<Result<u64, SpoolError>>,
}

/// What the handles report and the writer keeps up to date.
pub(super) struct Status {
    /// Bytes of segments and parked records on disk.
    pub(super) used: AtomicU64,
    /// Entries appended and not yet delivered.
    pub(super) pending: AtomicU64,
    /// Records parked and kept.
    pub(super) parked: AtomicU64,
    pub(super) health: Health,
}

/// The outcome of the spool's last write to disk: `None` when it succeeded.
#[derive(Default)]
pub(super) struct Health(Mutex<Option<String>>);

impl Health {
    /// Records how the last write ended: an I/O error, or success (a full
    /// spool is not a disk fault).
    fn record(&self, error: Option<&SpoolError>) {
        let fault = error
            .filter(|error| matches!(error, SpoolError::Io { .. }))
            .map(ToString::to_string);
        *self.0.lock().expect("spool health lock") = fault;
    }

    /// Why the last write failed; `None` when it succeeded.
    pub(super) fn fault(&self) -> Option<String> {
        self.0.lock().expect("spool health lock").clone()
    }
}

pub(super) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Creates the segment whose first id is `first`, to append to, and fsyncs
/// the directory at once: fsyncing a new file's frames does not make its
/// name durable.
pub(super) fn create_segment(
    fs: &dyn SpoolFs,
    dir: &Path,
    first: u64,
) -> Result<Box<dyn SpoolFile>, SpoolError> {
    let path = segment_path(dir, first);
    let file = fs.open_append(&path).map_err(io_error(&path))?;
    fs.sync_dir(dir).map_err(io_error(dir))?;
    Ok(file)
}

/// State owned by the writer thread.
pub(super) struct Writer {
    pub(super) fs: Arc<dyn SpoolFs>,
    pub(super) settings: SpoolSettings,
    /// Every segment, what is pending in it, and what is held; shared
    /// with the handles and the replay's reads.
    pub(super) index: Arc<Mutex<Index>>,
    /// The segment appended to: its file, first id and committed bytes.
    pub(super) current: Box<dyn SpoolFile>,
    pub(super) current_first: u64,
    pub(super) current_bytes: u64,
    pub(super) acks: Box<dyn SpoolFile>,
    pub(super) acks_path: PathBuf,
    pub(super) parked: Box<dyn SpoolFile>,
    pub(super) parked_path: PathBuf,
    pub(super) ids: Ids,
    pub(super) status: Arc<Status>,
}

impl Writer {
    /// Starts the writer thread; it runs until every handle is dropped.
    pub(super) fn spawn(self) -> Result<mpsc::UnboundedSender<Command>, SpoolError> {
        let (commands, receiver) = mpsc::unbounded_channel();
        let dir = self.settings.dir.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || self.run(receiver))
            .map_err(io_error(&dir))?;
        Ok(commands)
    }

    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut appends = Vec::new();
            let mut delivered = Vec::new();
            let mut parks = Vec::new();
            let mut syncs = Vec::new();
            let mut probes = Vec::new();
            let mut command = Some(first);
            while let Some(next) = command {
                match next {
                    Command::Append(append) => appends.push(append),
                    Command::Delivered(id) => delivered.push(id),
                    Command::Park(park) => parks.push(park),
                    Command::Sync(reply) => syncs.push(reply),
                    Command::Probe(reply) => probes.push(reply),
                }
                command = if appends.len() < MAX_BATCH {
                    receiver.try_recv().ok()
                } else {
                    None
                };
            }
            // Acks first: they may free the space the appends need.
            if !delivered.is_empty() {
                if let Err(error) = self.record_delivered(&delivered) {
                    tracing::error!(%error, "spool: cannot record deliveries; they may be replayed");
                }
            }
            for park in parks {
                let result = self.park(park.id, &park.record);
                let _ = park.reply.send(result);
            }
            if !appends.is_empty() {
                self.append_batch(appends);
            }
            for reply in syncs {
                let synced = self.acks.sync_data();
                let _ = reply.send(synced.map_err(io_error(&self.acks_path)));
            }
            if !probes.is_empty() {
                let result = self.ids.rewrite();
                self.status.health.record(result.as_ref().err());
                for reply in probes {
                    let _ = reply.send(result.as_ref().map_err(SpoolError::duplicate).copied());
                }
            }
        }
        let _ = self.acks.sync_all();
    }

    pub(super) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("spool index lock")
    }

    pub(super) fn start_segment(&mut self) -> Result<(), SpoolError> {
        let first = self.ids.next();
        self.current = create_segment(self.fs.as_ref(), &self.settings.dir, first)?;
        self.current_first = first;
        self.current_bytes = 0;
        self.index().segments.entry(first).or_default();
        Ok(())
    }

    /// Writes a batch and fsyncs once (group commit). On any error the batch
    /// is cut off the file again and every append in it fails.
    fn append_batch(&mut self, batch: Vec<Append>) {
        let reserved = self.ids.reserve(batch.len() as u64);
        self.status.health.record(reserved.as_ref().err());
        if let Err(error) = reserved {
            tracing::error!(%error, "spool: cannot reserve ids");
            for append in batch {
                let _ = append.reply.send(Err(error.duplicate()));
            }
            return;
        }
        let (buffer, accepted) = self.frame_batch(batch);
        if !accepted.is_empty() {
            self.commit(&buffer, accepted);
        }
    }

    /// Frames the records that fit under the cap, each with its id and where
    /// it will lie; answers the others `Full` (or `TooLarge`).
    fn frame_batch(&mut self, batch: Vec<Append>) -> (Vec<u8>, Vec<Accepted>) {
        let mut accepted = Vec::with_capacity(batch.len());
        let mut buffer = Vec::new();
        let used = self.status.used.load(Ordering::Relaxed);
        for Append {
            record,
            reply,
            held,
        } in batch
        {
            let framed = match frame_within_limit(self.ids.next(), &record) {
                Ok(framed) => framed,
                Err(error) => {
                    let _ = reply.send(Err(error));
                    continue;
                }
            };
            let projected = used + (buffer.len() + framed.len()) as u64;
            if projected > self.settings.max_bytes {
                let _ = reply.send(Err(SpoolError::Full {
                    used,
                    cap: self.settings.max_bytes,
                }));
                continue;
            }
            let location = Location {
                segment: self.current_first,
                offset: self.current_bytes + buffer.len() as u64,
                len: framed.len() as u32,
            };
            buffer.extend_from_slice(&framed);
            let appended = Appended {
                id: self.ids.issue(),
                location,
            };
            accepted.push(Accepted {
                appended,
                reply,
                held,
            });
        }
        (buffer, accepted)
    }

    /// Writes the framed batch to the current segment and fsyncs it; only
    /// then makes its entries pending (readable by the replay, but for the
    /// held ones) and answers their appends.
    fn commit(&mut self, buffer: &[u8], accepted: Vec<Accepted>) {
        let path = segment_path(&self.settings.dir, self.current_first);
        let written = self
            .current
            .write_all(buffer)
            .and_then(|()| self.current.sync_data());
        if let Err(source) = written {
            // Later appends still land at the end: the file is open for appending.
            let _ = self.current.set_len(self.current_bytes);
            let error = io_error(&path)(source);
            tracing::error!(%error, "spool write failed");
            self.status.health.record(Some(&error));
            for Accepted { reply, .. } in accepted {
                let _ = reply.send(Err(error.duplicate()));
            }
            return;
        }
        self.current_bytes += buffer.len() as u64;
        let status = &self.status;
        status
            .used
            .fetch_add(buffer.len() as u64, Ordering::Relaxed);
        status
            .pending
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        status.health.record(None);
        {
            let mut index = self.index.lock().expect("spool index lock");
            for entry in &accepted {
                if entry.held {
                    index.held.insert(entry.appended.id);
                }
            }
            let segment = index.segments.entry(self.current_first).or_default();
            for entry in &accepted {
                segment.live.insert(entry.appended.id);
            }
            segment.bytes = self.current_bytes;
        }
        for Accepted {
            appended, reply, ..
        } in accepted
        {
            let _ = reply.send(Ok(appended));
        }
        if self.current_bytes >= self.settings.segment_bytes {
            if let Err(error) = self.start_segment() {
                tracing::error!(%error, "spool: cannot start a new segment; appending to the full one");
            }
        }
    }
}

/// An append framed into the batch: its id and place, and who waits.
struct Accepted {
    appended: Appended,
    reply: AppendReply,
    held: bool,
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{open, record, settings};
    use super::super::{SpoolError, SpoolSettings};

    /// A frame longer than the spool's readers take would be cut off at the
    /// next open as a torn tail, with the entries after it in its segment:
    /// the writer refuses it (the request gets 503, never 2xx).
    #[tokio::test]
    async fn refuses_a_record_longer_than_a_frame_and_keeps_the_entries_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let roomy = SpoolSettings {
            max_bytes: 1 << 30,
            segment_bytes: 1 << 30,
            ..settings(dir.path())
        };
        let (spool, _, _) = open(roomy.clone()).unwrap();
        spool.append(record(0)).await.unwrap();
        let mut huge = record(1);
        huge.payload = vec![1; crate::vocabulary::MAX_SPOOL_FRAME_BYTES];
        let refused = spool.append(huge.clone()).await;
        assert!(
            matches!(refused, Err(SpoolError::TooLarge { .. })),
            "{refused:?}"
        );
        let parked = spool.park(None, huge, "too large").await;
        assert!(
            matches!(parked, Err(SpoolError::TooLarge { .. })),
            "{parked:?}"
        );
        spool.append(record(2)).await.unwrap();
        drop(spool);
        let (_, pending, recovery) = open(roomy).unwrap();
        assert_eq!(recovery.torn_bytes, 0);
        let records: Vec<_> = pending.into_iter().map(|entry| entry.record).collect();
        assert_eq!(records, [record(0), record(2)]);
    }

    #[tokio::test]
    async fn refuses_appends_over_the_cap_and_recovers_after_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _, _) = open(SpoolSettings {
            max_bytes: 1100,
            ..settings(dir.path())
        })
        .unwrap();
        let first = spool.append(record(0)).await.unwrap().id;
        spool.append(record(1)).await.unwrap();
        spool.append(record(2)).await.unwrap();
        assert!(matches!(
            spool.append(record(3)).await,
            Err(SpoolError::Full { .. })
        ));
        for id in first..first + 3 {
            spool.mark_delivered(id);
        }
        assert!(
            spool.append(record(4)).await.is_ok(),
            "space returns once entries are delivered"
        );
    }
}
