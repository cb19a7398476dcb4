//! HTTPS served by the bridge itself: certificates made in
//! the test (rcgen), curl as the client (OpenSSL, a different TLS stack from
//! the bridge's rustls), a renewal swapped in under an open connection, bad
//! files at start-up and on reload, and mutual TLS.
#![cfg(feature = "e2e")]

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Bridge, BridgeOptions};

/// A CA and a certificate it signed, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn issue(dir: &Path, name: &str, subject_alt_names: &[&str]) -> Pki {
    issue_until(dir, name, subject_alt_names, None)
}

/// As `issue`, the leaf valid until `not_after` (rcgen's default: 4096).
fn issue_until(
    dir: &Path,
    name: &str,
    subject_alt_names: &[&str],
    not_after: Option<time::OffsetDateTime>,
) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = subject_alt_names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} leaf"));
    if let Some(not_after) = not_after {
        params.not_after = not_after;
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// Replaces a file the way a renewal does: a new file renamed over it.
fn swap(path: &Path, from: &Path) {
    let temporary = path.with_extension("new");
    std::fs::copy(from, &temporary).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// What curl got: its exit code, and the HTTP status and version it saw
/// (`000` and `0` when no HTTP answer came).
#[derive(Debug)]
struct Curled {
    exit: i32,
    status: String,
    http_version: String,
}

fn curl(url: &str, extra: &[&str]) -> Curled {
    let body = serde_json::to_vec(&support::fixture("ALL_CALLS")).unwrap();
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--max-time", "10", "--data-binary", "@-"])
        .args(["-H", &format!("authorization: Bearer {}", support::SECRET)])
        .args(["-H", "content-type: application/json"])
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&body)?;
            child.wait_with_output()
        })
        .expect("curl is installed (scripts/lib/stack.sh BUILD_PACKAGES)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut parts = text.split_whitespace();
    Curled {
        exit: output.status.code().unwrap_or(-1),
        status: parts.next().unwrap_or("000").to_owned(),
        http_version: parts.next().unwrap_or("0").to_owned(),
    }
}

fn tls_bridge(pki: &Pki) -> BridgeOptions {
    BridgeOptions::default()
        .with("SERVER__TLS__CERT_FILE", pki.cert.display())
        .with("SERVER__TLS__KEY_FILE", pki.key.display())
        .with("SERVER__TLS__RELOAD_INTERVAL_MS", 200)
        .with("DELIVERY__BODY_READ_TIMEOUT_MS", 30_000)
}

fn https_url(bridge: &Bridge) -> String {
    format!("https://{}/superfone/events", bridge.addr)
}

/// A rustls client connection trusting `ca`, with a request whose body is
/// only half sent.
fn half_sent_request(
    bridge: &Bridge,
    ca: &Path,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    Vec<u8>,
) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(&bridge.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let body = serde_json::to_vec(&support::fixture("MISSED_CALL")).unwrap();
    let head = format!(
        "POST /superfone/events HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        support::SECRET,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    (stream, rest.to_vec())
}

#[test]
fn https_with_http2_and_tls13_plain_http_refused_and_a_renewal_reaches_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let first = issue(dir.path(), "first", &["localhost", "127.0.0.1"]);
    let served = Pki {
        ca: first.ca.clone(),
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(&first.cert, &served.cert).unwrap();
    std::fs::copy(&first.key, &served.key).unwrap();
    let bridge = Bridge::start(tls_bridge(&served));
    let url = https_url(&bridge);
    let ca_first = first.ca.to_str().unwrap();

    let h2 = curl(&url, &["--cacert", ca_first, "--tlsv1.3", "--http2"]);
    assert_eq!(
        (h2.status.as_str(), h2.http_version.as_str()),
        ("200", "2"),
        "{h2:?}"
    );
    let h1 = curl(&url, &["--cacert", ca_first, "--tlsv1.3", "--http1.1"]);
    assert_eq!(
        (h1.status.as_str(), h1.http_version.as_str()),
        ("200", "1.1"),
        "{h1:?}"
    );
    let untrusted = curl(&url, &["--tlsv1.3"]);
    assert_eq!(untrusted.status, "000", "no CA given: {untrusted:?}");

    let plain = curl(&format!("http://{}/superfone/events", bridge.addr), &[]);
    assert_eq!(
        plain.status, "000",
        "plain HTTP gets no HTTP answer: {plain:?}"
    );
    assert_ne!(plain.exit, 0, "{plain:?}");

    // A request under way on the old certificate while the files are renewed.
    let (mut open, rest) = half_sent_request(&bridge, &first.ca);
    let second = issue(dir.path(), "second", &["localhost", "127.0.0.1"]);
    swap(&served.key, &second.key);
    swap(&served.cert, &second.cert);
    let log = bridge.log_text_with("TLS certificate reloaded");
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    let ca_second = second.ca.to_str().unwrap();
    let renewed = curl(&url, &["--cacert", ca_second, "--tlsv1.3"]);
    assert_eq!(
        renewed.status, "200",
        "a new connection sees the new certificate: {renewed:?}"
    );
    let old = curl(&url, &["--cacert", ca_first, "--tlsv1.3"]);
    assert_eq!(
        old.status, "000",
        "the old CA no longer verifies it: {old:?}"
    );

    open.write_all(&rest).unwrap();
    open.flush().unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = open.read(&mut chunk).expect("the open connection answers");
        assert!(read > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the open connection finishes its request: {answer}"
    );

    // A renewal that cannot be used keeps the certificate in use.
    std::fs::write(&served.cert, "not a certificate").unwrap();
    let log = bridge.log_text_with("TLS files changed but cannot be used");
    assert!(
        log.contains("TLS files changed but cannot be used"),
        "{log}"
    );
    let kept = curl(&url, &["--cacert", ca_second, "--tlsv1.3"]);
    assert_eq!(kept.status, "200", "{kept:?}");
}

/// The value of an unlabelled metric on the bridge's admin listener.
fn gauge(bridge: &Bridge, name: &str) -> Option<f64> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", &bridge.admin_url("/metrics")])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (10 s at most) for a gauge to read `value`; returns what it read.
fn gauge_reads(bridge: &Bridge, name: &str, value: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = gauge(bridge, name);
        if read == Some(value) || Instant::now() > deadline {
            return read;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_served_certificates_expiry_is_exported_and_follows_a_renewal() {
    // The names the chart's alerts use for it, so a rename cannot leave
    // them silent (tests/dashboards.rs checks the others on a plain bridge).
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("helm/superfone-bridge/templates/prometheusrule.yaml"),
    )
    .unwrap();
    let name = "superfone_tls_certificate_expiry_timestamp_seconds";
    assert!(rules.contains(name), "the alerts watch {name}");

    let dir = tempfile::tempdir().unwrap();
    let first_expiry = time::macros::datetime!(2031-01-02 03:04:05 UTC);
    let renewed_expiry = time::macros::datetime!(2032-06-07 08:09:10 UTC);
    let first = issue_until(dir.path(), "first", &["127.0.0.1"], Some(first_expiry));
    let served = Pki {
        ca: first.ca.clone(),
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(&first.cert, &served.cert).unwrap();
    std::fs::copy(&first.key, &served.key).unwrap();
    let bridge = Bridge::start(tls_bridge(&served));
    let at = |when: time::OffsetDateTime| when.unix_timestamp() as f64;
    assert_eq!(
        gauge_reads(&bridge, name, at(first_expiry)),
        Some(at(first_expiry))
    );

    let renewed = issue_until(dir.path(), "renewed", &["127.0.0.1"], Some(renewed_expiry));
    swap(&served.key, &renewed.key);
    swap(&served.cert, &renewed.cert);
    assert_eq!(
        gauge_reads(&bridge, name, at(renewed_expiry)),
        Some(at(renewed_expiry)),
        "the gauge follows the certificate in use"
    );

    // A renewal that cannot be used: the certificate in use, and its
    // expiry, are kept.
    std::fs::write(&served.cert, "not a certificate").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let log = bridge.log_text_with("TLS files changed but cannot be used");
    assert!(
        log.contains("TLS files changed but cannot be used"),
        "{log}"
    );
    assert_eq!(gauge(&bridge, name), Some(at(renewed_expiry)));
}

#[test]
fn a_bad_certificate_at_start_up_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = issue(dir.path(), "good", &["127.0.0.1"]);
    let other = issue(dir.path(), "other", &["127.0.0.1"]);
    std::fs::write(dir.path().join("garbage.pem"), "garbage").unwrap();
    let cases = [
        (
            "missing",
            pki.cert.with_file_name("absent.pem"),
            pki.key.clone(),
            "cannot read",
        ),
        (
            "garbage",
            dir.path().join("garbage.pem"),
            pki.key.clone(),
            "holds no certificate",
        ),
        (
            "mismatched key",
            pki.cert.clone(),
            other.key.clone(),
            "cannot be used together",
        ),
    ];
    for (case, cert, key, expected) in cases {
        let options = tls_bridge(&Pki {
            ca: pki.ca.clone(),
            cert: cert.clone(),
            key,
        });
        let started = Instant::now();
        let failure = match Bridge::try_start(options) {
            Ok(_) => panic!("{case}: the bridge started"),
            Err(failure) => failure,
        };
        assert!(!failure.status.success(), "{case}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{case}: fails fast"
        );
        assert!(
            failure.logs.contains("server.tls") && failure.logs.contains(expected),
            "{case}: {}",
            failure.logs
        );
    }
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = issue(dir.path(), "server", &["127.0.0.1"]);
    let client = issue(dir.path(), "client", &["proxy.internal"]);
    let stranger = issue(dir.path(), "stranger", &["proxy.internal"]);
    let bridge =
        Bridge::start(tls_bridge(&server).with("SERVER__TLS__CLIENT_CA_FILE", client.ca.display()));
    let url = https_url(&bridge);
    let ca = server.ca.to_str().unwrap();

    let presenting = |pki: &Pki| {
        let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
        curl(&url, &["--cacert", ca, "--cert", cert, "--key", key])
    };

    let without = curl(&url, &["--cacert", ca]);
    assert_eq!(without.status, "000", "no client certificate: {without:?}");
    let wrong = presenting(&stranger);
    assert_eq!(
        wrong.status, "000",
        "a certificate from another CA: {wrong:?}"
    );
    let admitted = presenting(&client);
    assert_eq!(admitted.status, "200", "{admitted:?}");
}

#[test]
fn send_posts_over_https_trusting_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = issue(dir.path(), "server", &["127.0.0.1"]);
    let bridge = Bridge::start(tls_bridge(&server));
    let url = https_url(&bridge);
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/all_calls.json");
    let send = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_superfone-bridge"))
            .args(["send", "--url", &url])
            .args(extra)
            .arg(fixture)
            .env("SUPERFONE_AUTH_SECRETS", support::SECRET)
            .output()
            .unwrap()
    };

    let trusted = send(&["--ca-file", server.ca.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(printed.contains("\"status\":200"), "{printed}");

    let untrusted = send(&[]);
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("request to https://127.0.0.1"), "{stderr}");
}
