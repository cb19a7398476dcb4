//! `spool parked list | export | retry`: the records Kafka refused for good,
//! kept in the spool's parked log so they block nothing.

use crate::config::Config;
use crate::ops::tools::ToolError;
use crate::pipeline::registry::{self, SchemaIds};
use crate::pipeline::schema::SchemaSource;
use crate::vocabulary::headers::{
    EVENT_HEADER, GROUP_ID_HEADER, PARKED_AT_HEADER, PARKED_REASON_HEADER, SCHEMA_PENDING_HEADER,
};
use crate::vocabulary::Record;
use base64::Engine;
use serde_json::json;
use std::io::Write;

/// How `spool parked` prints a parked record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedFormat {
    /// One line each: where it was going, why it was parked, its size.
    List,
    /// Everything, the payload in base64: enough to re-produce it by hand.
    Export,
}

/// Prints the spool's parked records (records Kafka refused for good) as
/// JSON lines; reads the files only, so it is safe beside a running bridge.
/// Returns how many there are.
pub fn parked(
    config: &Config,
    format: ParkedFormat,
    mut out: impl Write,
) -> Result<usize, ToolError> {
    let entries = crate::durability::spool::read_parked(&config.spool.dir)?;
    for entry in &entries {
        let header = |name: &str| entry.record.header(name);
        let mut line = json!({
            "spool_id": entry.id,
            "topic": entry.record.topic,
            "key": entry.record.key,
            "event": header(EVENT_HEADER),
            "group_id": header(GROUP_ID_HEADER),
            "reason": header(PARKED_REASON_HEADER),
            "parked_at": header(PARKED_AT_HEADER),
            "bytes": entry.record.payload.len(),
        });
        if format == ParkedFormat::Export {
            line["headers"] = json!(entry.record.headers);
            line["payload_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&entry.record.payload));
        }
        writeln!(out, "{line}")?;
    }
    Ok(entries.len())
}

/// Writes its registry id into a record that waits for one: the current
/// schema's, or, for a record the version before `absent_fields` spooled,
/// that earlier schema's (registered again under the subject if need be).
async fn stamp(ids: &SchemaIds, record: &mut Record) -> Result<(), String> {
    let stamped = match ids.earlier_version_id(record).await {
        Ok(Some(id)) => registry::stamp_with(record, id),
        Ok(None) => ids.stamp(record),
        Err(error) => return Err(error.to_string()),
    };
    stamped.map_err(|unstamped| format!("{unstamped:?}"))
}

/// Re-publishes parked records (all, or those in `only`) once the cause is
/// fixed (a topic's limit raised, an ACL granted, a schema accepted): their
/// parked headers removed, stamped with their registry id if they still
/// wait for one, sent with the bridge's producer settings. Each one Kafka
/// acknowledges is marked retried (fsync'd) and no longer listed. Prints a
/// JSON line per record; returns (published, failed).
pub async fn retry_parked(
    config: &Config,
    only: &[u64],
    mut out: impl Write,
) -> Result<(usize, usize), ToolError> {
    let entries: Vec<_> = crate::durability::spool::read_parked(&config.spool.dir)?
        .into_iter()
        .filter(|entry| only.is_empty() || only.contains(&entry.id))
        .collect();
    let waiting_for_ids = entries
        .iter()
        .any(|entry| entry.record.header(SCHEMA_PENDING_HEADER).is_some());
    let schema_ids = if waiting_for_ids {
        let schemas = crate::pipeline::schema::load_all(&SchemaSource::of(&config.registry))?;
        let ids = SchemaIds::new(
            &config.registry,
            &config.topics,
            &schemas,
            Some(&config.spool.dir),
        );
        ids.register_pending().await?;
        Some(ids)
    } else {
        None
    };
    let publisher =
        crate::durability::kafka::Publisher::new(&config.kafka, config.max_record_bytes())?;
    let (mut published, mut failed) = (0, 0);
    for entry in entries {
        let mut record = entry.record;
        record
            .headers
            .retain(|(name, _)| name != PARKED_REASON_HEADER && name != PARKED_AT_HEADER);
        let stamped = match &schema_ids {
            Some(ids) => stamp(ids, &mut record).await,
            None => Ok(()),
        };
        let result = match stamped {
            Ok(()) => publisher
                .publish(&record)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error),
        };
        let line = match result {
            Ok(delivered) => {
                crate::durability::spool::mark_retried(&config.spool.dir, entry.id)?;
                published += 1;
                json!({"spool_id": entry.id, "status": "published", "topic": record.topic,
                       "partition": delivered.partition, "offset": delivered.offset})
            }
            Err(error) => {
                failed += 1;
                json!({"spool_id": entry.id, "status": "failed", "topic": record.topic, "error": error})
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok((published, failed))
}
