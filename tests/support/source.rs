//! A recording source for the copier's tests: serves recordings behind
//! pre-signed-style URLs on loopback (plain http, so the bridge runs with
//! `allow_plain_http` and `allow_private_networks`), counting requests.
//!
//! `/rec/<name>?size=N` streams N deterministic bytes (`recording_bytes`)
//! as `audio/mpeg`. Other query parameters change the answer:
//! `status=S` answers S instead; `fail=K` answers 503 to the first K
//! requests for that name; `rate=B` sends B bytes a second; `redirect=URL`
//! answers 302 to URL.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The size of the chunks a recording is generated and sent in.
const CHUNK: usize = 64 * 1024;

pub struct Source {
    pub port: u16,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    by_name: Mutex<HashMap<String, usize>>,
}

impl Counts {
    /// Counts a request for `name`; returns how many came before it.
    fn count(&self, name: &str) -> usize {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut by_name = self.by_name.lock().unwrap();
        let seen = by_name.entry(name.to_owned()).or_default();
        *seen += 1;
        *seen - 1
    }
}

/// The bytes of recording `name`, `size` long, chunk by chunk: the same
/// every time, cheap enough to stream hundreds of megabytes.
pub fn recording_chunks(name: &str, size: usize) -> impl Iterator<Item = Bytes> {
    let mut state = name.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    });
    let block: Vec<u64> = (0..CHUNK / 8)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect();
    (0..size.div_ceil(CHUNK)).map(move |index| {
        let salt = (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let chunk: Vec<u8> = block
            .iter()
            .flat_map(|word| (word ^ salt).to_le_bytes())
            .take(size - index * CHUNK)
            .collect();
        Bytes::from(chunk)
    })
}

/// The whole of recording `name` (small recordings only).
pub fn recording_bytes(name: &str, size: usize) -> Vec<u8> {
    recording_chunks(name, size).flatten().collect()
}

/// The SHA-256 (lower-case hex) of recording `name`, computed streaming.
pub fn recording_sha256(name: &str, size: usize) -> String {
    let mut hash = Sha256::new();
    for chunk in recording_chunks(name, size) {
        hash.update(&chunk);
    }
    hex(&hash.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Source {
    /// Starts the source on a free loopback port, on the current runtime.
    pub async fn start() -> Source {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let counted = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = answer(&request, &counted);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Source { port, counts }
    }

    /// A link to recording `name` of `size` bytes, signed at `signed` (the
    /// X-Amz-Date form) for `expires_secs`, with `extra` query parameters.
    pub fn link(
        &self,
        name: &str,
        size: usize,
        signed: &str,
        expires_secs: u64,
        extra: &str,
    ) -> String {
        format!(
            "http://localhost:{}/rec/{name}?size={size}&X-Amz-Date={signed}&X-Amz-Expires={expires_secs}&X-Amz-Signature={}{extra}",
            self.port,
            SIGNATURE
        )
    }

    /// Requests answered so far, for any recording.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Requests for recording `name` so far.
    pub fn requests_for(&self, name: &str) -> usize {
        let by_name = self.counts.by_name.lock().unwrap();
        by_name.get(name).copied().unwrap_or_default()
    }
}

/// The signature every link carries: it must never appear in logs or records.
pub const SIGNATURE: &str = "f00dsignature0123456789abcdef";

type Body = BoxBody<Bytes, Infallible>;

fn answer<B>(request: &Request<B>, counts: &Counts) -> Response<Body> {
    let query: HashMap<&str, &str> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let number = |key: &str| query.get(key).and_then(|s| s.parse::<usize>().ok());
    let name = request.uri().path().rsplit('/').next().unwrap_or_default();
    let earlier = counts.count(name);
    if let Some(target) = query.get("redirect") {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", *target)
            .body(full(""))
            .unwrap();
    }
    let status = match number("status") {
        Some(status) => Some(status as u16),
        None if earlier < number("fail").unwrap_or(0) => Some(503),
        None => None,
    };
    if let Some(status) = status {
        return Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(full("<Error>AccessDenied</Error>"))
            .unwrap();
    }
    let size = number("size").unwrap_or(1024);
    let pause = number("rate").map(|rate| Duration::from_secs_f64(CHUNK as f64 / rate as f64));
    let chunks =
        futures::stream::iter(recording_chunks(name, size)).then(move |chunk| async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            Ok::<_, Infallible>(Frame::data(chunk))
        });
    Response::builder()
        .header("content-type", "audio/mpeg")
        .header("content-length", size)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap()
}

fn full(text: &'static str) -> Body {
    BodyExt::boxed(Full::new(Bytes::from_static(text.as_bytes())))
}

/// The `X-Amz-Date` form of `at`.
pub fn amz_date(at: time::OffsetDateTime) -> String {
    at.format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap()
}

/// A link signed `ago` before now.
pub fn signed(ago: time::Duration) -> String {
    amz_date(time::OffsetDateTime::now_utc() - ago)
}

/// A CDR_RECORDING_AVAILABLE event for `cdr_id` (lead `contact_id`) whose
/// recording is at `url`.
pub fn recording_event(cdr_id: i64, contact_id: i64, url: &str) -> serde_json::Value {
    let mut event = super::fixture("cdr_recording_available");
    event["cdr_id"] = cdr_id.into();
    event["contact_id"] = contact_id.into();
    event["cdr_recording_url"] = url.into();
    event
}

/// Options for a bridge whose copier writes to `store_url` and may fetch
/// from loopback over plain http (the test source), in a consumer group of
/// its own (named after the topic prefix, so a restart rejoins it).
pub fn copying_options(store_url: &str, prefix: Option<String>) -> super::BridgeOptions {
    let mut options = super::BridgeOptions::default();
    if let Some(prefix) = prefix {
        options.prefix = prefix;
    }
    let group = format!("{}recordings", options.prefix);
    options
        .with("RECORDINGS__ENABLED", "true")
        .with("RECORDINGS__STORE_URL", store_url)
        .with("RECORDINGS__ALLOWED_HOSTS", "localhost")
        .with("RECORDINGS__ALLOW_PRIVATE_NETWORKS", "true")
        .with("RECORDINGS__ALLOW_PLAIN_HTTP", "true")
        .with("RECORDINGS__GROUP_ID", group)
}

/// The file a `file://` object URL names.
pub fn file_of(object_url: &str) -> std::path::PathBuf {
    object_url
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("not a file URL: {object_url}"))
        .into()
}

/// The SHA-256 (hex) of a file, read streaming.
pub fn file_sha256(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hash = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            return hex(&hash.finalize());
        }
        hash.update(&buffer[..read]);
    }
}
