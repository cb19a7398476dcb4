//! The binary's edges: `check-config`, `healthcheck`, and graceful shutdown on SIGTERM.
#![cfg(feature = "e2e")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::{consume, fixture, post, Bridge, BridgeOptions, SECRET};

fn bridge_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command.env_remove("SUPERFONE_AUTH_SECRETS");
    command
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"kafka-1:9092\"\n[kafka.options]\n\"sasl.password\" = \"hunter2\"\n",
    )
    .unwrap();
    let shown = support::stdout_of(
        bridge_command()
            .args(["--config", config.to_str().unwrap(), "check-config"])
            .env(
                "SUPERFONE_AUTH_SECRETS",
                "first-secret-0123456,second-secret-012345",
            )
            .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", "acme."),
    );
    assert!(shown.contains("brokers = \"kafka-1:9092\""), "{shown}");
    assert!(
        shown.contains("prefix = \"acme.\""),
        "environment overrides apply: {shown}"
    );
    assert!(shown.contains("2 secret(s) accepted"), "{shown}");
    for secret in ["first-secret", "second-secret", "hunter2"] {
        assert!(!shown.contains(secret), "{secret} printed");
    }
}

#[test]
fn check_config_refuses_a_config_without_secrets_or_with_bad_values() {
    let output = bridge_command().arg("check-config").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("SUPERFONE_AUTH_SECRETS"));

    let output = bridge_command()
        .arg("check-config")
        .env("SUPERFONE_AUTH_SECRETS", "s")
        .env("SUPERFONE_BRIDGE_SERVER__INGEST_PATH", "no-slash")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.ingest_path"));

    let output = bridge_command()
        .arg("check-config")
        .env("SUPERFONE_AUTH_SECRETS", "long-enough-secret,short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shorter than 16 bytes"), "{stderr}");
    assert!(
        !stderr.contains("short,") && !stderr.contains("long-enough"),
        "{stderr}"
    );
}

/// `SUPERFONE_BRIDGE_CONFIG` names the file as `--config` does: the way a
/// container is configured. It is not a config key (it once aborted the
/// start as an unknown field `config`).
#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_can_be_named_by_superfone_bridge_config() {
    let bridge = Bridge::start(BridgeOptions {
        config_in_env: true,
        ..BridgeOptions::default()
    });
    // The file gives the topic prefix and the loopback listeners; the
    // defaults would be `superfone.` and 0.0.0.0:8080.
    assert!(bridge.addr.starts_with("127.0.0.1:"), "{}", bridge.addr);
    let (status, reply) = post(
        &support::client(),
        &bridge,
        fixture("TASK_CREATE").to_string(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["topic"], bridge.topic("TASK_CREATE"), "{reply}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, "[kafka]\nbrokers = \"kafka-1:9092\"\n").unwrap();
    let shown = support::stdout_of(
        bridge_command()
            .arg("check-config")
            .env("SUPERFONE_BRIDGE_CONFIG", &config)
            .env("SUPERFONE_AUTH_SECRETS", "first-secret-0123456"),
    );
    assert!(shown.contains("brokers = \"kafka-1:9092\""), "{shown}");
}

/// A spool frame holds at most 64 MiB, and its readers take a longer one
/// for damage (a restart cut such an event off as a torn tail, with its
/// segment). So a body limit whose records cannot fit in a frame is refused
/// at start and by `check-config`, naming both numbers.
#[test]
fn a_body_limit_larger_than_a_spool_frame_holds_is_refused() {
    const TOO_LARGE: usize = 80 * 1024 * 1024;
    const FRAME: &str = "67108864";
    let options = BridgeOptions::default()
        .with("SERVER__MAX_BODY_BYTES", TOO_LARGE)
        .with("SERVER__MAX_BODY_BYTES_IN_FLIGHT", TOO_LARGE);
    let failure = Bridge::try_start(options)
        .err()
        .expect("the bridge must not start");
    assert!(!failure.status.success());
    assert!(
        failure.logs.contains(&TOO_LARGE.to_string()) && failure.logs.contains(FRAME),
        "{}",
        failure.logs
    );

    let check = |limit: usize| {
        bridge_command()
            .arg("check-config")
            .env("SUPERFONE_AUTH_SECRETS", "first-secret-0123456")
            .env("SUPERFONE_BRIDGE_SERVER__MAX_BODY_BYTES", limit.to_string())
            .env(
                "SUPERFONE_BRIDGE_SERVER__MAX_BODY_BYTES_IN_FLIGHT",
                TOO_LARGE.to_string(),
            )
            .output()
            .unwrap()
    };
    let refused = check(TOO_LARGE);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.max_body_bytes")
            && stderr.contains(&TOO_LARGE.to_string())
            && stderr.contains(FRAME),
        "{stderr}"
    );
    // The largest limit whose records fit: 64 MiB less the record overhead
    // (64 KiB) and the frame's entry id (8 bytes).
    let largest = 64 * 1024 * 1024 - 64 * 1024 - 8;
    let fits = check(largest);
    assert!(fits.status.success(), "{fits:?}");
    assert!(!check(largest + 1).status.success());
}

#[test]
fn sigterm_stops_accepting_but_finishes_the_request_in_flight() {
    let mut bridge = Bridge::start(BridgeOptions::default());
    let body = fixture("TASK_CREATE").to_string();
    let (first_half, second_half) = body.as_bytes().split_at(body.len() / 2);
    let mut stream = TcpStream::connect(&bridge.addr).unwrap();
    write!(
        stream,
        "POST /superfone/events HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(first_half).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    bridge.terminate();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(&bridge.addr).is_err(),
        "no new connections after SIGTERM"
    );
    assert!(
        bridge.wait_exit(Duration::from_millis(10)).is_none(),
        "still draining the request in flight"
    );

    stream.write_all(second_half).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"published\""), "{response}");

    let status = bridge
        .wait_exit(Duration::from_secs(20))
        .expect("exits after draining");
    assert!(status.success(), "{status}");
    assert!(bridge.log_text().contains("\"stopped\""));
    assert_eq!(consume(&bridge.topic("TASK_CREATE"), 1, false).len(), 1);
}

#[test]
fn healthcheck_exits_zero_only_when_the_admin_listener_answers_200() {
    let bridge = Bridge::start(BridgeOptions::default());
    let healthcheck = |admin: &str, path: &str| {
        bridge_command()
            .args(["healthcheck", "--path", path])
            .env("SUPERFONE_BRIDGE_ADMIN__LISTEN", admin)
            .output()
            .unwrap()
    };
    let alive = healthcheck(&bridge.admin_addr, "/healthz");
    assert!(alive.status.success(), "{alive:?}");
    assert!(
        String::from_utf8_lossy(&alive.stdout).contains(" 200 "),
        "{alive:?}"
    );
    let unknown = healthcheck(&bridge.admin_addr, "/no-such-endpoint");
    assert!(
        !unknown.status.success(),
        "a 404 is not healthy: {unknown:?}"
    );

    let nothing_listens = format!("127.0.0.1:{}", support::free_port());
    let down = healthcheck(&nothing_listens, "/healthz");
    assert!(!down.status.success(), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains(&nothing_listens));
}
