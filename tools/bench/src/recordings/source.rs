//! The recordings' source: a plain-http hyper server on 127.0.0.1 that
//! answers `/rec/<name>?size=N` with N deterministic bytes, streamed as
//! slices of one shared pattern (no copy, no buffer per recording), so a
//! 500 MB recording costs the benchmark neither memory nor much CPU.
//! `Pattern::chunks` makes the same bytes again to check a copy against.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;

/// The size of the chunks a recording is sent in (and checked in).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The random bytes every chunk is a window of.
const PATTERN_BYTES: usize = 1 << 20;

/// One mebibyte of random bytes (and a chunk more, so any window of it fits).
#[derive(Clone)]
pub struct Pattern(Bytes);

impl Default for Pattern {
    fn default() -> Pattern {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let bytes: Vec<u8> = (0..(PATTERN_BYTES + CHUNK_BYTES) / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        Pattern(Bytes::from(bytes))
    }
}

impl Pattern {
    /// Recording `name`'s `size` bytes, chunk by chunk: chunk `i` is the
    /// window of the pattern that `name` and `i` pick, so two recordings
    /// (or two chunks) differ unless their windows happen to meet.
    pub fn chunks(&self, name: &str, size: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let pattern = self.0.clone();
        let chunks = size.div_ceil(CHUNK_BYTES as u64);
        (0..chunks).map(move |index| {
            let start = (mix(seed ^ index) % PATTERN_BYTES as u64) as usize;
            let length = (size - index * CHUNK_BYTES as u64).min(CHUNK_BYTES as u64) as usize;
            pattern.slice(start..start + length)
        })
    }
}

/// splitmix64's finaliser: neighbouring inputs land far apart.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

type Body = BoxBody<Bytes, Infallible>;

/// The answer to one request: the recording its path and `size` name, or
/// 404 for any other path.
pub fn answer<B>(request: &Request<B>, pattern: &Pattern) -> Response<Body> {
    let name = request.uri().path().strip_prefix("/rec/");
    let size = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("size="))
        .and_then(|size| size.parse::<u64>().ok());
    let (Some(name), Some(size)) = (name, size) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"no such recording")).boxed())
            .expect("static response");
    };
    let frames = pattern
        .chunks(name, size)
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    Response::builder()
        .header("content-type", "audio/mpeg")
        .header("content-length", size)
        .body(StreamBody::new(futures::stream::iter(frames)).boxed())
        .expect("valid response")
}

/// The source, serving on a loopback port until dropped.
pub struct RecordingSource {
    address: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl RecordingSource {
    /// Binds a free port on 127.0.0.1 and serves on the current runtime.
    pub async fn start(pattern: Pattern) -> std::io::Result<RecordingSource> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let pattern = pattern.clone();
                let service = service_fn(move |request| {
                    let response = answer(&request, &pattern);
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RecordingSource { address, server })
    }

    /// The link to recording `name` of `size` bytes.
    pub fn link(&self, name: &str, size: u64) -> String {
        format!("http://{}/rec/{name}?size={size}", self.address)
    }
}

impl Drop for RecordingSource {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recording_is_its_size_in_chunks_and_the_same_every_time() {
        let pattern = Pattern::default();
        let size = 3 * CHUNK_BYTES as u64 + 17;
        let request = Request::get(format!("/rec/7.mp3?size={size}"))
            .body(())
            .unwrap();
        let response = answer(&request, &pattern);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-length"], size.to_string());
        let served = response.into_body().collect().await.unwrap().to_bytes();
        let again: Vec<u8> = pattern.chunks("7.mp3", size).flatten().collect();
        assert_eq!(served.len() as u64, size);
        assert_eq!(served, again);
        let other: Vec<u8> = pattern.chunks("8.mp3", size).flatten().collect();
        assert_ne!(served, other, "each recording has its own bytes");
    }

    #[test]
    fn any_other_path_is_not_found() {
        let pattern = Pattern::default();
        for path in ["/rec/7.mp3", "/other?size=3"] {
            let request = Request::get(path).body(()).unwrap();
            assert_eq!(answer(&request, &pattern).status(), StatusCode::NOT_FOUND);
        }
    }
}
