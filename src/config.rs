//! Typed configuration: defaults, then a TOML file, then `SUPERFONE_BRIDGE_*`
//! environment overrides (`__` separates levels, e.g.
//! `SUPERFONE_BRIDGE_KAFKA__BROKERS`). Every key and its default is documented
//! here and in `config/superfone-bridge.example.toml`.
//!
//! Secrets are deliberately not config keys: the auth secrets and the registry
//! password are read from an environment variable or a file (see `auth`), so a
//! config file or a `check-config` dump never holds one.

use crate::vocabulary::{EventKind, MAX_SPOOL_FRAME_BYTES, RECORD_OVERHEAD_BYTES};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds, DurationSeconds};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SUPERFONE_BRIDGE_";

/// The variable naming the config file (as `--config` does). It carries the
/// overrides' prefix but is no key, so the overrides leave it out.
pub const CONFIG_FILE_ENV: &str = "SUPERFONE_BRIDGE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read kafka.options_dir entry {0}: {1}")]
    OptionsFile(PathBuf, #[source] std::io::Error),
}

/// The whole configuration, one section per table of the TOML file. Every
/// duration is a `Duration` kept under its key's unit: `*_ms` keys are whole
/// milliseconds, `dedup.window_secs` whole seconds, as integers in TOML and
/// in the environment alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the public ingest listener.
    pub server: ServerConfig,
    /// `[auth]`: how requests prove they come from Superfone.
    pub auth: AuthConfig,
    /// `[ingest]`: what of a request, besides its body, reaches the record.
    pub ingest: IngestConfig,
    /// `[kafka]`: the producer and the topics it creates.
    pub kafka: KafkaConfig,
    /// `[topics]`: topic names.
    pub topics: TopicsConfig,
    /// `[registry]`: the schema registry.
    pub registry: RegistryConfig,
    /// `[delivery]`: answer deadlines and connection limits.
    pub delivery: DeliveryConfig,
    /// `[spool]`: the local durable spool.
    pub spool: SpoolConfig,
    /// `[dedup]`: duplicate suppression.
    pub dedup: DedupConfig,
    /// `[admin]`: the metrics, health and status listener.
    pub admin: AdminConfig,
    /// `[recordings]`: copying call recordings to the user's own storage.
    pub recordings: RecordingsConfig,
    /// `[tracing]`: OpenTelemetry trace export.
    pub tracing: TracingConfig,
    /// `[log]`: log format and filter.
    pub log: LogConfig,
}

/// OpenTelemetry trace export. Each key overrides the standard variable named
/// in its comment; unset everywhere means no export (trace ids are still made).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP collector base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g. http://jaeger:4318.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`; default http/protobuf).
    pub protocol: Option<String>,
    /// `service.name` (`OTEL_SERVICE_NAME`; default superfone-bridge).
    pub service_name: Option<String>,
    /// always_on, always_off, traceidratio, parentbased_* (`OTEL_TRACES_SAMPLER`;
    /// default parentbased_always_on).
    pub sampler: Option<String>,
    /// Ratio for the traceidratio samplers (`OTEL_TRACES_SAMPLER_ARG`).
    pub sampler_ratio: Option<f64>,
}

/// The admin listener: /metrics, /healthz, /readyz, /status. Loopback by
/// default, so a bridge run on a plain host does not publish its metrics
/// and status; the container image listens on all interfaces (probes), and
/// the chart keeps the port off the public Service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Time Kafka gets to acknowledge a record: well under Superfone's ~5 s
/// guidance for answering a notification.
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_millis(2_000);
/// Time a body, and a connection's first request, get to arrive: the
/// bridge's own choice (docs/delivery-guarantees.md, docs/http-contract.md).
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Time a connection may idle: the bridge's own choice
/// (docs/delivery-guarantees.md).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(30_000);

/// When to answer, and how much work to take on.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Time Kafka gets to acknowledge a record before it is spooled instead
    /// (answer 202). Well under Superfone's ~5 s guidance.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub ack_deadline_ms: Duration,
    /// A request body must arrive within this time (slow senders get 408).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub body_read_timeout_ms: Duration,
    /// A connection's first request, and on HTTP/1 every request's headers,
    /// must arrive within this time (slow-loris and silent-socket guard).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub header_read_timeout_ms: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2
    /// too; on HTTP/1 the header-read timeout already bounds keep-alive idling).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub idle_timeout_ms: Duration,
    /// Open connections at most; when all are taken, the connection idle the
    /// longest is closed to make room for a new one.
    pub max_connections: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_deadline_ms: DEFAULT_ACK_DEADLINE,
            body_read_timeout_ms: DEFAULT_READ_TIMEOUT,
            header_read_timeout_ms: DEFAULT_READ_TIMEOUT,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT,
            max_connections: 2_048,
        }
    }
}

/// Time a stopping bridge may spend sending the spool to Kafka: with the
/// preStop sleep (5 s), the request drain (20 s) and the final flush (10 s)
/// it stays within the chart's 60 s `terminationGracePeriodSeconds`
/// (helm/superfone-bridge/values.yaml).
const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_millis(15_000);

/// The local durable spool (mount a persistent volume here in Kubernetes).
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool's segment files (and the schema ids kept from
    /// the last run); one bridge at a time may hold it.
    pub dir: PathBuf,
    /// Disk the spool may use; beyond it events are refused with 503.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// On SIGTERM, how long the bridge may spend sending what is left in the
    /// spool to Kafka (when Kafka is reachable) before it exits, so a pod
    /// scaled in strands no event on its volume; 0 leaves the spool for the
    /// next start.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub shutdown_drain_ms: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
            shutdown_drain_ms: DEFAULT_SHUTDOWN_DRAIN,
        }
    }
}

/// How long an entity's latest event is remembered: the bridge's own choice,
/// ten minutes (docs/delivery-guarantees.md).
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// Duplicate suppression (Superfone may deliver an event twice).
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Answer a repeat of an entity's latest event from its first delivery
    /// instead of publishing it again.
    pub enabled: bool,
    /// How long the latest delivered event of an entity is remembered
    /// (whole seconds).
    #[serde_as(as = "DurationSeconds<u64>")]
    pub window_secs: Duration,
    /// Entities (leads, tasks, calls) remembered at most (bounds memory; about 200 bytes each).
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            window_secs: DEFAULT_DEDUP_WINDOW,
            max_entries: 100_000,
        }
    }
}

/// Copying every call recording into the user's own object storage before
/// its pre-signed link expires (7 days, payload reference), with a pointer
/// record on `<prefix>recording_copies`. The link comes from a request body:
/// only https, only `allowed_hosts`, only public addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingsConfig {
    /// Run the copier inside `serve` (`superfone-bridge recordings run`
    /// runs it alone).
    pub enabled: bool,
    /// Where copies go: `file:///dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`. Credentials come
    /// the way each cloud's SDK expects (environment, web identity / IRSA
    /// token, mounted file), never from this file.
    pub store_url: Option<String>,
    /// Hosts a recording may be downloaded from: exact names, or
    /// `*.domain` for any subdomain. In the environment, separated by commas.
    #[serde(deserialize_with = "comma_separated")]
    pub allowed_hosts: Vec<String>,
    /// Let links resolve to loopback and private addresses: for tests and
    /// `scripts/dev` only (an SSRF hole anywhere else).
    pub allow_private_networks: bool,
    /// Let links use plain http: for tests and `scripts/dev` only.
    pub allow_plain_http: bool,
    /// Largest recording copied; a larger one ends `refused`.
    pub max_bytes: u64,
    /// Copies running at once.
    pub concurrency: usize,
    /// Recordings read and not yet finished (copying or waiting to retry),
    /// at most: past it the copier pauses its partitions until one ends, so
    /// a long outage of the store cannot fill memory with jobs.
    pub max_pending: usize,
    /// The Kafka consumer group of the copiers: every replica joins it, and
    /// Kafka spreads the recording topic's partitions over them.
    pub group_id: String,
}

/// Copies at once, at most: 64 x 15 MiB of upload parts is already 960 MiB.
const MAX_RECORDING_CONCURRENCY: usize = 64;

/// The vendor's recording links are S3 pre-signed URLs
/// (`https://recordings.s3.amazonaws.com/…?X-Amz-Signature=…`).
const DEFAULT_RECORDING_HOSTS: &str = "*.amazonaws.com";
/// An hour-long call in WAV is about 600 MiB; twice that and more is not a
/// call recording.
const DEFAULT_RECORDING_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Default for RecordingsConfig {
    fn default() -> Self {
        RecordingsConfig {
            enabled: false,
            store_url: None,
            allowed_hosts: vec![DEFAULT_RECORDING_HOSTS.into()],
            allow_private_networks: false,
            allow_plain_http: false,
            max_bytes: DEFAULT_RECORDING_MAX_BYTES,
            concurrency: 4,
            max_pending: 1024,
            group_id: "superfone-bridge-recordings".into(),
        }
    }
}

impl RecordingsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        if self.enabled && self.store_url.is_none() {
            return invalid("recordings.enabled needs recordings.store_url");
        }
        // Each copy running holds up to 15 MiB of upload parts.
        if self.concurrency > MAX_RECORDING_CONCURRENCY {
            return Err(ConfigError::Invalid(format!(
                "recordings.concurrency is at most {MAX_RECORDING_CONCURRENCY} (each copy holds up to 15 MiB)"
            )));
        }
        if self.concurrency == 0 || self.max_bytes == 0 || self.max_pending == 0 {
            return invalid(
                "recordings.concurrency, recordings.max_bytes and recordings.max_pending must be positive",
            );
        }
        if self.allowed_hosts.is_empty() {
            return invalid("recordings.allowed_hosts must name at least one host");
        }
        Ok(())
    }
}

/// A list from TOML (`["a", "b"]`) or from one environment variable (`a,b`).
fn comma_separated<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Text(String),
        Items(Vec<String>),
    }
    Ok(match List::deserialize(input)? {
        List::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Items(items) => items,
    })
}

/// How long shutdown waits for requests in flight: the bridge's own choice,
/// counted into the chart's `terminationGracePeriodSeconds`
/// (helm/superfone-bridge/values.yaml).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_millis(20_000);
/// How often the TLS files are checked for a renewal (docs/operations.md).
const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_millis(10_000);

/// The public ingest listener.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the ingest listener binds. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The one path Superfone posts to.
    pub ingest_path: String,
    /// Largest accepted body; larger ones get 413. Superfone payloads are a few KiB.
    pub max_body_bytes: usize,
    /// Body bytes all requests together may hold at once (at least
    /// `max_body_bytes`). A delivery in flight holds about three times its
    /// body; a request that does not fit waits for room before its body is
    /// read, and is answered 503 if none frees within the body-read timeout.
    /// Bodies declared at 64 KiB or less never wait (`crate::http::body`).
    pub max_body_bytes_in_flight: usize,
    /// Request header carrying the delivery's correlation id, if the
    /// notification is configured to send one; else the body's `group_id_ref`,
    /// else a generated UUID v7.
    pub group_id_header: String,
    /// How long shutdown waits for in-flight requests before closing them.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub drain_timeout_ms: Duration,
    /// Threads of the async runtime (HTTP, conversion, delivery reports).
    /// 0: one fewer than the CPUs the process may use, at least one, which
    /// leaves a core to librdkafka's broker threads (`runtime_workers`).
    pub worker_threads: usize,
    /// HTTPS on the ingest listener; absent: plain HTTP (behind a TLS proxy
    /// or ingress).
    pub tls: Option<TlsConfig>,
}

/// HTTPS served by the bridge itself (rustls): HTTP/2 and HTTP/1.1 through
/// ALPN, the files re-read when they change.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate
    /// signed by one of them (mutual TLS, for a proxy in front).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a renewal; a new connection gets
    /// the new certificate, open ones keep theirs.
    #[serde(default = "TlsConfig::default_reload_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub reload_interval_ms: Duration,
}

impl TlsConfig {
    const fn default_reload_interval_ms() -> Duration {
        DEFAULT_TLS_RELOAD_INTERVAL
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ingest_path: "/superfone/events".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_body_bytes_in_flight: 32 * 1024 * 1024,
            group_id_header: "x-superfone-group-id".into(),
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT,
            worker_threads: 0,
            tls: None,
        }
    }
}

/// What a spool frame holds besides its record: the entry id.
const SPOOL_ENTRY_ID_BYTES: usize = 8;

impl ServerConfig {
    /// Every record a body within `max_body_bytes` can become must fit in a
    /// spool frame: one that does not is read back as a torn tail, and the
    /// entries after it in its segment are lost with it.
    fn fits_a_spool_frame(&self) -> Result<(), ConfigError> {
        let largest = MAX_SPOOL_FRAME_BYTES - SPOOL_ENTRY_ID_BYTES - RECORD_OVERHEAD_BYTES;
        if self.max_body_bytes <= largest {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "server.max_body_bytes ({}) is too large for the spool: with up to \
             {RECORD_OVERHEAD_BYTES} bytes of record overhead and its {SPOOL_ENTRY_ID_BYTES}-byte \
             entry id, its records would not fit in a spool frame of at most \
             {MAX_SPOOL_FRAME_BYTES} bytes; set it to {largest} or less",
            self.max_body_bytes
        )))
    }

    /// The runtime's worker threads: `worker_threads`, or for 0 one fewer
    /// than the CPUs available (cgroup quotas included), at least one: the
    /// spare core goes to librdkafka's broker thread, and on 2 cores one
    /// worker cost less CPU per delivery than two at the same rate
    /// (docs/benchmarks/README.md, "What each change bought"). A single worker holds
    /// against a connection flood (`tests/connections.rs` runs with one)
    /// since connections are accepted on a thread of their own
    /// (`crate::http::acceptor`) and a shed is not searched for again until
    /// its permits are back.
    pub fn runtime_workers(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
        cpus.saturating_sub(1).max(1)
    }
}

/// How requests prove they come from Superfone: a static header (the vendor
/// does not sign bodies).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Header that carries the secret.
    pub header: String,
    /// Scheme word before the secret (`Authorization: Bearer <secret>`); empty
    /// means the header value is the secret itself (e.g. `X-Api-Key`).
    pub scheme: String,
    /// Environment variable holding the accepted secrets, separated by commas
    /// or newlines (several, so a secret can be rotated without downtime).
    pub secrets_env: String,
    /// File holding more accepted secrets, one per line (a Kubernetes secret mount).
    pub secrets_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            header: "authorization".into(),
            scheme: "Bearer".into(),
            secrets_env: "SUPERFONE_AUTH_SECRETS".into(),
            secrets_file: None,
        }
    }
}

impl AuthConfig {
    /// Where the accepted secrets are read from, as a person reads it:
    /// `$SUPERFONE_AUTH_SECRETS and /run/secrets/auth`.
    pub fn secret_sources(&self) -> String {
        match &self.secrets_file {
            Some(file) => format!("${} and {}", self.secrets_env, file.display()),
            None => format!("${}", self.secrets_env),
        }
    }
}

/// Request headers that may never be forwarded onto a record, whatever the
/// allow-list says: credentials (the auth header is added from `auth.header`).
/// A record is read by everyone who may read the topic, so a secret there
/// would outlive its rotation.
const NEVER_FORWARDED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// Forwarded headers at most: with `MAX_FORWARDED_NAME_BYTES` names and
/// values cut at 1 KiB (`crate::http::notification`), they take at most
/// about 18 KiB of a record's `RECORD_OVERHEAD_BYTES`.
pub const MAX_FORWARDED_HEADERS: usize = 16;
/// The longest header name that may be forwarded.
pub const MAX_FORWARDED_NAME_BYTES: usize = 64;

/// What of a request, besides its body, is kept on its record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Request headers copied onto the Kafka record as
    /// `superfone-h-<name in lower case>`, e.g. the custom headers a
    /// Superfone notification is configured with. Case does not matter. At
    /// most 16; the auth header, `authorization`, `proxy-authorization`,
    /// `cookie` and `set-cookie` are refused. In the environment, separated
    /// by commas.
    #[serde(deserialize_with = "comma_separated")]
    pub forward_headers: Vec<String>,
}

impl IngestConfig {
    /// Each name a header name, listed once, and no credential among them.
    fn validate(&self, auth_header: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.forward_headers.len() > MAX_FORWARDED_HEADERS {
            return invalid(format!(
                "ingest.forward_headers names {} headers; at most {MAX_FORWARDED_HEADERS} \
                 (each may take 1 KiB of the record)",
                self.forward_headers.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.forward_headers {
            let lower = name.to_ascii_lowercase();
            let valid = hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !valid || name.len() > MAX_FORWARDED_NAME_BYTES {
                return invalid(format!(
                    "ingest.forward_headers: `{name}` is not a header name of at most \
                     {MAX_FORWARDED_NAME_BYTES} bytes"
                ));
            }
            if lower == auth_header.to_ascii_lowercase() {
                return invalid(format!(
                    "ingest.forward_headers may not name `{name}`: it is the auth header \
                     (auth.header), and its secret would be on every record, readable by \
                     every consumer of the topic"
                ));
            }
            if NEVER_FORWARDED.contains(&lower.as_str()) {
                return invalid(format!(
                    "ingest.forward_headers may not name `{name}`: it carries credentials or \
                     session cookies, which would be on every record, readable by every \
                     consumer of the topic"
                ));
            }
            if !seen.insert(lower) {
                return invalid(format!("ingest.forward_headers names `{name}` twice"));
            }
        }
        Ok(())
    }
}

/// `linger.ms`: 1 ms, not librdkafka's 5 (`KafkaConfig::linger_ms` says why).
const DEFAULT_LINGER: Duration = Duration::from_millis(1);
/// `message.timeout.ms`: librdkafka's own 300 s is far beyond a webhook.
const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(10_000);
/// How long start-up waits for broker metadata: the bridge's own choice.
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_millis(10_000);
/// `statistics.interval.ms`: the bridge's own choice (librdkafka's default,
/// 0, sends no statistics, and the queue and RTT metrics would stay empty).
const DEFAULT_STATISTICS_INTERVAL: Duration = Duration::from_millis(5_000);

/// `compression.type`, as librdkafka names the codecs (CONFIGURATION.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4, the default (`KafkaConfig::compression` says why).
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The value librdkafka's `compression.type` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// librdkafka's `partitioner`: how a record's key picks its partition
/// (CONFIGURATION.md). Of the hashing ones, the `_random` variants spread
/// records without a key at random; the others send them all to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// Random distribution, the key ignored.
    Random,
    /// CRC32 hash of the key.
    Consistent,
    /// CRC32 hash of the key (librdkafka's default).
    ConsistentRandom,
    /// Murmur2 hash of the key, compatible with the Java producer.
    Murmur2,
    /// Murmur2 hash of the key: the Java producer's default partitioner,
    /// and the bridge's (`KafkaConfig::partitioner` says why).
    Murmur2Random,
    /// FNV-1a hash of the key.
    Fnv1a,
    /// FNV-1a hash of the key.
    Fnv1aRandom,
}

impl Partitioner {
    /// The value librdkafka's `partitioner` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Random => "random",
            Partitioner::Consistent => "consistent",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::Fnv1aRandom => "fnv1a_random",
        }
    }
}

/// The rdkafka producer. Idempotence and `acks=all` are not configurable: the
/// bridge answers 2xx only for records the broker has durably acknowledged.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd. lz4 costs no CPU
    /// measurable against `none` on records this small, and saves broker
    /// disk and network (docs/benchmarks/README.md, "Producer settings").
    pub compression: Compression,
    /// `linger.ms`: how long a record waits for others to share its batch.
    /// Every delivery waits for its ack before answering, so this is added to
    /// each answer. 1 ms, not librdkafka's 5: half the median answer time at
    /// moderate load for the same throughput, while a burst still shares a
    /// produce request (docs/benchmarks/README.md, "Producer settings").
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub linger_ms: Duration,
    /// `message.timeout.ms`: how long librdkafka keeps trying one record before
    /// the delivery fails (librdkafka's default of 300 s is far beyond a webhook).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub message_timeout_ms: Duration,
    /// `partitioner`: murmur2_random matches the Java client, so a contact key
    /// maps to the same partition whichever client produced it.
    pub partitioner: Partitioner,
    /// Create the event and dead-letter topics at start-up if they are
    /// missing, and again if one is deleted while the bridge runs; sets
    /// librdkafka's `allow.auto.create.topics` to false (overridable in
    /// `options`), so a broker's auto-creation does not win with its defaults.
    pub create_topics: bool,
    /// Partition count for topics the bridge creates.
    pub topic_partitions: i32,
    /// Replication factor for topics the bridge creates; -1 uses the broker's default.
    pub topic_replication_factor: i32,
    /// How long start-up waits for broker metadata before giving up.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub startup_timeout_ms: Duration,
    /// `statistics.interval.ms`: how often librdkafka's queue depth and broker
    /// RTT are sampled into the metrics.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub statistics_interval_ms: Duration,
    /// Raw librdkafka settings passed through as-is (TLS, SASL, tuning).
    /// Values whose key mentions password/secret are redacted by `check-config`.
    pub options: BTreeMap<String, String>,
    /// A directory of librdkafka settings kept out of the config file: one
    /// file per setting, named by its key (`sasl.password`), holding its
    /// value (surrounding whitespace trimmed): a mounted Kubernetes Secret.
    /// Read at start-up; they override `options`, and `check-config` never
    /// shows their values.
    pub options_dir: Option<PathBuf>,
    /// The keys that came from `options_dir`.
    #[serde(skip)]
    pub options_from_dir: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            compression: Compression::Lz4,
            linger_ms: DEFAULT_LINGER,
            message_timeout_ms: DEFAULT_MESSAGE_TIMEOUT,
            partitioner: Partitioner::Murmur2Random,
            create_topics: true,
            topic_partitions: 6,
            topic_replication_factor: -1,
            startup_timeout_ms: DEFAULT_STARTUP_TIMEOUT,
            statistics_interval_ms: DEFAULT_STATISTICS_INTERVAL,
            options: BTreeMap::new(),
            options_dir: None,
            options_from_dir: Vec::new(),
        }
    }
}

impl KafkaConfig {
    /// Merges the settings of `options_dir` into `options`. Hidden entries
    /// (a Secret mount's `..data`) are skipped; a key file that cannot be
    /// read is an error, not a setting silently left out.
    fn read_options_dir(&mut self) -> Result<(), ConfigError> {
        let Some(dir) = &self.options_dir else {
            return Ok(());
        };
        let unreadable =
            |path: &Path, error: std::io::Error| ConfigError::OptionsFile(path.to_owned(), error);
        let entries = std::fs::read_dir(dir).map_err(|error| unreadable(dir, error))?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(|error| unreadable(dir, error))?.path();
            let Some(key) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if key.starts_with('.') || !path.is_file() {
                continue;
            }
            let value = std::fs::read_to_string(&path).map_err(|error| unreadable(&path, error))?;
            found.push((key.to_owned(), value.trim().to_owned()));
        }
        for (key, value) in found {
            self.options.insert(key.clone(), value);
            self.options_from_dir.push(key);
        }
        self.options_from_dir.sort();
        Ok(())
    }
}

/// Topic names: `<prefix><event in lower case>` unless overridden.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Prefix of the default topic names.
    pub prefix: String,
    /// One topic for all ten events (e.g. `superfone.events`), so every
    /// event of a lead is on one partition in the order the bridge received
    /// them. Needs `registry.subject_strategy = "topic_record"`: the ten
    /// schemas cannot share the one subject `<topic>-value`.
    pub single: Option<String>,
    /// Dead-letter topic; default `<prefix>dead_letter`.
    pub dead_letter: Option<String>,
    /// Per-event topic names, keyed by event (e.g. `ALL_CALLS = "calls"`);
    /// they win over `single`.
    pub names: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: "superfone.".into(),
            single: None,
            dead_letter: None,
            names: BTreeMap::new(),
        }
    }
}

impl TopicsConfig {
    pub fn topic_for(&self, kind: EventKind) -> String {
        self.names
            .get(kind.as_str())
            .or(self.single.as_ref())
            .cloned()
            .unwrap_or_else(|| format!("{}{}", self.prefix, kind.slug()))
    }

    /// Where the recording copier's pointer records go.
    pub fn recording_copies_topic(&self) -> String {
        format!("{}recording_copies", self.prefix)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}dead_letter", self.prefix))
    }

    /// Each topic, named once, with the events it carries: ten topics of
    /// one event by default, one of ten with `single`.
    pub fn event_topics(&self) -> BTreeMap<String, Vec<EventKind>> {
        let mut topics: BTreeMap<String, Vec<EventKind>> = BTreeMap::new();
        for kind in EventKind::ALL {
            topics.entry(self.topic_for(kind)).or_default().push(kind);
        }
        topics
    }

    /// Names, topics shared, and the subject strategy they need (the
    /// strategy is `registry.subject_strategy`).
    fn validate(&self, strategy: SubjectStrategy) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        for name in self.names.keys() {
            if EventKind::from_name(name).is_none() {
                return invalid(format!("topics.names has unknown event `{name}`"));
            }
        }
        let event_topics = self.event_topics();
        let all = event_topics
            .keys()
            .cloned()
            .chain([self.dead_letter_topic(), self.recording_copies_topic()]);
        for topic in all {
            let legal = topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if topic.is_empty() || topic.len() > 249 || !legal {
                return invalid(format!(
                    "topic name `{topic}` is not a legal Kafka topic name"
                ));
            }
        }
        for other in [self.dead_letter_topic(), self.recording_copies_topic()] {
            if let Some(kinds) = event_topics.get(&other) {
                return invalid(format!(
                    "topic `{other}` is named for {} and is also the dead-letter or the \
                     recording-copies topic, whose records are no events",
                    kinds[0]
                ));
            }
        }
        let Some((topic, kinds)) = event_topics.iter().find(|(_, kinds)| kinds.len() > 1) else {
            return Ok(());
        };
        let events = kinds
            .iter()
            .map(|kind| kind.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if self.single.is_none() {
            // Without the one-topic mode, a name given twice is a typo more
            // often than a wish, and it would mix events on a topic whose
            // consumers expect one.
            return invalid(format!(
                "topics.names puts {events} on the one topic `{topic}`: one topic for \
                 several events is the one-topic mode, set topics.single (with \
                 registry.subject_strategy = \"topic_record\") if that is meant"
            ));
        }
        if strategy == SubjectStrategy::Topic {
            return invalid(format!(
                "topic `{topic}` carries {events}: under registry.subject_strategy = \"topic\" \
                 their schemas would share the one subject `{topic}-value`, each refused as \
                 incompatible with the other; set registry.subject_strategy = \"topic_record\" \
                 (subjects `{topic}-<record name>`)"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's default TopicNameStrategy).
    Topic,
    /// The record's full name, e.g. `com.superfone.events.AllCalls`
    /// (Confluent's RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>`, e.g.
    /// `superfone.events-com.superfone.events.AllCalls` (Confluent's
    /// TopicRecordNameStrategy): what a topic carrying several events needs.
    TopicRecord,
}

/// How long one registry request may take: the bridge's own choice.
const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The Confluent-compatible schema registry.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the registry.
    pub url: String,
    /// How a topic's schema subject is named.
    pub subject_strategy: SubjectStrategy,
    /// Register the schemas at start-up. When false, the bridge only looks them
    /// up and refuses to start if one is missing (registries managed by CI).
    pub auto_register: bool,
    /// Directory overriding the schemas compiled into the binary.
    pub schemas_dir: Option<PathBuf>,
    /// How long one request to the registry may take.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub timeout_ms: Duration,
    /// Basic-auth user; the password comes from the `password_env` variable.
    pub username: Option<String>,
    /// Environment variable holding the basic-auth password.
    pub password_env: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://127.0.0.1:8081".into(),
            subject_strategy: SubjectStrategy::Topic,
            auto_register: true,
            schemas_dir: None,
            timeout_ms: DEFAULT_REGISTRY_TIMEOUT,
            username: None,
            password_env: "SUPERFONE_REGISTRY_PASSWORD".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for a log pipeline.
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then environment overrides; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let file_variable = CONFIG_FILE_ENV.trim_start_matches(ENV_PREFIX);
        let mut config: Config = figment
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .ignore(&[file_variable])
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        config.kafka.read_options_dir()?;
        Ok(config)
    }

    /// The largest Kafka record an accepted body can become: the body limit
    /// plus room for headers and framing. The producer's `message.max.bytes`
    /// and the created topics' `max.message.bytes` are set to it.
    pub fn max_record_bytes(&self) -> usize {
        self.server.max_body_bytes + RECORD_OVERHEAD_BYTES
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !self.server.ingest_path.starts_with('/') {
            return invalid(format!(
                "server.ingest_path `{}` must start with /",
                self.server.ingest_path
            ));
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes must be positive".into());
        }
        self.server.fits_a_spool_frame()?;
        if self.server.max_body_bytes_in_flight < self.server.max_body_bytes {
            return invalid(format!(
                "server.max_body_bytes_in_flight ({}) must be at least server.max_body_bytes ({})",
                self.server.max_body_bytes_in_flight, self.server.max_body_bytes
            ));
        }
        if hyper::header::HeaderName::from_bytes(self.auth.header.as_bytes()).is_err() {
            return invalid(format!(
                "auth.header `{}` is not a valid header name",
                self.auth.header
            ));
        }
        if hyper::header::HeaderName::from_bytes(self.server.group_id_header.as_bytes()).is_err() {
            return invalid(format!(
                "server.group_id_header `{}` is not a valid header name",
                self.server.group_id_header
            ));
        }
        self.ingest.validate(&self.auth.header)?;
        self.topics.validate(self.registry.subject_strategy)?;
        if self.delivery.ack_deadline_ms.is_zero() || self.delivery.max_connections == 0 {
            return invalid(
                "delivery.ack_deadline_ms and delivery.max_connections must be positive".into(),
            );
        }
        if self.spool.segment_bytes == 0 || self.spool.max_bytes < self.spool.segment_bytes {
            return invalid("spool.max_bytes must be at least spool.segment_bytes (> 0)".into());
        }
        if self.kafka.topic_partitions < 1 {
            return invalid("kafka.topic_partitions must be at least 1".into());
        }
        self.recordings.validate()
    }

    /// The effective configuration as TOML, with pass-through options that look
    /// like credentials redacted. Secrets themselves are never config keys.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.options.iter_mut() {
            let from_dir = self.kafka.options_from_dir.contains(key);
            let key = key.to_ascii_lowercase();
            if from_dir
                || ["password", "secret", "key", "token"]
                    .iter()
                    .any(|word| key.contains(word))
            {
                *value = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|error| format!("# cannot render config: {error}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_name_topics_per_event() {
        let config = Config::default();
        config.validate().unwrap();
        assert!(
            config.admin.listen.ip().is_loopback(),
            "metrics and status are not published by default"
        );
        assert_eq!(
            config.topics.topic_for(EventKind::AllCalls),
            "superfone.all_calls"
        );
        assert_eq!(config.topics.dead_letter_topic(), "superfone.dead_letter");
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn file_and_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(
            &path,
            "[topics]\nprefix = \"acme.\"\n[topics.names]\nALL_CALLS = \"calls\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SUPERFONE_BRIDGE_KAFKA__LINGER_MS", "7");
            let config = Config::load(Some(&path)).unwrap();
            assert_eq!(config.kafka.linger_ms, Duration::from_millis(7));
            assert_eq!(config.topics.topic_for(EventKind::AllCalls), "calls");
            assert_eq!(
                config.topics.topic_for(EventKind::TaskChange),
                "acme.task_change"
            );
            Ok(())
        });
    }

    /// `SUPERFONE_BRIDGE_CONFIG` names the file (`--config`); it is no
    /// config key, though it carries the overrides' prefix.
    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn the_config_file_variable_is_not_read_as_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, "[topics]\nprefix = \"acme.\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SUPERFONE_BRIDGE_CONFIG", path.display());
            let config = Config::load(Some(&path)).unwrap();
            assert_eq!(config.topics.prefix, "acme.");
            Ok(())
        });
    }

    /// Every record an accepted body can become must fit in a spool frame,
    /// or the spool could not read it back.
    #[test]
    fn the_body_limit_leaves_every_record_room_in_a_spool_frame() {
        let largest = 64 * 1024 * 1024 - RECORD_OVERHEAD_BYTES - 8;
        let mut config = Config::default();
        config.server.max_body_bytes = largest;
        config.server.max_body_bytes_in_flight = 2 * largest;
        config.validate().unwrap();
        config.server.max_body_bytes = largest + 1;
        let error = config.validate().unwrap_err().to_string();
        for number in [largest + 1, 64 * 1024 * 1024, largest] {
            assert!(error.contains(&number.to_string()), "{number}: {error}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn recording_hosts_come_comma_separated_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "SUPERFONE_BRIDGE_RECORDINGS__ALLOWED_HOSTS",
                "recordings.example.com, *.amazonaws.com",
            );
            // Only harmless variables: other tests load the config meanwhile.
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.recordings.allowed_hosts,
                ["recordings.example.com", "*.amazonaws.com"]
            );
            assert_eq!(
                config.topics.recording_copies_topic(),
                "superfone.recording_copies"
            );
            Ok(())
        });
    }

    #[test]
    fn enabled_recordings_need_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, "[recordings]\nenabled = true\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("recordings.store_url"), "{error}");
        std::fs::write(
            &path,
            "[recordings]\nenabled = true\nstore_url = \"file:///tmp/copies\"\n",
        )
        .unwrap();
        assert!(Config::load(Some(&path)).unwrap().recordings.enabled);
        for (key, value, why) in [
            ("concurrency", "65", "at most 64"),
            ("concurrency", "0", "must be positive"),
            ("max_pending", "0", "must be positive"),
        ] {
            std::fs::write(&path, format!("[recordings]\n{key} = {value}\n")).unwrap();
            let error = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(error.contains(why), "{key} = {value}: {error}");
        }
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
        std::fs::write(&path, "[topics.names]\nCALL_PARKED = \"x\"\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::load(Some(Path::new("/nope.toml"))),
            Err(ConfigError::MissingFile(_))
        ));
        std::fs::write(
            &path,
            "[server]\nmax_body_bytes = 2048\nmax_body_bytes_in_flight = 1024\n",
        )
        .unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("max_body_bytes_in_flight"), "{error}");
    }

    /// The example file documents every key with its default value.
    #[test]
    fn the_example_file_holds_every_key_with_its_default() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/superfone-bridge.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let example: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        assert_eq!(example, defaults);
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn durations_keep_the_unit_their_key_names_in_the_environment_and_in_the_dump() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SUPERFONE_BRIDGE_DELIVERY__ACK_DEADLINE_MS", "1500");
            jail.set_env("SUPERFONE_BRIDGE_DEDUP__WINDOW_SECS", "45");
            let config = Config::load(None).unwrap();
            assert_eq!(config.delivery.ack_deadline_ms, Duration::from_millis(1500));
            assert_eq!(config.dedup.window_secs, Duration::from_secs(45));
            let shown = config.to_redacted_toml();
            assert!(shown.contains("ack_deadline_ms = 1500\n"), "{shown}");
            assert!(shown.contains("window_secs = 45\n"), "{shown}");
            assert!(shown.contains("linger_ms = 1\n"), "{shown}");
            Ok(())
        });
    }

    /// Invalid values come from files here: a Jail's environment is the
    /// process's, which the tests loading config outside a Jail would see.
    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn an_unknown_codec_or_partitioner_is_refused_naming_the_choices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        let refused = |toml: &str, words: [&str; 4]| {
            std::fs::write(&path, toml).unwrap();
            let error = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(words.iter().all(|word| error.contains(word)), "{error}");
        };
        refused(
            "[kafka]\ncompression = \"brotli\"\n",
            ["brotli", "kafka.compression", "`none`", "`zstd`"],
        );
        refused(
            "[kafka]\npartitioner = \"java\"\n",
            ["java", "kafka.partitioner", "`murmur2_random`", "`fnv1a`"],
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("SUPERFONE_BRIDGE_KAFKA__PARTITIONER", "consistent_random");
            jail.set_env("SUPERFONE_BRIDGE_KAFKA__COMPRESSION", "zstd");
            let config = Config::load(None).unwrap();
            assert_eq!(config.kafka.partitioner, Partitioner::ConsistentRandom);
            assert_eq!(config.kafka.compression, Compression::Zstd);
            Ok(())
        });
    }

    /// The names librdkafka is given are the ones the config file spells.
    #[test]
    fn codec_and_partitioner_names_are_librdkafkas() {
        use Compression as C;
        use Partitioner as P;
        for codec in [C::None, C::Gzip, C::Snappy, C::Lz4, C::Zstd] {
            assert_eq!(serde_json::json!(codec), codec.as_str());
        }
        let partitioners = [
            P::Random,
            P::Consistent,
            P::ConsistentRandom,
            P::Murmur2,
            P::Murmur2Random,
            P::Fnv1a,
            P::Fnv1aRandom,
        ];
        for partitioner in partitioners {
            assert_eq!(serde_json::json!(partitioner), partitioner.as_str());
        }
    }

    /// A record is read by every consumer of its topic: credentials are
    /// never forwarded onto it, whatever their case.
    #[test]
    fn credential_headers_are_never_forwarded() {
        let mut config = Config::default();
        config.ingest.forward_headers = vec!["X-Team".into(), "x-region".into()];
        config.validate().unwrap();
        for name in [
            "Authorization",
            "cookie",
            "Set-Cookie",
            "proxy-authorization",
        ] {
            config.ingest.forward_headers = vec!["x-team".into(), name.into()];
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("ingest.forward_headers"), "{error}");
            assert!(
                error.contains(name) && error.contains("readable by"),
                "{error}"
            );
        }
        config.auth.header = "X-Api-Key".into();
        config.ingest.forward_headers = vec!["x-api-key".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("auth header (auth.header)"), "{error}");
        for (names, why) in [
            (vec!["x-a", "X-A"], "twice"),
            (vec!["bad header"], "not a header name"),
            (vec!["x"; 17], "at most 16"),
        ] {
            config.ingest.forward_headers = names.into_iter().map(String::from).collect();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
    }

    /// Ten schemas on one topic need a subject each: `topic_record`.
    #[test]
    fn one_topic_for_all_events_needs_the_topic_record_strategy() {
        let mut config = Config::default();
        config.topics.single = Some("superfone.events".into());
        let error = config.validate().unwrap_err().to_string();
        for words in ["superfone.events-value", "topic_record", "ALL_CALLS"] {
            assert!(error.contains(words), "{words}: {error}");
        }
        config.registry.subject_strategy = SubjectStrategy::TopicRecord;
        config.validate().unwrap();
        assert!(EventKind::ALL
            .into_iter()
            .all(|kind| config.topics.topic_for(kind) == "superfone.events"));
        assert_eq!(config.topics.event_topics().len(), 1);
        // A name given to an event still wins, and may be given twice here.
        config
            .topics
            .names
            .insert("TASK_CHANGE".into(), "tasks".into());
        config
            .topics
            .names
            .insert("TASK_CREATE".into(), "tasks".into());
        config.validate().unwrap();
        assert_eq!(config.topics.topic_for(EventKind::TaskCreate), "tasks");
        config.topics.dead_letter = Some("superfone.events".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("dead-letter"), "{error}");
    }

    #[test]
    fn a_topic_named_twice_is_refused_without_the_one_topic_mode() {
        let mut config = Config::default();
        config.registry.subject_strategy = SubjectStrategy::TopicRecord;
        config
            .topics
            .names
            .insert("ALL_CALLS".into(), "calls".into());
        config
            .topics
            .names
            .insert("MISSED_CALL".into(), "calls".into());
        let error = config.validate().unwrap_err().to_string();
        for words in ["ALL_CALLS, MISSED_CALL", "`calls`", "topics.single"] {
            assert!(error.contains(words), "{words}: {error}");
        }
    }

    #[test]
    fn redacts_credential_like_options() {
        let mut config = Config::default();
        config
            .kafka
            .options
            .insert("sasl.password".into(), "hunter2".into());
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn librdkafka_settings_come_from_a_mounted_secret_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        // A Kubernetes Secret mount: key files are links into `..data`.
        let data = dir.path().join("..data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("sasl.password"), "hunter2\n").unwrap();
        std::fs::write(data.join("sasl.username"), "bridge").unwrap();
        for key in ["sasl.password", "sasl.username"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        let config_dir = tempfile::tempdir().unwrap();
        let path = config_dir.path().join("bridge.toml");
        std::fs::write(
            &path,
            format!(
                "[kafka]\noptions_dir = \"{}\"\n[kafka.options]\n\"sasl.username\" = \"old\"\n\"security.protocol\" = \"SASL_SSL\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.kafka.options["sasl.password"], "hunter2");
        assert_eq!(config.kafka.options["sasl.username"], "bridge");
        assert_eq!(config.kafka.options["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.options.len(), 3, "..data is not a setting");
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("\"bridge\""),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");

        std::fs::write(
            &path,
            "[kafka]\noptions_dir = \"/nonexistent/kafka-secrets\"\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::OptionsFile(..))
        ));
    }
}
