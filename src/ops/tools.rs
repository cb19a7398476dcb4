//! Operator and data-engineer commands around a running bridge:
//! `send` posts sample payloads with the configured auth (smoke tests in any
//! environment); `tail` reads a topic, decodes each record through the schema
//! registry and prints one JSON object per line.

use crate::config::Config;
use crate::pipeline::avro_json;
use crate::pipeline::schema::SchemaSource;
use crate::vocabulary::headers::REPLAYED_FROM_HEADER;
use crate::vocabulary::EventKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Auth(#[from] crate::http::auth::AuthError),
    #[error("no auth secret configured to send with")]
    NoSecret,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use {path} as a CA certificate: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error(transparent)]
    Registry(#[from] crate::pipeline::registry::RegistryError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Routes(#[from] crate::pipeline::route::RouteError),
    #[error(transparent)]
    Schema(#[from] crate::pipeline::schema::SchemaError),
    #[error(transparent)]
    Publish(#[from] crate::durability::kafka::PublishError),
    #[error(transparent)]
    Spool(#[from] crate::durability::spool::SpoolError),
}

/// The ingest URL of the bridge this config describes, seen from this host.
pub fn local_ingest_url(config: &Config) -> String {
    format!(
        "{}://{}{}",
        if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        },
        reachable_locally(config.server.listen),
        config.server.ingest_path
    )
}

/// A listen address as a client on this host reaches it (0.0.0.0 is not a
/// destination).
fn reachable_locally(mut listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip([127, 0, 0, 1].into());
    }
    listen
}

/// How long `healthcheck` waits for the admin listener's answer.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks the admin listener of the bridge this config describes for `path`
/// (`/healthz`: alive; `/readyz`: can make an event durable now) over plain
/// HTTP/1.0, and returns the status line. A container HEALTHCHECK needs no
/// curl in the image for this.
pub fn healthcheck(config: &Config, path: &str) -> Result<String, std::io::Error> {
    use std::io::{BufRead, BufReader};
    let addr = reachable_locally(config.admin.listen);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    Ok(status_line.trim_end().to_owned())
}

/// Posts each file as one notification; prints `{"file","status","response"}`
/// per file. Returns whether every answer was 2xx. `ca_file`: a PEM CA to
/// trust besides the system's (an HTTPS bridge with a private CA).
pub async fn send(
    config: &Config,
    url: &str,
    ca_file: Option<&Path>,
    files: &[PathBuf],
    mut out: impl Write,
) -> Result<bool, ToolError> {
    let secret = crate::http::auth::load_secrets(&config.auth)?
        .into_iter()
        .next()
        .ok_or(ToolError::NoSecret)?;
    let credential = match config.auth.scheme.trim() {
        "" => secret.expose_secret().to_owned(),
        scheme => format!("{scheme} {}", secret.expose_secret()),
    };
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = ca_file {
        let unusable = |reason: String| ToolError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|error| unusable(error.to_string()))?;
        let ca =
            reqwest::Certificate::from_pem(&pem).map_err(|error| unusable(error.to_string()))?;
        client = client.add_root_certificate(ca);
    }
    let client = client.build().map_err(|source| ToolError::Http {
        url: url.to_owned(),
        source,
    })?;
    let mut all_accepted = true;
    for file in files {
        let body = std::fs::read(file).map_err(|source| ToolError::Read {
            path: file.clone(),
            source,
        })?;
        let response = client
            .post(url)
            .header(config.auth.header.as_str(), credential.as_str())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|source| ToolError::Http {
                url: url.to_owned(),
                source,
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        all_accepted &= status.is_success();
        writeln!(
            out,
            "{}",
            json!({"file": file.display().to_string(), "status": status.as_u16(), "response": answer})
        )?;
    }
    Ok(all_accepted)
}

/// What `tail` reads and when it stops.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// An event name (`ALL_CALLS`), `dead_letter`, or a topic name.
    pub target: String,
    pub from_beginning: bool,
    /// Stop after this many records.
    pub max: Option<usize>,
    /// Stop after this long without a record.
    pub idle_exit: Option<Duration>,
}

pub fn resolve_topic(config: &Config, target: &str) -> String {
    if let Some(kind) = EventKind::from_name(&target.to_ascii_uppercase()) {
        config.topics.topic_for(kind)
    } else if target.eq_ignore_ascii_case("dead_letter") {
        config.topics.dead_letter_topic()
    } else {
        target.to_owned()
    }
}

/// A consumer reading one topic from the given start, all partitions assigned.
fn topic_consumer(
    config: &Config,
    topic: &str,
    group_id: &str,
    start: Offset,
) -> Result<StreamConsumer, ToolError> {
    let mut client_config = ClientConfig::new();
    for (key, value) in &config.kafka.options {
        client_config.set(key, value);
    }
    let consumer: StreamConsumer = client_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ToolError::NoSuchTopic(topic.to_owned()));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn header<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// What `dead-letter replay` reads.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Start at the oldest dead letter instead of after the last replayed one.
    pub from_beginning: bool,
    pub max: Option<usize>,
    /// Stop after this long without a dead letter.
    pub idle_exit: Duration,
}

/// Consumer group whose committed offsets remember how far replay got.
pub const REPLAY_GROUP: &str = "superfone-bridge-dead-letter-replay";

/// Re-submits dead letters through the conversion path with the current
/// schemas (after a schema fix), keeping their original group id and
/// received-at. Records that still do not convert stay where they are.
/// Prints one JSON line per dead letter; returns (replayed, still invalid).
pub async fn replay_dead_letters(
    config: &Config,
    options: ReplayOptions,
    mut out: impl Write,
) -> Result<(usize, usize), ToolError> {
    use crate::pipeline::event;
    use crate::vocabulary::headers::{GROUP_ID_HEADER, RECEIVED_AT_HEADER};
    use rdkafka::consumer::CommitMode;

    let routes = crate::pipeline::route::event_routes(config).await?;
    let publisher =
        crate::durability::kafka::Publisher::new(&config.kafka, config.max_record_bytes())?;
    let topic = config.topics.dead_letter_topic();
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::Stored
    };
    let consumer = topic_consumer(config, &topic, REPLAY_GROUP, start)?;
    let (mut replayed, mut still_invalid) = (0, 0);
    while options.max.is_none_or(|max| replayed + still_invalid < max) {
        let message = match tokio::time::timeout(options.idle_exit, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => break,
        };
        let body = message.payload().unwrap_or_default();
        let origin = json!({"topic": message.topic(), "partition": message.partition(), "offset": message.offset()});
        let group_id = header(&message, GROUP_ID_HEADER)
            .unwrap_or_default()
            .to_owned();
        let received_at = header(&message, RECEIVED_AT_HEADER)
            .unwrap_or_default()
            .to_owned();
        let converted = serde_json::from_slice::<Value>(body)
            .map_err(|error| error.to_string())
            .and_then(|parsed| {
                let kind = event::dispatch(&parsed).map_err(|error| error.to_string())?;
                let object = parsed.as_object().expect("dispatch accepted an object");
                let mut record = routes[kind as usize]
                    .record(object, &group_id, &received_at)
                    .map_err(|error| error.to_string())?;
                record.headers.push((
                    REPLAYED_FROM_HEADER.into(),
                    format!(
                        "{}/{}/{}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ),
                ));
                Ok((kind, record))
            });
        let line = match converted {
            Ok((kind, record)) => {
                let delivered = publisher.publish(&record).await?;
                replayed += 1;
                json!({"status": "replayed", "event": kind.as_str(), "topic": record.topic,
                       "partition": delivered.partition, "offset": delivered.offset,
                       "group_id": group_id, "dead_letter": origin})
            }
            Err(error) => {
                still_invalid += 1;
                json!({"status": "still_invalid", "error": error, "group_id": group_id, "dead_letter": origin})
            }
        };
        writeln!(out, "{line}")?;
        let mut position = TopicPartitionList::new();
        position.add_partition_offset(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset() + 1),
        )?;
        consumer.commit(&position, CommitMode::Sync)?;
    }
    Ok((replayed, still_invalid))
}

/// Prints the records of a topic as JSON lines; returns how many.
pub async fn tail(
    config: &Config,
    options: TailOptions,
    mut out: impl Write,
) -> Result<usize, ToolError> {
    let topic = resolve_topic(config, &options.target);
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let group_id = format!("superfone-bridge-tail-{}", uuid::Uuid::now_v7());
    let consumer = topic_consumer(config, &topic, &group_id, start)?;
    let decoder = AvroDecoder::new(crate::pipeline::registry::settings(&config.registry)?);
    let mut count = 0;
    while options.max.is_none_or(|max| count < max) {
        let message = match options.idle_exit {
            Some(idle) => match tokio::time::timeout(idle, consumer.recv()).await {
                Ok(message) => message?,
                Err(_) => break,
            },
            None => consumer.recv().await?,
        };
        let payload = message.payload().unwrap_or_default();
        let value = if payload.len() >= 5 && payload[0] == 0 {
            match decoder.decode(Some(payload)).await {
                Ok(decoded) => avro_json::to_json(&decoded.value),
                Err(error) => json!({"undecodable": error.to_string()}),
            }
        } else {
            serde_json::from_slice(payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
        };
        let headers: serde_json::Map<String, Value> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            Value::String(
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "key": key,
            "headers": headers,
            "value": value,
        });
        writeln!(out, "{line}")?;
        out.flush()?;
        count += 1;
    }
    Ok(count)
}

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
    use crate::vocabulary::headers::{EVENT_HEADER, GROUP_ID_HEADER};
    use crate::vocabulary::headers::{PARKED_AT_HEADER, PARKED_REASON_HEADER};
    use base64::Engine;
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
    use crate::pipeline::registry::SchemaIds;
    use crate::vocabulary::headers::SCHEMA_PENDING_HEADER;
    use crate::vocabulary::headers::{PARKED_AT_HEADER, PARKED_REASON_HEADER};
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
            Some(ids) => ids
                .stamp(&mut record)
                .map_err(|unstamped| format!("{unstamped:?}")),
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
