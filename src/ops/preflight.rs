//! `check-config --online`: before the first real delivery, asks everything
//! this deployment depends on whether it can work as configured — the auth
//! secrets, the TLS files, the spool directory, the brokers and each topic,
//! the registry and each subject, the recording store when the copier is
//! on — and gives one line per check: `ok`, `warn` (it works, but look at
//! it) or `FAIL` (it will not work), with the reason. Nothing is created or
//! registered; the only writes are a probe file in the spool directory and
//! a probe object in the recording store, each removed at once.

use crate::config::Config;
use crate::durability::kafka::{Publisher, TopicFacts, TopicSpec};
use crate::http::auth::{self, MIN_SECRET_BYTES};
use crate::pipeline::registry::{self, Probe, Standing};
use crate::pipeline::schema;
use crate::recordings::store::{RecordingStore, StoreError};
use secrecy::ExposeSecret;
use std::fmt;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Entropy below which a secret is reported as weak (it is still accepted
/// from `MIN_SECRET_BYTES` on).
const STRONG_SECRET_BITS: f64 = 128.0;
/// A certificate expiring sooner than this is reported.
const EXPIRY_WARNING: time::Duration = time::Duration::days(14);
/// How long the recording store's probe may take (its SDK retries inside).
const STORE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One named check and what it found.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            verdict,
            detail: detail.into(),
        });
    }

    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|check| check.verdict == Verdict::Fail)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let verdict = match check.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            writeln!(f, "{verdict:<4}  {:<width$}  {}", check.name, check.detail)?;
        }
        Ok(())
    }
}

/// Runs every check; each dependency is given the configured timeout.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    check_auth(config, &mut report);
    check_tls(config, &mut report, OffsetDateTime::now_utc());
    check_spool(config, &mut report);
    check_kafka(config, &mut report).await;
    check_registry(config, &mut report).await;
    check_recording_store(config, &mut report).await;
    check_recording_policy(config, &mut report);
    check_forwarded_headers(config, &mut report);
    report
}

/// Words in a header name that say it carries a credential.
const CREDENTIAL_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "auth",
    "session",
    "password",
    "signature",
];

/// Forwarded headers land on every record, for every consumer of the
/// topics: one named like a credential is most likely a mistake. (The
/// auth header and cookies are refused outright by the config itself.)
fn check_forwarded_headers(config: &Config, report: &mut Report) {
    let names: Vec<String> = config
        .ingest
        .forward_headers
        .iter()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        return;
    }
    let risky: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| CREDENTIAL_WORDS.iter().any(|word| name.contains(word)))
        .collect();
    if risky.is_empty() {
        return report.push(
            "ingest.forward_headers",
            Verdict::Ok,
            format!("copied onto every record: {}", names.join(", ")),
        );
    }
    report.push(
        "ingest.forward_headers",
        Verdict::Warn,
        format!(
            "{} named like a credential: every consumer of the topics would read it; forward it only if it is none",
            risky.join(", ")
        ),
    );
}

/// The test and dev escape hatches of the recording source, on where
/// links come from request bodies: each one an SSRF hole in production.
fn check_recording_policy(config: &Config, report: &mut Report) {
    let recordings = &config.recordings;
    if !recordings.enabled {
        return;
    }
    let open: Vec<&str> = [
        ("allow_private_networks", recordings.allow_private_networks),
        ("allow_plain_http", recordings.allow_plain_http),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if open.is_empty() {
        let hosts = recordings.allowed_hosts.join(", ");
        return report.push(
            "recordings.policy",
            Verdict::Ok,
            format!("https only, public addresses only, from {hosts}"),
        );
    }
    report.push(
        "recordings.policy",
        Verdict::Warn,
        format!(
            "recordings.{} on: for tests and scripts/dev only; anyone holding a webhook secret can make the copier fetch from inside this network",
            open.join(" and recordings.")
        ),
    );
}

fn check_auth(config: &Config, report: &mut Report) {
    let secrets = match auth::load_secrets(&config.auth) {
        Ok(secrets) => secrets,
        Err(error) => return report.push("auth", Verdict::Fail, error.to_string()),
    };
    if secrets.is_empty() {
        let error = auth::AuthError::NoSecrets {
            env: config.auth.secrets_env.clone(),
        };
        return report.push("auth", Verdict::Fail, error.to_string());
    }
    report.push(
        "auth",
        Verdict::Ok,
        format!(
            "{} secret(s) from {}, checked in the {} header",
            secrets.len(),
            config.auth.secret_sources(),
            config.auth.header
        ),
    );
    for (index, secret) in secrets.iter().enumerate() {
        let (verdict, detail) = secret_strength(secret.expose_secret());
        report.push(format!("auth.secret {}", index + 1), verdict, detail);
    }
}

/// Length and an entropy estimate (length × log2 of the alphabet the
/// characters are drawn from); the secret itself is never shown.
fn secret_strength(secret: &str) -> (Verdict, String) {
    let length = secret.len();
    let alphabet = if secret.chars().all(|c| c.is_ascii_digit()) {
        10
    } else if secret.chars().all(|c| c.is_ascii_hexdigit()) {
        16
    } else {
        let uses = |class: fn(&char) -> bool| u32::from(secret.chars().any(|c| class(&c)));
        26 * uses(char::is_ascii_lowercase)
            + 26 * uses(char::is_ascii_uppercase)
            + 10 * uses(char::is_ascii_digit)
            + 33 * uses(|c| !c.is_ascii_alphanumeric())
    };
    let bits = length as f64 * f64::from(alphabet).log2();
    let described = format!("{length} bytes, about {bits:.0} bits");
    if length < MIN_SECRET_BYTES {
        (
            Verdict::Fail,
            format!("{described}: shorter than {MIN_SECRET_BYTES} bytes, the bridge refuses it"),
        )
    } else if bits < STRONG_SECRET_BITS {
        (
            Verdict::Warn,
            format!(
                "{described}: weak, under {STRONG_SECRET_BITS:.0} bits (`openssl rand -hex 24` gives 192)"
            ),
        )
    } else {
        (Verdict::Ok, format!("{described}: strong"))
    }
}

fn check_tls(config: &Config, report: &mut Report, now: OffsetDateTime) {
    let Some(tls) = &config.server.tls else {
        return report.push(
            "tls",
            Verdict::Ok,
            "off: plain HTTP; HTTPS must be terminated in front of the bridge",
        );
    };
    if let Err(error) = crate::http::tls::Tls::load(tls) {
        return report.push("tls", Verdict::Fail, error.to_string());
    }
    report.push(
        "tls",
        Verdict::Ok,
        format!(
            "{} and {} usable together",
            tls.cert_file.display(),
            tls.key_file.display()
        ),
    );
    check_expiry("tls.cert_file", &tls.cert_file, report, now);
    if let Some(client_ca) = &tls.client_ca_file {
        check_expiry("tls.client_ca_file", client_ca, report, now);
    }
}

/// The certificate of `path` that expires first decides.
fn check_expiry(name: &str, path: &Path, report: &mut Report, now: OffsetDateTime) {
    let validity = match crate::http::tls::validity(path) {
        Ok(validity) => validity,
        Err(error) => return report.push(name, Verdict::Fail, error.to_string()),
    };
    if let Some(early) = validity.iter().find(|v| v.not_before > now) {
        return report.push(
            name,
            Verdict::Fail,
            format!(
                "{} is not valid before {}",
                early.subject,
                date(early.not_before)
            ),
        );
    }
    let Some(first) = validity.iter().min_by_key(|v| v.not_after) else {
        return report.push(name, Verdict::Fail, "holds no certificate");
    };
    let left = first.not_after - now;
    let detail = format!(
        "{} valid until {} ({} days)",
        first.subject,
        date(first.not_after),
        left.whole_days()
    );
    if left.is_negative() {
        report.push(
            name,
            Verdict::Fail,
            format!("{} expired on {}", first.subject, date(first.not_after)),
        );
    } else if left < EXPIRY_WARNING {
        report.push(name, Verdict::Warn, format!("{detail}: renew it soon"));
    } else {
        report.push(name, Verdict::Ok, detail);
    }
}

fn date(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

fn check_spool(config: &Config, report: &mut Report) {
    let dir = &config.spool.dir;
    if dir.exists() && !dir.is_dir() {
        return report.push(
            "spool",
            Verdict::Fail,
            format!("{} is not a directory", dir.display()),
        );
    }
    // A spool directory that does not exist yet is created at start-up:
    // its nearest existing parent must take it.
    let existing = dir
        .ancestors()
        .find(|path| path.is_dir())
        .unwrap_or(Path::new("."));
    if let Err(error) = probe_write(existing) {
        return report.push(
            "spool",
            Verdict::Fail,
            format!("{} is not writable: {error}", existing.display()),
        );
    }
    let free = match rustix::fs::statvfs(existing) {
        Ok(stats) => stats.f_bavail.saturating_mul(stats.f_frsize),
        Err(error) => {
            return report.push(
                "spool",
                Verdict::Fail,
                format!(
                    "cannot tell the free space of {}: {error}",
                    existing.display()
                ),
            )
        }
    };
    let used = directory_bytes(dir);
    let cap = config.spool.max_bytes;
    let largest = config.max_record_bytes() as u64;
    let detail = format!(
        "{} writable{}, {} free on its filesystem, {} used of spool.max_bytes {}",
        dir.display(),
        if existing == dir.as_path() {
            String::new()
        } else {
            " (created at start-up)".into()
        },
        bytes(free),
        bytes(used),
        bytes(cap)
    );
    if free < largest {
        report.push(
            "spool",
            Verdict::Fail,
            format!(
                "{detail}: no room for a largest record ({}); the pod is not ready",
                bytes(largest)
            ),
        );
    } else if free < cap.saturating_sub(used) {
        report.push(
            "spool",
            Verdict::Warn,
            format!("{detail}: the disk fills before the spool reaches its cap"),
        );
    } else {
        report.push("spool", Verdict::Ok, detail);
    }
}

/// Writes, syncs and removes a small file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path: PathBuf = dir.join(format!(".check-config.{}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&[0; 4096])?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// The bytes of the files directly in `dir` (the spool keeps no subdirectories).
fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{count} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

async fn check_kafka(config: &Config, report: &mut Report) {
    let publisher = match Publisher::new(&config.kafka, config.max_record_bytes()) {
        Ok(publisher) => publisher,
        Err(error) => return report.push("kafka", Verdict::Fail, error.to_string()),
    };
    let spec = TopicSpec::of(config);
    let timeout = config.kafka.startup_timeout_ms;
    let facts = match publisher.describe_topics(&spec.names, timeout).await {
        Ok(facts) => facts,
        Err(error) => return report.push("kafka", Verdict::Fail, error.to_string()),
    };
    report.push(
        "kafka",
        Verdict::Ok,
        format!(
            "{} broker(s) answer: {}",
            facts.brokers.len(),
            facts.brokers.join(", ")
        ),
    );
    if let Some(error) = &facts.configs_error {
        report.push(
            "kafka.configs",
            Verdict::Warn,
            format!("the brokers did not describe the topics' configs: {error}"),
        );
    }
    for topic in &facts.topics {
        let (verdict, detail) = topic_verdict(config, topic);
        report.push(format!("topic {}", topic.name), verdict, detail);
    }
}

fn topic_verdict(config: &Config, topic: &TopicFacts) -> (Verdict, String) {
    let largest = config.max_record_bytes();
    if let Some(error) = &topic.error {
        return (Verdict::Fail, format!("the brokers answer: {error}"));
    }
    let Some(partitions) = topic.partitions else {
        return if config.kafka.create_topics {
            (
                Verdict::Ok,
                format!(
                    "absent: created at start-up with {} partitions and max.message.bytes {largest}",
                    config.kafka.topic_partitions
                ),
            )
        } else {
            (
                Verdict::Fail,
                format!(
                    "absent, and kafka.create_topics is off: create it with max.message.bytes >= {largest}"
                ),
            )
        };
    };
    match topic.max_message_bytes {
        Some(limit) if limit < largest => (
            Verdict::Fail,
            format!(
                "{partitions} partitions, max.message.bytes {limit} < {largest}, the largest record \
                 an accepted body (server.max_body_bytes {}) can become: raise it or lower \
                 server.max_body_bytes, or larger events are parked",
                config.server.max_body_bytes
            ),
        ),
        Some(limit) => (
            Verdict::Ok,
            format!("{partitions} partitions, max.message.bytes {limit} >= {largest}"),
        ),
        None => (
            Verdict::Warn,
            format!(
                "{partitions} partitions; max.message.bytes not told by the brokers: it must be >= {largest}"
            ),
        ),
    }
}

async fn check_registry(config: &Config, report: &mut Report) {
    let probe = match Probe::new(&config.registry) {
        Ok(probe) => probe,
        Err(error) => return report.push("registry", Verdict::Fail, error.to_string()),
    };
    match probe.compatibility_level().await {
        Ok(level) => report.push(
            "registry",
            Verdict::Ok,
            format!("{} answers, compatibility {level}", config.registry.url),
        ),
        Err(error) => return report.push("registry", Verdict::Fail, error.to_string()),
    }
    let schemas = match schema::load_all(&schema::SchemaSource::of(&config.registry)) {
        Ok(schemas) => schemas,
        Err(error) => return report.push("schemas", Verdict::Fail, error.to_string()),
    };
    for schema in &schemas {
        let topic = config.topics.topic_for(schema.kind);
        let subject = registry::subject_for(config.registry.subject_strategy, &topic, schema);
        let (verdict, detail) = match probe.standing(&subject, schema).await {
            Ok(standing) => subject_verdict(config.registry.auto_register, standing),
            Err(error) => (Verdict::Fail, error.to_string()),
        };
        report.push(format!("subject {subject}"), verdict, detail);
    }
}

/// With the recording copier on: a small object written to the store,
/// read back and deleted (`RecordingStore::probe`). A `file://` directory
/// is created, as the copier would create it.
async fn check_recording_store(config: &Config, report: &mut Report) {
    const NAME: &str = "recordings.store";
    if !config.recordings.enabled {
        return;
    }
    let url = config.recordings.store_url.as_deref().unwrap_or_default();
    let probed = match RecordingStore::open(url) {
        Ok(store) => tokio::time::timeout(STORE_PROBE_TIMEOUT, store.probe())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Url {
                    url: url.to_owned(),
                    reason: format!("no answer within {} s", STORE_PROBE_TIMEOUT.as_secs()),
                })
            }),
        Err(error) => Err(error),
    };
    match probed {
        Ok(()) => report.push(
            NAME,
            Verdict::Ok,
            format!("{url} takes a write, a read back and a delete"),
        ),
        // It names the URL itself.
        Err(error @ StoreError::Url { .. }) => report.push(NAME, Verdict::Fail, error.to_string()),
        Err(error) => report.push(NAME, Verdict::Fail, format!("{url}: {error}")),
    }
}

fn subject_verdict(auto_register: bool, standing: Standing) -> (Verdict, String) {
    let unregistered = |what: &str| {
        if auto_register {
            (Verdict::Ok, format!("{what}: registered at start-up"))
        } else {
            (
                Verdict::Fail,
                format!("{what}, and registry.auto_register is off: the bridge refuses to start"),
            )
        }
    };
    match standing {
        Standing::Registered { id, version } => (
            Verdict::Ok,
            format!("this schema is registered: id {id}, version {version}"),
        ),
        Standing::NewSubject => unregistered("new subject"),
        Standing::Compatible => {
            unregistered("this schema is not registered yet, and compatible with the latest")
        }
        Standing::Incompatible(messages) => (
            Verdict::Fail,
            format!(
                "this schema is incompatible with the latest version, so the registry refuses it \
                 and the bridge with it: {}",
                if messages.is_empty() {
                    "no reason given".into()
                } else {
                    messages.join("; ")
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_strength_counts_the_alphabet_and_the_length() {
        let (verdict, detail) = secret_strength("0123456789abcdef0123456789abcdef");
        assert_eq!(verdict, Verdict::Ok, "{detail}");
        assert!(detail.starts_with("32 bytes, about 128 bits"), "{detail}");
        let (verdict, detail) = secret_strength("zzzzzzzzzzzzzzzzzzzz");
        assert_eq!(verdict, Verdict::Warn, "{detail}");
        assert!(detail.contains("about 94 bits"), "{detail}");
        assert_eq!(secret_strength("short-secret").0, Verdict::Fail);
        let (verdict, _) = secret_strength("Correct-Horse-Battery-9");
        assert_eq!(verdict, Verdict::Ok);
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4_259_840), "4.1 MiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }
}
