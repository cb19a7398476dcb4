//! `check-config --online` against the real broker and registry: a deployment
//! a bridge has already set up passes every check, and each way a deployment
//! cannot work (an unreachable broker or registry, a spool directory nobody
//! can write, a short secret, an expired certificate, a topic too small for
//! the largest record, an absent topic it may not create, an incompatible or
//! unregistered subject, a recording store that cannot be written) is one
//! FAIL line with its reason and exit 1.
#![cfg(feature = "e2e")]

mod support;

use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use superfone_bridge::durability::kafka::{Publisher, TopicSpec};
use support::{stack, Bridge, BridgeOptions};

const STRONG_SECRET: &str = "4f1c9a7e2b8d3f60a5c7e9b1d2f4a6c8e0b3d5f7a9c1e3b5";

struct Checked {
    passed: bool,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// The line of the check named `name` (the name column starts at 6).
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| {
                line.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{name} ")))
            })
            .unwrap_or_else(|| panic!("no check named {name}:\n{}", self.stdout))
    }

    fn verdict(&self, name: &str) -> &str {
        self.line(name).split_whitespace().next().unwrap()
    }
}

/// `check-config --online` for a deployment on the test stack with `prefix`,
/// the spool in `spool_dir`, and `env` (`SUPERFONE_BRIDGE_*` overrides, the
/// secrets) on top.
fn check_online(prefix: &str, spool_dir: &Path, env: &[(&str, &str)]) -> Checked {
    let stack = stack();
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command
        .args(["check-config", "--online"])
        .env_remove("SUPERFONE_AUTH_SECRETS")
        .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
        .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
        .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", prefix)
        .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool_dir)
        .env("SUPERFONE_BRIDGE_KAFKA__STARTUP_TIMEOUT_MS", "3000")
        .env("SUPERFONE_BRIDGE_REGISTRY__TIMEOUT_MS", "3000");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    Checked {
        passed: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

const EVENTS: [&str; 10] = [
    "all_calls",
    "missed_call",
    "cdr_recording_available",
    "cdr_summary_ready",
    "customer_create",
    "customer_change",
    "task_create",
    "task_change",
    "task_notify_time",
    "task_due_time",
];

#[test]
fn a_deployment_a_bridge_has_set_up_passes_every_check() {
    let bridge = Bridge::start(BridgeOptions::default());
    let prefix = bridge.prefix.clone();
    // The topics and subjects are set up behind the open listener.
    let logs = bridge.log_text_with("start-up checks done");
    assert!(logs.contains("start-up checks done"), "{logs}");
    drop(bridge);
    let spool = tempfile::tempdir().unwrap();
    let checked = check_online(
        &prefix,
        spool.path(),
        &[("SUPERFONE_AUTH_SECRETS", STRONG_SECRET)],
    );
    assert!(checked.passed, "{}{}", checked.stdout, checked.stderr);
    assert!(
        checked.stdout.lines().all(|line| line.starts_with("ok ")),
        "{}",
        checked.stdout
    );
    assert!(checked.line("auth.secret 1").contains("192 bits: strong"));
    assert!(!checked.stdout.contains(STRONG_SECRET), "secret shown");
    assert!(checked.line("kafka").contains("1 broker(s) answer"));
    let largest = 4 * 1024 * 1024 + 64 * 1024;
    for event in EVENTS.iter().chain(&["dead_letter"]) {
        let line = checked.line(&format!("topic {prefix}{event}"));
        assert!(
            line.contains(&format!(
                "6 partitions, max.message.bytes {largest} >= {largest}"
            )),
            "{line}"
        );
    }
    for event in EVENTS {
        let line = checked.line(&format!("subject {prefix}{event}-value"));
        assert!(line.contains("this schema is registered: id "), "{line}");
    }
    assert!(checked.line("spool").contains("writable"));
    assert!(checked.line("tls").contains("off"));
    assert!(
        !checked.stdout.contains("recordings.store"),
        "no store to probe with the copier off:\n{}",
        checked.stdout
    );
}

/// A forwarded header whose name says it carries a credential is copied
/// onto every record for every consumer: `check-config` says so.
#[test]
fn a_forwarded_header_named_like_a_credential_is_a_warning() {
    let spool = tempfile::tempdir().unwrap();
    let check_forwarding = |names: &str| {
        check_online(
            &support::unique_prefix(),
            spool.path(),
            &[
                ("SUPERFONE_AUTH_SECRETS", STRONG_SECRET),
                ("SUPERFONE_BRIDGE_INGEST__FORWARD_HEADERS", names),
            ],
        )
    };
    let plain = check_forwarding("x-team,x-region");
    let line = plain.line("ingest.forward_headers");
    assert!(line.starts_with("ok") && line.contains("x-team"), "{line}");
    let risky = check_forwarding("x-team,X-Api-Key,x-session-id");
    let line = risky.line("ingest.forward_headers");
    assert!(
        line.starts_with("warn") && line.contains("x-api-key") && line.contains("x-session-id"),
        "{line}"
    );
    assert!(!line.contains("x-team"), "{line}");
}

#[test]
fn a_recording_store_that_cannot_be_written_fails_its_check_with_the_reason() {
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let check_store_with = |store_url: &str, extra: &[(&str, &str)]| {
        let mut env = vec![
            ("SUPERFONE_AUTH_SECRETS", STRONG_SECRET),
            ("SUPERFONE_BRIDGE_RECORDINGS__ENABLED", "true"),
            ("SUPERFONE_BRIDGE_RECORDINGS__STORE_URL", store_url),
        ];
        env.extend_from_slice(extra);
        check_online(&prefix, spool.path(), &env)
    };
    let check_store = |store_url: &str| check_store_with(store_url, &[]);
    // Its directory would be under a regular file: no one can create it,
    // root included.
    let file = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = format!("file://{}/copies", file.path().display());
    let checked = check_store(&under_a_file);
    assert!(!checked.passed);
    let line = checked.line("recordings.store");
    assert!(
        line.starts_with("FAIL")
            && line.contains(&under_a_file)
            && line.contains("Not a directory"),
        "{line}"
    );
    assert!(
        checked.stderr.contains("Error: 1 check(s) failed"),
        "the store alone fails:\n{}{}",
        checked.stdout,
        checked.stderr
    );
    assert_eq!(
        checked.verdict(&format!("topic {prefix}recording_copies")),
        "ok",
        "the pointer topic is checked with the copier on"
    );

    let store = tempfile::tempdir().unwrap();
    let writable = format!("file://{}/copies", store.path().display());
    let checked = check_store(&writable);
    assert!(checked.passed, "{}{}", checked.stdout, checked.stderr);
    let line = checked.line("recordings.store");
    assert!(
        line.starts_with("ok") && line.contains("takes a write, a read back and a delete"),
        "{line}"
    );
    let left: Vec<_> = std::fs::read_dir(store.path().join("copies"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the probe object is deleted: {left:?}");
    let line = checked.line("recordings.policy");
    assert!(
        line.starts_with("ok") && line.contains("https only"),
        "{line}"
    );

    // The test and dev escape hatches are a warning, never silent.
    let loose = check_store_with(
        &writable,
        &[("SUPERFONE_BRIDGE_RECORDINGS__ALLOW_PLAIN_HTTP", "true")],
    );
    let line = loose.line("recordings.policy");
    assert!(
        line.starts_with("warn") && line.contains("recordings.allow_plain_http on"),
        "{line}"
    );
}

#[test]
fn unreachable_dependencies_an_unwritable_spool_and_a_short_secret_each_fail_with_a_reason() {
    let dead_port = support::free_port();
    let checked = check_online(
        &support::unique_prefix(),
        Path::new("/proc/superfone-spool"),
        &[
            ("SUPERFONE_AUTH_SECRETS", "lowercaseletterslong,short"),
            (
                "SUPERFONE_BRIDGE_KAFKA__BROKERS",
                &format!("127.0.0.1:{dead_port}"),
            ),
            (
                "SUPERFONE_BRIDGE_REGISTRY__URL",
                &format!("http://127.0.0.1:{dead_port}"),
            ),
        ],
    );
    assert!(!checked.passed);
    assert!(
        checked.stderr.contains("4 check(s) failed"),
        "{}",
        checked.stderr
    );
    let line = checked.line("auth.secret 1");
    assert!(
        line.starts_with("warn") && line.contains("20 bytes, about 94 bits: weak"),
        "a warning, not a failure: {line}"
    );
    assert_eq!(checked.verdict("auth.secret 2"), "FAIL");
    assert!(checked
        .line("auth.secret 2")
        .contains("shorter than 16 bytes"));
    assert_eq!(checked.verdict("spool"), "FAIL");
    assert!(checked.line("spool").contains("/proc is not writable"));
    assert_eq!(checked.verdict("kafka"), "FAIL");
    assert!(checked.line("kafka").contains("unreachable"));
    assert_eq!(checked.verdict("registry"), "FAIL");
    assert!(
        checked.line("registry").contains("unreachable")
            && checked.line("registry").contains("Connection refused"),
        "{}",
        checked.line("registry")
    );
    assert!(
        !checked
            .stdout
            .lines()
            .any(|line| line[6..].starts_with("topic ") || line[6..].starts_with("subject ")),
        "no per-topic or per-subject lines without a broker or registry:\n{}",
        checked.stdout
    );
}

/// A self-signed certificate valid from `not_before` to `not_after`, and its key.
fn certificate(dir: &Path, name: &str, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} leaf"));
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn tls_files_are_checked_for_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let ymd = |date: time::Date| (date.year(), u8::from(date.month()), date.day());
    certificate(dir.path(), "expired", (2020, 1, 1), (2021, 1, 1));
    certificate(
        dir.path(),
        "soon",
        (2020, 1, 1),
        ymd(today + time::Duration::days(5)),
    );
    certificate(
        dir.path(),
        "fresh",
        (2020, 1, 1),
        ymd(today + time::Duration::days(300)),
    );
    let spool = tempfile::tempdir().unwrap();
    let with_certificate = |name: &str| {
        let cert = dir.path().join(format!("{name}.pem"));
        let key = dir.path().join(format!("{name}.key"));
        check_online(
            &support::unique_prefix(),
            spool.path(),
            &[
                ("SUPERFONE_AUTH_SECRETS", STRONG_SECRET),
                (
                    "SUPERFONE_BRIDGE_SERVER__TLS__CERT_FILE",
                    cert.to_str().unwrap(),
                ),
                (
                    "SUPERFONE_BRIDGE_SERVER__TLS__KEY_FILE",
                    key.to_str().unwrap(),
                ),
                (
                    "SUPERFONE_BRIDGE_SERVER__TLS__CLIENT_CA_FILE",
                    cert.to_str().unwrap(),
                ),
            ],
        )
    };

    let expired = with_certificate("expired");
    assert!(!expired.passed);
    let line = expired.line("tls.cert_file");
    assert!(
        line.starts_with("FAIL") && line.contains("CN=expired leaf expired on 2021-01-01"),
        "{line}"
    );
    assert_eq!(expired.verdict("tls.client_ca_file"), "FAIL");

    let soon = with_certificate("soon");
    assert!(soon.passed, "a warning alone passes:\n{}", soon.stdout);
    let line = soon.line("tls.cert_file");
    assert!(
        line.starts_with("warn") && line.contains("renew it soon"),
        "{line}"
    );

    let fresh = with_certificate("fresh");
    assert!(fresh.passed, "{}", fresh.stdout);
    assert!(fresh
        .line("tls.cert_file")
        .contains("CN=fresh leaf valid until"));
    assert_eq!(fresh.verdict("tls"), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn small_or_absent_topics_and_incompatible_or_unregistered_subjects_fail() {
    let stack = stack();
    let prefix = support::unique_prefix();
    // all_calls exists, with room for 1000-byte records only.
    let publisher = Publisher::new(
        &superfone_bridge::config::KafkaConfig {
            brokers: stack.brokers.clone(),
            ..Default::default()
        },
        1000,
    )
    .unwrap();
    let small = TopicSpec {
        names: vec![format!("{prefix}all_calls")],
        partitions: 2,
        replication_factor: -1,
        max_record_bytes: 1000,
    };
    publisher
        .create_topics(&small, Duration::from_secs(10))
        .await
        .unwrap();
    // missed_call's subject holds a schema ours cannot read.
    let legacy = json!({"type": "record", "name": "MissedCall", "namespace": "com.superfone.events",
                        "fields": [{"name": "legacy_id", "type": "string"}]});
    let registered = support::client()
        .post(format!(
            "{}/subjects/{prefix}missed_call-value/versions",
            stack.registry_url
        ))
        .json(&json!({ "schema": legacy.to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);

    let spool = tempfile::tempdir().unwrap();
    let checked_with = prefix.clone();
    let checked = tokio::task::spawn_blocking(move || {
        check_online(
            &checked_with,
            spool.path(),
            &[
                ("SUPERFONE_AUTH_SECRETS", STRONG_SECRET),
                ("SUPERFONE_BRIDGE_KAFKA__CREATE_TOPICS", "false"),
                ("SUPERFONE_BRIDGE_REGISTRY__AUTO_REGISTER", "false"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(!checked.passed);
    let line = checked.line(&format!("topic {prefix}all_calls"));
    assert!(
        line.starts_with("FAIL")
            && line.contains("2 partitions, max.message.bytes 1000 < 4259840")
            && line.contains("server.max_body_bytes 4194304"),
        "{line}"
    );
    let line = checked.line(&format!("topic {prefix}task_create"));
    assert!(
        line.starts_with("FAIL") && line.contains("absent, and kafka.create_topics is off"),
        "{line}"
    );
    let line = checked.line(&format!("subject {prefix}missed_call-value"));
    assert!(
        line.starts_with("FAIL")
            && line.contains("incompatible")
            && line.contains("Field 'event' in reader schema must have a default value"),
        "the registry's reason is shown: {line}"
    );
    let line = checked.line(&format!("subject {prefix}all_calls-value"));
    assert!(
        line.starts_with("FAIL") && line.contains("new subject, and registry.auto_register is off"),
        "{line}"
    );
    assert!(
        checked.stderr.contains("Error: 21 check(s) failed"),
        "11 topics and 10 subjects:\n{}{}",
        checked.stdout,
        checked.stderr
    );
}
