//! A model-based test of the spool (issue 10): random sequences of appends,
//! Kafka acknowledgements, permanent refusals (parking), clean restarts and
//! crashes, over segments small enough to rotate every few appends. After
//! every step that reopens the spool, what it holds is checked against a
//! model of what was promised:
//! - every entry answered durable is pending, delivered or parked: never lost;
//! - ids are never reused, across any sequence of restarts and crashes;
//! - per key, pending entries come back in the order they were accepted, and
//!   each reads back from disk intact by the location the spool gave;
//! - what the spool holds is bounded: its byte count stays under the cap and
//!   its pending count matches the model, nothing held twice.
//!
//! A crash is modelled by what it can leave on disk: the appends that were
//! acknowledged were fsync'd, so it may leave a torn, unacknowledged batch
//! at the end of the live segment and of the parked log, lose any suffix of
//! the acks file (never fsync'd on the hot path), and leave a temporary
//! high-water file behind.
//!
//! Cases: `SUPERFONE_SPOOL_MODEL_CASES` (default 2,000, as scripts/test runs
//! it); a soak run sets it higher (README, "Tests").

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use superfone_bridge::kafka::Record;
use superfone_bridge::spool::{self, Location, Spool, SpoolEntry, SpoolError, SpoolSettings};

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
    Restart,
    Crash {
        torn: u16,
        acks_kept: u16,
        stray_tmp: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, 0u16..600).prop_map(|(key, size)| Op::Append { key, size }),
        4 => any::<u16>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<u16>().prop_map(|pick| Op::Refuse { pick }),
        1 => Just(Op::Restart),
        1 => (any::<u16>(), any::<u16>(), any::<bool>())
            .prop_map(|(torn, acks_kept, stray_tmp)| Op::Crash { torn, acks_kept, stray_tmp }),
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
    for id in model.pending.keys() {
        prop_assert!(ids.contains(id), "entry {id} answered durable is lost");
    }
    let mut last_per_key: BTreeMap<u8, u64> = BTreeMap::new();
    for (entry, _) in &found {
        let accepted = model
            .pending
            .get(&entry.id)
            .or_else(|| model.delivered.get(&entry.id))
            .or_else(|| model.parked.get(&entry.id))
            .copied();
        let Some(accepted) = accepted else {
            return Err(fail(format!(
                "entry {} was never answered durable",
                entry.id
            )));
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
    let wanted: Vec<(u64, Location)> = found.iter().map(|(e, l)| (e.id, *l)).collect();
    for ((entry, _), read) in found.iter().zip(spool.read(&wanted)) {
        prop_assert_eq!(&read.map_err(fail)?, &entry.record, "read back by location");
    }
    let parked: HashSet<u64> = spool::read_parked(dir)
        .map_err(fail)?
        .iter()
        .map(|entry| entry.id)
        .collect();
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

/// What a crash may leave on disk beyond what was fsync'd (module docs).
fn crash_leftovers(dir: &Path, torn: u16, acks_kept: u16, stray_tmp: bool) -> std::io::Result<()> {
    let acks = dir.join("acks.log");
    let len = std::fs::metadata(&acks)?.len();
    let kept = if len == 0 {
        0
    } else {
        u64::from(acks_kept) % (len + 1)
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&acks)?
        .set_len(kept)?;
    let mut segments: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    // A torn batch: the start of a frame header claiming a body, then junk.
    let mut tail = vec![0xA5; usize::from(torn % 300)];
    let claimed = tail.len() as u32 + 100;
    if tail.len() >= 8 {
        tail[..4].copy_from_slice(&claimed.to_le_bytes());
    }
    for path in segments
        .last()
        .into_iter()
        .chain([&dir.join(spool::PARKED_FILE)])
    {
        if path.exists() {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)?
                .write_all(&tail)?;
        }
    }
    if stray_tmp {
        std::fs::write(dir.join("high_water.tmp"), b"torn")?;
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut model = Model::default();
    let mut spool = reopen(dir.path(), &mut model, true)?;
    for op in ops {
        match op {
            Op::Append { key, size } => {
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
                    Err(error) => return Err(fail(error)),
                }
            }
            Op::Ack { pick } => {
                if let Some(id) = model.pick(pick) {
                    spool.mark_delivered(id);
                    let accepted = model.pending.remove(&id).expect("picked");
                    model.delivered.insert(id, accepted);
                }
            }
            Op::Refuse { pick } => {
                if let Some(id) = model.pick(pick) {
                    let accepted = model.pending[&id];
                    let parked = spool
                        .park(Some(id), record(accepted), "refused for good")
                        .await
                        .map_err(fail)?;
                    prop_assert_eq!(parked, id);
                    model.pending.remove(&id);
                    model.parked.insert(id, accepted);
                }
            }
            Op::Restart => {
                spool.sync().await.map_err(fail)?;
                drop(spool);
                spool = reopen(dir.path(), &mut model, true)?;
            }
            Op::Crash {
                torn,
                acks_kept,
                stray_tmp,
            } => {
                // A barrier only: every command so far has reached the files.
                spool.sync().await.map_err(fail)?;
                drop(spool);
                crash_leftovers(dir.path(), torn, acks_kept, stray_tmp).map_err(fail)?;
                spool = reopen(dir.path(), &mut model, false)?;
            }
        }
    }
    spool.sync().await.map_err(fail)?;
    prop_assert_eq!(spool.pending(), model.pending.len() as u64);
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
    println!("SPOOL-MODEL {{\"cases\": {cases}}}");
}
