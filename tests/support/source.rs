//! A recording source for the copier's tests: serves recordings behind
//! pre-signed-style URLs on loopback (plain http, so the bridge runs with
//! `allow_plain_http` and `allow_private_networks`), counting requests.
//!
//! `/rec/<name>?size=N` serves N deterministic bytes (`recording_bytes`) as
//! `audio/mpeg`; `status=403` (or any status) answers that status instead.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Source {
    pub port: u16,
    requests: Arc<AtomicUsize>,
}

/// The bytes of recording `name`, `size` long: the same every time.
pub fn recording_bytes(name: &str, size: usize) -> Vec<u8> {
    let mut state = name.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    });
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

impl Source {
    /// Starts the source on a free loopback port, on the current runtime.
    pub async fn start() -> Source {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(answer(&request)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Source { port, requests }
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

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The signature every link carries: it must never appear in logs or records.
pub const SIGNATURE: &str = "f00dsignature0123456789abcdef";

fn answer<B>(request: &Request<B>) -> Response<Full<Bytes>> {
    let query: HashMap<&str, &str> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    if let Some(status) = query.get("status").and_then(|s| s.parse::<u16>().ok()) {
        return Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Full::new(Bytes::from_static(
                b"<Error>AccessDenied</Error>",
            )))
            .unwrap();
    }
    let name = request.uri().path().rsplit('/').next().unwrap_or_default();
    let size = query
        .get("size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    Response::builder()
        .header("content-type", "audio/mpeg")
        .body(Full::new(Bytes::from(recording_bytes(name, size))))
        .unwrap()
}
