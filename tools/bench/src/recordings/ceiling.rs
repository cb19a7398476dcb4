//! The copy ceiling: the same recordings from the same source, downloaded
//! by a plain streaming HTTP client (hyper) into files at the bridge's
//! concurrency. No Kafka, no checks, no hashing: what copying alone costs
//! on this machine, the baseline the bridge's figures are divided by.

use crate::recordings::schedule::{Copied, Schedule};
use crate::recordings::Recording;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// What the file writes are buffered by: a write a frame (64 KiB) would be
/// a blocking-pool round trip each.
const WRITE_BUFFER: usize = 1 << 20;

pub struct Ceiling {
    client: Client<HttpConnector, Empty<Bytes>>,
    dir: PathBuf,
}

impl Ceiling {
    /// A client writing its copies into `dir` (created).
    pub fn new(dir: &Path) -> anyhow::Result<Arc<Ceiling>> {
        std::fs::create_dir_all(dir)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Arc::new(Ceiling {
            client: Client::builder(TokioExecutor::new()).build(connector),
            dir: dir.to_owned(),
        }))
    }

    /// The file the copy of `recording` is written to.
    pub fn path_of(&self, recording: &Recording) -> PathBuf {
        self.dir.join(&recording.name)
    }

    /// Copies every recording as `schedule` says; each copy's latency runs
    /// from its start (or scheduled start) to its file being closed.
    pub async fn copy_all(
        self: &Arc<Ceiling>,
        recordings: &[Recording],
        schedule: Schedule,
    ) -> anyhow::Result<Vec<Copied>> {
        let ceiling = Arc::clone(self);
        schedule
            .run(recordings, move |recording, started| {
                let ceiling = Arc::clone(&ceiling);
                async move {
                    let bytes = ceiling.download(&recording).await?;
                    Ok(Copied {
                        seq: recording.seq,
                        bytes,
                        latency: started.elapsed(),
                        done: Instant::now(),
                    })
                }
            })
            .await
    }

    /// One download, streamed frame by frame into its file.
    async fn download(&self, recording: &Recording) -> anyhow::Result<u64> {
        let response = self
            .client
            .get(recording.url.parse()?)
            .await
            .with_context(|| format!("downloading {}", recording.name))?;
        anyhow::ensure!(
            response.status().is_success(),
            "the source answered {} for {}",
            response.status(),
            recording.name
        );
        let file = tokio::fs::File::create(self.path_of(recording)).await?;
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut body = response.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes += data.len() as u64;
                file.write_all(&data).await?;
            }
        }
        file.shutdown().await?;
        Ok(bytes)
    }
}
