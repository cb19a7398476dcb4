//! A full spool without posting it over HTTP: the records the bridge would
//! have spooled for the same events, written by the bridge's own spool
//! writer, so the files are in the real on-disk format whatever that format
//! becomes.
//!
//! The bridge's public API it uses, and nothing else of the spool:
//! `pipeline::route::event_routes` and `EventRoute::record` (the record of
//! one event, as a delivery builds it), and `durability::spool::Spool::open`
//! (on an empty directory, visiting nothing), `Spool::append`,
//! `Spool::used_bytes`, `Spool::sync` with `SpoolSettings`.

use crate::load::group_id;
use crate::payloads::Payloads;
use anyhow::Context;
use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use superfone_bridge::config::Config;
use superfone_bridge::durability::spool::{Spool, SpoolError, SpoolSettings};
use superfone_bridge::pipeline::event;
use superfone_bridge::pipeline::route::{self, EventRoute};
use superfone_bridge::vocabulary::Record;

/// Appends in flight at once: the writer covers every append waiting when
/// it wakes with one fsync, so this many share one.
const APPENDS_IN_FLIGHT: usize = 4096;
/// Bytes an append in flight is assumed to add (a frame is about 600).
const IN_FLIGHT_ESTIMATE: u64 = 2048;

/// How much to write.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Entries(u64),
    /// Until the segment files take this many bytes.
    Bytes(u64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Filled {
    pub entries: u64,
    /// Segment bytes on disk, as the spool counts them.
    pub spool_bytes: u64,
    /// Request bodies the entries were made from.
    pub body_bytes: u64,
    /// Distinct Kafka keys (leads, plus events keyed by another field).
    pub keys: usize,
    pub elapsed_s: f64,
}

/// Writes events `0, 1, ...` (`payloads`, group id `<run>-<phase>-<seq>`)
/// into the empty spool `config.spool` names, as their records.
pub async fn fill(
    config: &Config,
    payloads: &Payloads,
    run: &str,
    phase: &str,
    amount: Amount,
) -> anyhow::Result<Filled> {
    let routes = route::event_routes(config)
        .await
        .context("the routes (the registry must be up)")?;
    let settings = SpoolSettings {
        dir: config.spool.dir.clone(),
        max_bytes: config.spool.max_bytes,
        segment_bytes: config.spool.segment_bytes,
    };
    let mut found = 0u64;
    let (spool, _) = Spool::open(settings, |_, _| found += 1)?;
    anyhow::ensure!(found == 0, "{} is not empty", config.spool.dir.display());
    let received_at =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let started = Instant::now();
    let mut keys = HashSet::new();
    let (mut entries, mut body_bytes) = (0u64, 0u64);
    let mut appending: FuturesOrdered<_> = FuturesOrdered::new();
    let mut reported = Instant::now();
    loop {
        let enough = match amount {
            Amount::Entries(count) => entries >= count,
            // Appends still in flight count at a generous size, so the last
            // ones cannot overshoot the target into the cap.
            Amount::Bytes(bytes) => {
                spool.used_bytes() + appending.len() as u64 * IN_FLIGHT_ESTIMATE >= bytes
            }
        };
        if enough || appending.len() >= APPENDS_IN_FLIGHT {
            match appending.next().await {
                Some(appended) => {
                    let appended: Result<_, SpoolError> = appended;
                    appended.context("appending to the spool")?;
                    continue;
                }
                None if enough => break,
                None => {}
            }
        }
        let seq = entries;
        let body = payloads.body(seq);
        body_bytes += body.len() as u64;
        let record = record_of(&routes, &body, &group_id(run, phase, seq), &received_at)?;
        keys.insert(record.key.clone());
        let handle = spool.clone();
        appending.push_back(async move { handle.append(record).await });
        entries += 1;
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[bench]   {entries} entries, {} MiB",
                spool.used_bytes() >> 20
            );
            reported = Instant::now();
        }
    }
    spool.sync().await?;
    let filled = Filled {
        entries,
        spool_bytes: spool.used_bytes(),
        body_bytes,
        keys: keys.len(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    drop(spool);
    Ok(filled)
}

/// The record the bridge builds for one event body.
fn record_of(
    routes: &[EventRoute],
    body: &[u8],
    group_id: &str,
    received_at: &str,
) -> anyhow::Result<Record> {
    let parsed: serde_json::Value = serde_json::from_slice(body)?;
    let kind = event::dispatch(&parsed)?;
    let object = parsed.as_object().context("an event is an object")?;
    Ok(routes[kind as usize].record(object, group_id, received_at)?)
}
