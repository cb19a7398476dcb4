//! `send` posts sample payloads with the configured auth (smoke tests in any
//! environment); `healthcheck` asks the admin listener whether the bridge
//! is alive or ready, for a container HEALTHCHECK without curl.

use crate::config::Config;
use crate::ops::tools::ToolError;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
