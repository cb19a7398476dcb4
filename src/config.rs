//! Typed configuration: defaults, then a TOML file, then `SUPERFONE_BRIDGE_*`
//! environment overrides (`__` separates levels, e.g.
//! `SUPERFONE_BRIDGE_KAFKA__BROKERS`). Every key and its default is documented
//! here and in `config/superfone-bridge.example.toml`.
//!
//! Secrets are deliberately not config keys: the auth secrets and the registry
//! password are read from an environment variable or a file (see `auth`), so a
//! config file or a `check-config` dump never holds one.

use crate::vocabulary::{EventKind, RECORD_OVERHEAD_BYTES};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SUPERFONE_BRIDGE_";

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub registry: RegistryConfig,
    pub delivery: DeliveryConfig,
    pub spool: SpoolConfig,
    pub dedup: DedupConfig,
    pub admin: AdminConfig,
    pub tracing: TracingConfig,
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
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// When to answer, and how much work to take on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Time Kafka gets to acknowledge a record before it is spooled instead
    /// (answer 202). Well under Superfone's ~5 s guidance.
    pub ack_deadline_ms: u64,
    /// A request body must arrive within this time (slow senders get 408).
    pub body_read_timeout_ms: u64,
    /// A connection's first request, and on HTTP/1 every request's headers,
    /// must arrive within this time (slow-loris and silent-socket guard).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2
    /// too; on HTTP/1 the header-read timeout already bounds keep-alive idling).
    pub idle_timeout_ms: u64,
    /// Open connections at most; when all are taken, the connection idle the
    /// longest is closed to make room for a new one.
    pub max_connections: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_deadline_ms: 2_000,
            body_read_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections: 2_048,
        }
    }
}

/// The local durable spool (mount a persistent volume here in Kubernetes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Disk the spool may use; beyond it events are refused with 503.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// On SIGTERM, how long the bridge may spend sending what is left in the
    /// spool to Kafka (when Kafka is reachable) before it exits, so a pod
    /// scaled in strands no event on its volume; 0 leaves the spool for the
    /// next start.
    pub shutdown_drain_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
            shutdown_drain_ms: 15_000,
        }
    }
}

/// Duplicate suppression (Superfone may deliver an event twice).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub enabled: bool,
    /// How long the latest delivered event of an entity is remembered.
    pub window_secs: u64,
    /// Entities (leads, tasks, calls) remembered at most (bounds memory; about 200 bytes each).
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            window_secs: 600,
            max_entries: 100_000,
        }
    }
}

/// The public ingest listener.
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
    pub drain_timeout_ms: u64,
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
    pub reload_interval_ms: u64,
}

impl TlsConfig {
    fn default_reload_interval_ms() -> u64 {
        10_000
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
            drain_timeout_ms: 20_000,
            worker_threads: 0,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The runtime's worker threads: `worker_threads`, or for 0 one fewer
    /// than the CPUs available (cgroup quotas included), at least one. On 2
    /// cores, with delivery reports served on the runtime, one worker cost
    /// 10-15% less CPU per delivery than two at 8 and 64 clients and reached
    /// the same rate at 256 (README, "Benchmark"). A single worker holds
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

/// The rdkafka producer. Idempotence and `acks=all` are not configurable: the
/// bridge answers 2xx only for records the broker has durably acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd. lz4 is cheap on
    /// CPU: scripts/bench showed no CPU difference from `none` on these
    /// ~1 KB records, and it saves broker disk and network.
    pub compression: String,
    /// `linger.ms`: how long a record waits for others to share its batch.
    /// Every delivery waits for its ack before answering, so this is added to
    /// each answer; 1 ms (not librdkafka's 5) measured with scripts/bench:
    /// p50 at a quarter of the max rate 3.6 ms instead of 7.4 ms, same
    /// throughput; 20 ms halved throughput (README, "Benchmark").
    pub linger_ms: u32,
    /// `message.timeout.ms`: how long librdkafka keeps trying one record before
    /// the delivery fails (librdkafka's default of 300 s is far beyond a webhook).
    pub message_timeout_ms: u32,
    /// `partitioner`: murmur2_random matches the Java client, so a contact key
    /// maps to the same partition whichever client produced it.
    pub partitioner: String,
    /// Create the event and dead-letter topics at start-up if they are missing.
    pub create_topics: bool,
    /// Partition count for topics the bridge creates.
    pub topic_partitions: i32,
    /// Replication factor for topics the bridge creates; -1 uses the broker's default.
    pub topic_replication_factor: i32,
    /// How long start-up waits for broker metadata before giving up.
    pub startup_timeout_ms: u64,
    /// `statistics.interval.ms`: how often librdkafka's queue depth and broker
    /// RTT are sampled into the metrics.
    pub statistics_interval_ms: u32,
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
            compression: "lz4".into(),
            linger_ms: 1,
            message_timeout_ms: 10_000,
            partitioner: "murmur2_random".into(),
            create_topics: true,
            topic_partitions: 6,
            topic_replication_factor: -1,
            startup_timeout_ms: 10_000,
            statistics_interval_ms: 5_000,
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
    pub prefix: String,
    /// Dead-letter topic; default `<prefix>dead_letter`.
    pub dead_letter: Option<String>,
    /// Per-event topic names, keyed by event (e.g. `ALL_CALLS = "calls"`).
    pub names: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: "superfone.".into(),
            dead_letter: None,
            names: BTreeMap::new(),
        }
    }
}

impl TopicsConfig {
    pub fn topic_for(&self, kind: EventKind) -> String {
        self.names
            .get(kind.as_str())
            .cloned()
            .unwrap_or_else(|| format!("{}{}", self.prefix, kind.slug()))
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}dead_letter", self.prefix))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's default TopicNameStrategy).
    Topic,
    /// The record's full name, e.g. `com.superfone.events.AllCalls`.
    Record,
}

/// The Confluent-compatible schema registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    pub url: String,
    pub subject_strategy: SubjectStrategy,
    /// Register the schemas at start-up. When false, the bridge only looks them
    /// up and refuses to start if one is missing (registries managed by CI).
    pub auto_register: bool,
    /// Directory overriding the schemas compiled into the binary.
    pub schemas_dir: Option<PathBuf>,
    pub timeout_ms: u64,
    /// Basic-auth user; the password comes from the `password_env` variable.
    pub username: Option<String>,
    pub password_env: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://127.0.0.1:8081".into(),
            subject_strategy: SubjectStrategy::Topic,
            auto_register: true,
            schemas_dir: None,
            timeout_ms: 10_000,
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
        let mut config: Config = figment
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
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
        for name in self.topics.names.keys() {
            if EventKind::from_name(name).is_none() {
                return invalid(format!("topics.names has unknown event `{name}`"));
            }
        }
        let topics = EventKind::ALL
            .into_iter()
            .map(|kind| self.topics.topic_for(kind))
            .chain(std::iter::once(self.topics.dead_letter_topic()));
        for topic in topics {
            let legal = topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if topic.is_empty() || topic.len() > 249 || !legal {
                return invalid(format!(
                    "topic name `{topic}` is not a legal Kafka topic name"
                ));
            }
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.kafka.compression.as_str()) {
            return invalid(format!(
                "kafka.compression `{}` is not one of none, gzip, snappy, lz4, zstd",
                self.kafka.compression
            ));
        }
        if self.delivery.ack_deadline_ms == 0 || self.delivery.max_connections == 0 {
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
        Ok(())
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
            assert_eq!(config.kafka.linger_ms, 7);
            assert_eq!(config.topics.topic_for(EventKind::AllCalls), "calls");
            assert_eq!(
                config.topics.topic_for(EventKind::TaskChange),
                "acme.task_change"
            );
            Ok(())
        });
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
