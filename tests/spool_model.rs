//! A model-based test of the spool: random sequences of appends,
//! Kafka acknowledgements, permanent refusals (parking), clean restarts and
//! crashes, over segments small enough to rotate every few appends. After
//! every step that reopens the spool, what it holds is checked against a
//! model of what was promised:
//! - every entry answered durable is pending, delivered or parked: never lost;
//! - ids are never reused, across any sequence of restarts and crashes;
//! - per key, pending entries come back in the order they were accepted, and
//!   each reads back from disk intact by the location the spool gave;
//! - what the spool holds is bounded: its byte count stays under the cap and
//!   its pending count matches the model, nothing held twice;
//! - the replay's view, its index: reading the pending entries back from
//!   the segments in windows yields exactly the model's pending entries in
//!   order, after every step and after every reopen (the index recovered
//!   from the files at each crash point); and a replay that keeps its
//!   cursor across appends, acks, parks and the segments they delete never
//!   skips an entry.
//!
//! A crash strikes at a chosen file operation of the spool's writer (a
//! write, fsync, rename, truncation or deletion: the spool is opened on
//! `CrashFs`, a filesystem with a crash point before each): that operation
//! and every later one fail, as if the process had died there.
//! Then the machine "loses power": every file is cut back to a random length
//! between what was fsync'd and what was written (torn writes, lost unsynced
//! bytes: acks are never fsync'd on the hot path), sometimes with a stray
//! temporary high-water file, and the spool is opened again.
//!
//! Cases: `SUPERFONE_SPOOL_MODEL_CASES` (default 2,000, as scripts/test runs
//! it); a soak run sets it higher (docs/testing.md).

use crash_fs::{CrashFs, CrashPlan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Crashes simulated over all cases, reported with the case count.
static CRASHES: AtomicUsize = AtomicUsize::new(0);
use superfone_bridge::durability::spool::{
    self, Cursor, Location, ReadLimits, Spool, SpoolEntry, SpoolError, SpoolSettings,
};
use superfone_bridge::vocabulary::Record;

#[derive(Debug, Clone)]
enum Op {
    Append {
        key: u8,
        size: u16,
    },
    Ack {
        pick: u16,
    },
    Refuse {
        pick: u16,
    },
    /// The replay takes the next `take` pending entries from where it
    /// stands and delivers them.
    Replay {
        take: u8,
    },
    Restart,
    /// Crash at the `after`-th file operation from now; `seed` tears files.
    Crash {
        after: u8,
        seed: u64,
        stray_tmp: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, 0u16..600).prop_map(|(key, size)| Op::Append { key, size }),
        4 => any::<u16>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<u16>().prop_map(|pick| Op::Refuse { pick }),
        3 => (1u8..6).prop_map(|take| Op::Replay { take }),
        1 => Just(Op::Restart),
        2 => (0u8..12, any::<u64>(), any::<bool>())
            .prop_map(|(after, seed, stray_tmp)| Op::Crash { after, seed, stray_tmp }),
    ]
}

/// An accepted entry: its key and its place in the order of acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Accepted {
    key: u8,
    sequence: u64,
    size: u16,
}

fn record(accepted: Accepted) -> Record {
    Record {
        topic: "events".into(),
        key: Some(format!("lead-{}", accepted.key)),
        headers: vec![("sequence".into(), accepted.sequence.to_string())],
        payload: vec![accepted.key; usize::from(accepted.size)],
    }
}

#[derive(Default)]
struct Model {
    /// Every id the spool ever issued.
    issued: HashSet<u64>,
    /// Answered durable, waiting for Kafka.
    pending: BTreeMap<u64, Accepted>,
    /// Acknowledged by Kafka (an ack lost in a crash brings one back).
    delivered: BTreeMap<u64, Accepted>,
    /// Refused for good and parked.
    parked: BTreeMap<u64, Accepted>,
    /// Appends answered with an error at a crash: written perhaps, never
    /// promised. One may come back (and be sent, which loses nothing).
    unanswered: Vec<Accepted>,
    next_sequence: u64,
}

impl Model {
    fn pick(&self, pick: u16) -> Option<u64> {
        let len = self.pending.len();
        (len > 0).then(|| {
            *self
                .pending
                .keys()
                .nth(usize::from(pick) % len)
                .expect("in range")
        })
    }
}

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_owned(),
        max_bytes: 48 * 1024,
        segment_bytes: 1024,
    }
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

/// Opens the spool and checks what it found against the model, which then
/// takes what the spool holds as pending (a lost ack brings an entry back).
fn reopen(dir: &Path, model: &mut Model, clean: bool) -> Result<Spool, TestCaseError> {
    let mut found: Vec<(SpoolEntry, Location)> = Vec::new();
    let (spool, _) = Spool::open(settings(dir), |entry, location| {
        found.push((entry, location))
    })
    .map_err(fail)?;
    let ids: Vec<u64> = found.iter().map(|(entry, _)| entry.id).collect();
    prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "spool order: {ids:?}");
    let parked: HashSet<u64> = spool::read_parked(dir)
        .map_err(fail)?
        .iter()
        .map(|entry| entry.id)
        .collect();
    // A park the crash cut short may have made it to the parked log.
    let pending: Vec<u64> = model.pending.keys().copied().collect();
    for id in pending {
        if !ids.contains(&id) && parked.contains(&id) {
            let accepted = model.pending.remove(&id).expect("listed");
            model.parked.insert(id, accepted);
        }
        prop_assert!(
            ids.contains(&id) || parked.contains(&id),
            "entry {id} answered durable is lost"
        );
    }
    check_found(model, &found, clean)?;
    let replayed = read_pending(&spool, Cursor::default(), 3, usize::MAX)?.0;
    let expected: Vec<(u64, Record)> = found
        .iter()
        .map(|(entry, _)| (entry.id, entry.record.clone()))
        .collect();
    prop_assert_eq!(
        replayed,
        expected,
        "the recovered index reads back what recovery found"
    );
    let wanted: Vec<(u64, Location)> = found.iter().map(|(e, l)| (e.id, *l)).collect();
    for ((entry, _), read) in found.iter().zip(spool.read(&wanted)) {
        prop_assert_eq!(&read.map_err(fail)?, &entry.record, "read back by location");
    }
    for id in model.parked.keys() {
        prop_assert!(parked.contains(id), "parked entry {id} lost");
    }
    prop_assert_eq!(spool.pending(), found.len() as u64);
    prop_assert!(spool.used_bytes() <= spool.cap_bytes());
    for (entry, _) in &found {
        let accepted = model
            .delivered
            .remove(&entry.id)
            .or_else(|| model.parked.get(&entry.id).copied());
        if let Some(accepted) = accepted {
            model.pending.insert(entry.id, accepted);
        }
    }
    Ok(spool)
}

/// Checks each entry the spool found against the model: appended, intact,
/// and in order per key. An append answered with an error at a crash may
/// come back: it was written, then, and is taken for delivered.
fn check_found(
    model: &mut Model,
    found: &[(SpoolEntry, Location)],
    clean: bool,
) -> Result<(), TestCaseError> {
    let mut last_per_key: BTreeMap<u8, u64> = BTreeMap::new();
    for (entry, _) in found {
        let accepted = model
            .pending
            .get(&entry.id)
            .or_else(|| model.delivered.get(&entry.id))
            .or_else(|| model.parked.get(&entry.id))
            .copied()
            .or_else(|| {
                let at = model
                    .unanswered
                    .iter()
                    .position(|a| record(*a) == entry.record)?;
                let accepted = model.unanswered.remove(at);
                model.delivered.insert(entry.id, accepted);
                Some(accepted)
            });
        let Some(accepted) = accepted else {
            return Err(fail(format!("entry {} was never appended", entry.id)));
        };
        if clean {
            prop_assert!(
                model.pending.contains_key(&entry.id),
                "entry {} was delivered before a clean stop, yet comes back",
                entry.id
            );
        }
        prop_assert_eq!(
            &entry.record,
            &record(accepted),
            "entry {} intact",
            entry.id
        );
        if let Some(last) = last_per_key.insert(accepted.key, accepted.sequence) {
            prop_assert!(
                last < accepted.sequence,
                "key {} out of order",
                accepted.key
            );
        }
    }
    Ok(())
}

/// What the power loss after a crash leaves: each file cut back to a
/// random length between what was fsync'd and what was written.
fn lose_unsynced(
    dir: &Path,
    plan: &CrashPlan,
    mut seed: u64,
    stray_tmp: bool,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let len = std::fs::metadata(&path)?.len();
        let synced = plan.synced_len(&path);
        if len > synced {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let kept = synced + (seed >> 33) % (len - synced + 1);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(kept)?;
        }
    }
    if stray_tmp {
        std::fs::write(dir.join("high_water.tmp"), b"torn")?;
    }
    Ok(())
}

/// Opens the spool with a fresh crash plan (reopen's checks included).
fn open_planned(
    dir: &Path,
    model: &mut Model,
    clean: bool,
) -> Result<(Spool, Arc<CrashPlan>), TestCaseError> {
    let spool = reopen(dir, model, clean)?;
    drop(spool);
    let plan = CrashPlan::new(dir).map_err(fail)?;
    let fs = Arc::new(CrashFs(Arc::clone(&plan)));
    let (spool, _) = Spool::open_in(settings(dir), fs, |_, _| {}).map_err(fail)?;
    Ok((spool, plan))
}

/// Reads pending entries from `from` in windows of `window`, following the
/// cursor, until `max` are read or none are left; and where it stopped.
fn read_pending(
    spool: &Spool,
    mut from: Cursor,
    window: usize,
    max: usize,
) -> Result<(Vec<(u64, Record)>, Cursor), TestCaseError> {
    let mut entries = Vec::new();
    while entries.len() < max {
        let limits = ReadLimits {
            entries: window.min(max - entries.len()),
            bytes: u64::MAX,
        };
        let read = spool.read_pending(from, limits).map_err(fail)?;
        from = read.end;
        if read.entries.is_empty() {
            break;
        }
        entries.extend(read.entries.into_iter().map(|e| (e.id, e.record)));
    }
    Ok((entries, from))
}

/// The replay's view matches the model: every pending entry, in order.
fn check_replay_view(spool: &Spool, model: &Model) -> Result<(), TestCaseError> {
    let (read, _) = read_pending(spool, Cursor::default(), 4, usize::MAX)?;
    let ids: Vec<u64> = read.iter().map(|(id, _)| *id).collect();
    let expected: Vec<u64> = model.pending.keys().copied().collect();
    prop_assert_eq!(ids, expected, "the index's pending entries");
    Ok(())
}

/// The replay takes the next `take` entries from its cursor: they must be
/// the model's first pending ones (nothing before the cursor is left), and
/// it delivers them.
fn replay(
    spool: &Spool,
    model: &mut Model,
    cursor: &mut Cursor,
    take: u8,
) -> Result<(), TestCaseError> {
    let (read, end) = read_pending(spool, *cursor, 2, usize::from(take))?;
    let expected: Vec<u64> = model
        .pending
        .keys()
        .take(usize::from(take))
        .copied()
        .collect();
    let ids: Vec<u64> = read.iter().map(|(id, _)| *id).collect();
    prop_assert_eq!(&ids, &expected, "the replay skipped or repeated an entry");
    for (id, record) in read {
        let accepted = model.pending.remove(&id).expect("pending");
        prop_assert_eq!(record, self::record(accepted));
        spool.mark_delivered(id);
        model.delivered.insert(id, accepted);
    }
    *cursor = end;
    Ok(())
}

/// Appends a record with the next sequence number of its key.
async fn append(
    spool: &Spool,
    plan: &CrashPlan,
    model: &mut Model,
    key: u8,
    size: u16,
) -> Result<(), TestCaseError> {
    let accepted = Accepted {
        key,
        sequence: model.next_sequence,
        size,
    };
    model.next_sequence += 1;
    match spool.append(record(accepted)).await {
        Ok(appended) => {
            prop_assert!(
                model.issued.insert(appended.id),
                "id {} reused",
                appended.id
            );
            model.pending.insert(appended.id, accepted);
        }
        Err(SpoolError::Full { .. }) => {}
        Err(_) if plan.crashed() => model.unanswered.push(accepted),
        Err(error) => return Err(fail(error)),
    }
    Ok(())
}

/// Parks a pending entry, as the delivery does when Kafka refuses it for good.
async fn refuse(
    spool: &Spool,
    plan: &CrashPlan,
    model: &mut Model,
    pick: u16,
) -> Result<(), TestCaseError> {
    let Some(id) = model.pick(pick) else {
        return Ok(());
    };
    let accepted = model.pending[&id];
    match spool
        .park(Some(id), record(accepted), "refused for good")
        .await
    {
        Ok(parked) => {
            prop_assert_eq!(parked, id);
            model.pending.remove(&id);
            model.parked.insert(id, accepted);
        }
        Err(_) if plan.crashed() => {}
        Err(error) => return Err(fail(error)),
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut model = Model::default();
    let (mut spool, mut plan) = open_planned(dir.path(), &mut model, true)?;
    let mut armed: Option<(u64, bool)> = None;
    let mut cursor = Cursor::default();
    for op in ops {
        match op {
            Op::Append { key, size } => append(&spool, &plan, &mut model, key, size).await?,
            Op::Ack { pick } => {
                if let Some(id) = model.pick(pick) {
                    spool.mark_delivered(id);
                    let accepted = model.pending.remove(&id).expect("picked");
                    model.delivered.insert(id, accepted);
                }
            }
            Op::Refuse { pick } => refuse(&spool, &plan, &mut model, pick).await?,
            Op::Replay { take } => replay(&spool, &mut model, &mut cursor, take)?,
            Op::Restart => {
                // A barrier: every command so far has reached the writer.
                let _ = spool.sync().await;
                // Crashed at that very sync: the power loss below follows.
                if !plan.crashed() {
                    drop(spool);
                    armed = None;
                    cursor = Cursor::default();
                    (spool, plan) = open_planned(dir.path(), &mut model, true)?;
                }
            }
            Op::Crash {
                after,
                seed,
                stray_tmp,
            } => {
                if armed.is_none() {
                    plan.arm(u64::from(after));
                    armed = Some((seed, stray_tmp));
                }
            }
        }
        if plan.crashed() {
            CRASHES.fetch_add(1, Ordering::Relaxed);
            let _ = spool.sync().await;
            drop(spool);
            let (seed, stray_tmp) = armed.take().expect("armed before it crashed");
            lose_unsynced(dir.path(), &plan, seed, stray_tmp).map_err(fail)?;
            cursor = Cursor::default();
            (spool, plan) = open_planned(dir.path(), &mut model, false)?;
        } else {
            check_replay_view(&spool, &model)?;
        }
    }
    if armed.is_none() {
        spool.sync().await.map_err(fail)?;
        prop_assert_eq!(spool.pending(), model.pending.len() as u64);
    }
    Ok(())
}

#[test]
fn the_spool_keeps_every_promise_under_random_restarts_and_crashes() {
    let cases = std::env::var("SUPERFONE_SPOOL_MODEL_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        runtime.block_on(run(ops))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    println!(
        "SPOOL-MODEL {{\"cases\": {cases}, \"crashes\": {}}}",
        CRASHES.load(Ordering::Relaxed)
    );
}

/// The spool's filesystem with a crash point before each operation.
mod crash_fs {
    use std::collections::HashMap;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use superfone_bridge::durability::spool::{RealFs, SpoolFile, SpoolFs};

    /// Makes every file operation fail from a chosen one on, as a crash at
    /// that write, fsync, rename or truncation would, and records how much
    /// of each file was fsync'd, so that the test can then tear what a crash
    /// may lose.
    #[derive(Debug, Default)]
    pub(crate) struct CrashPlan {
        /// File operations left before the crash; `None` when not armed.
        remaining: Mutex<Option<u64>>,
        crashed: AtomicBool,
        synced: Mutex<HashMap<PathBuf, u64>>,
    }

    impl CrashPlan {
        /// A plan that takes every file now in `dir` as durable as it is.
        pub(crate) fn new(dir: &Path) -> io::Result<Arc<CrashPlan>> {
            let plan = CrashPlan::default();
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                plan.record_sync(&entry.path(), entry.metadata()?.len());
            }
            Ok(Arc::new(plan))
        }

        /// Crashes at the `after`-th file operation from now (0: the next one).
        pub(crate) fn arm(&self, after: u64) {
            *self.remaining.lock().expect("crash plan lock") = Some(after);
        }

        pub(crate) fn crashed(&self) -> bool {
            self.crashed.load(Ordering::SeqCst)
        }

        /// How much of `path` was fsync'd (0 for a file created since the plan).
        pub(crate) fn synced_len(&self, path: &Path) -> u64 {
            let synced = self.synced.lock().expect("crash plan lock");
            synced.get(path).copied().unwrap_or(0)
        }

        /// Called before each file operation: fails it, and all after it, from
        /// the crash point on.
        fn point(&self) -> io::Result<()> {
            let mut remaining = self.remaining.lock().expect("crash plan lock");
            match remaining.as_mut() {
                _ if self.crashed() => Err(crashed()),
                Some(0) => {
                    self.crashed.store(true, Ordering::SeqCst);
                    Err(crashed())
                }
                Some(left) => {
                    *left -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }

        fn record_sync(&self, path: &Path, len: u64) {
            let mut synced = self.synced.lock().expect("crash plan lock");
            synced.insert(path.to_owned(), len);
        }
    }

    fn crashed() -> io::Error {
        io::Error::other("crashed")
    }

    /// `RealFs` through a `CrashPlan`.
    pub(crate) struct CrashFs(pub(crate) Arc<CrashPlan>);

    struct CrashFile {
        plan: Arc<CrashPlan>,
        path: PathBuf,
        file: Box<dyn SpoolFile>,
    }

    impl SpoolFs for CrashFs {
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>> {
            self.0.point()?;
            Ok(Box::new(CrashFile {
                plan: Arc::clone(&self.0),
                path: path.to_owned(),
                file: RealFs.open_append(path)?,
            }))
        }

        fn replace(
            &self,
            path: &Path,
            write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        ) -> io::Result<()> {
            self.0.point()?;
            RealFs.replace(path, write)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            self.0.point()?;
            RealFs.remove(path)
        }

        /// Fails once crashed, but is no crash point of its own: each
        /// directory fsync follows the creation, rename or deletion it makes
        /// durable, and lost directory entries are not modelled, so a crash
        /// here would leave what a crash at the next operation leaves.
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if self.0.crashed() {
                return Err(crashed());
            }
            RealFs.sync_dir(dir)
        }
    }

    impl CrashFile {
        /// After an fsync that succeeded: what a crash can no longer lose.
        fn record_sync(&self) {
            if let Ok(len) = self.file.size() {
                self.plan.record_sync(&self.path, len);
            }
        }
    }

    impl SpoolFile for CrashFile {
        fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
            self.plan.point()?;
            self.file.write_all(data)
        }

        fn sync_data(&self) -> io::Result<()> {
            self.plan.point()?;
            self.file.sync_data()?;
            self.record_sync();
            Ok(())
        }

        fn sync_all(&self) -> io::Result<()> {
            self.plan.point()?;
            self.file.sync_all()?;
            self.record_sync();
            Ok(())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.plan.point()?;
            self.file.set_len(len)
        }

        fn size(&self) -> io::Result<u64> {
            self.file.size()
        }
    }
}
