//! Where copies go: one `object_store` behind `recordings.store_url`
//! (`file://`, `s3://`, `gs://`, `az://`), the deterministic name of each
//! copy, and the streaming write that hashes as it goes.
//!
//! A repeat copy (at-least-once: a restart re-reads recordings whose
//! offsets were not committed) gets the same name and writes the same
//! bytes, so it overwrites the object with itself. Writes are multipart
//! with a fixed part size and at most `PARTS_IN_FLIGHT` parts uploading,
//! so a copy holds a few parts in memory, never the recording.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, WriteMultipart};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;
use time::OffsetDateTime;
use url::Url;

/// The size of one uploaded part: S3's minimum for all but the last.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploading at once for one copy: with the one being filled, a copy
/// holds at most three parts (15 MiB).
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("recordings.store_url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Why a copy did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError<E> {
    /// Reading the recording failed (the source's own error).
    #[error(transparent)]
    Source(E),
    /// The recording grew past the size cap.
    #[error("the recording is larger than recordings.max_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// Writing the copy failed; the upload was abandoned.
    #[error("writing the copy failed: {0}")]
    Store(#[from] object_store::Error),
}

/// A finished copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub object_url: String,
    pub bytes: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
}

/// The store copies are written to.
pub struct RecordingStore {
    store: Arc<dyn ObjectStore>,
    /// The folder inside the store that `store_url` names.
    prefix: Path,
    /// `store_url` without a trailing `/`: object URLs are built on it.
    base_url: String,
}

impl RecordingStore {
    /// Opens the store `store_url` names. Cloud credentials come from each
    /// SDK's usual environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`: keys, web
    /// identity tokens, mounted files); a `file://` directory is created.
    pub fn open(store_url: &str) -> Result<RecordingStore, StoreError> {
        let invalid = |reason: String| StoreError::Url {
            url: store_url.to_owned(),
            reason,
        };
        let url = Url::parse(store_url).map_err(|error| invalid(error.to_string()))?;
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&url).map_err(|error| invalid(error.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| invalid("not a local directory".into()))?;
                std::fs::create_dir_all(&dir).map_err(|error| invalid(error.to_string()))?;
                return Ok(RecordingStore {
                    store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?),
                    prefix: Path::default(),
                    base_url: store_url.trim_end_matches('/').to_owned(),
                });
            }
            ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(store_url)
                    .build()?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(store_url)
                    .build()?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(store_url)
                    .build()?,
            ),
            other => {
                return Err(invalid(format!(
                    "{other:?} is not a store for copies (file, s3, gs or az)"
                )))
            }
        };
        Ok(RecordingStore {
            store,
            prefix,
            base_url: store_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The URL a copy named `name` (from `object_name`) has.
    pub fn object_url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url)
    }

    fn location(&self, name: &str) -> Path {
        name.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// Streams `body` into the object `name`, hashing it as it goes; the
    /// object appears whole or not at all. More than `max_bytes` ends the
    /// copy (`TooLarge`) and abandons the upload.
    pub async fn write<S, E>(
        &self,
        name: &str,
        body: S,
        max_bytes: u64,
    ) -> Result<Stored, CopyError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let upload = self.store.put_multipart(&self.location(name)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        match write_parts(&mut writer, body, max_bytes).await {
            Ok((bytes, sha256)) => {
                writer.finish().await?;
                Ok(Stored {
                    object_url: self.object_url(name),
                    bytes,
                    sha256,
                })
            }
            Err(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%abort, object = name, "could not abandon a failed upload");
                }
                Err(error)
            }
        }
    }

    /// Writes, reads back and deletes a small object: whether this store
    /// can take copies now (`check-config --online`).
    pub async fn probe(&self) -> Result<(), StoreError> {
        let name = format!(
            ".superfone-bridge-probe-{}",
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let location = self.location(&name);
        let written = Bytes::from_static(b"superfone-bridge store probe");
        self.store.put(&location, written.clone().into()).await?;
        let read = self.store.get(&location).await?.bytes().await?;
        self.store.delete(&location).await?;
        if read != written {
            return Err(StoreError::Url {
                url: self.base_url.clone(),
                reason: "the probe object read back differs from what was written".into(),
            });
        }
        Ok(())
    }
}

async fn write_parts<S, E>(
    writer: &mut WriteMultipart,
    body: S,
    max_bytes: u64,
) -> Result<(u64, String), CopyError<E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    futures::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(CopyError::Source)?;
        bytes += chunk.len() as u64;
        if bytes > max_bytes {
            return Err(CopyError::TooLarge { limit: max_bytes });
        }
        hash.update(&chunk);
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        writer.put(chunk);
    }
    Ok((bytes, hex(&hash.finalize())))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// The name of a recording's copy: `<yyyy>/<mm>/<dd>/<id>.<ext>`, the date
/// the call's (UTC), the id its `cdr_id` (else `cdr_uuid`), the extension
/// from the content type, else from the link's path, else `bin`. Only
/// `[A-Za-z0-9._-]` survive in the id, so a payload cannot name a path.
pub fn object_name(
    call_date: OffsetDateTime,
    id: &str,
    content_type: Option<&str>,
    url: &str,
) -> String {
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    let id = if id.is_empty() || id.starts_with('.') {
        format!("recording{id}")
    } else {
        id
    };
    let extension = content_type
        .and_then(extension_of_type)
        .or_else(|| extension_of_path(url))
        .unwrap_or("bin");
    format!(
        "{:04}/{:02}/{:02}/{id}.{extension}",
        call_date.year(),
        u8::from(call_date.month()),
        call_date.day()
    )
}

fn extension_of_type(content_type: &str) -> Option<&'static str> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    Some(match essence.as_str() {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/ogg" | "audio/opus" => "ogg",
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => "m4a",
        "audio/webm" => "webm",
        "audio/aac" => "aac",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/amr" => "amr",
        _ => return None,
    })
}

/// The extension of the link's last path segment, if it looks like one.
fn extension_of_path(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    let (_, extension) = last.rsplit_once('.')?;
    let known = [
        "mp3", "wav", "ogg", "opus", "m4a", "webm", "aac", "flac", "amr",
    ];
    known
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(extension))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_copy_is_named_by_call_date_and_id() {
        let at = datetime!(2026-05-15 10:30:00 UTC);
        let url = "https://recordings.s3.amazonaws.com/x/9876543.wav?X-Amz-Signature=s";
        assert_eq!(
            object_name(at, "9876543", Some("audio/mpeg"), url),
            "2026/05/15/9876543.mp3"
        );
        assert_eq!(
            object_name(at, "9876543", None, url),
            "2026/05/15/9876543.wav"
        );
        assert_eq!(
            object_name(at, "abc", Some("application/octet-stream"), "https://h/rec"),
            "2026/05/15/abc.bin"
        );
        assert_eq!(
            object_name(at, "../../etc/passwd", None, "https://h/a"),
            "2026/05/15/recording....etcpasswd.bin"
        );
    }

    #[tokio::test]
    async fn a_file_store_gets_the_bytes_whole_with_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/copies", dir.path().display());
        let store = RecordingStore::open(&url).unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..7u8)
            .map(|n| Ok(Bytes::from(vec![n; 1024 * 1024])))
            .collect();
        let expected: Vec<u8> = (0..7u8).flat_map(|n| vec![n; 1024 * 1024]).collect();
        let stored = store
            .write("2026/05/15/1.mp3", futures::stream::iter(chunks), u64::MAX)
            .await
            .unwrap();
        let on_disk = std::fs::read(dir.path().join("copies/2026/05/15/1.mp3")).unwrap();
        assert_eq!(on_disk, expected);
        assert_eq!(stored.bytes, expected.len() as u64);
        assert_eq!(stored.sha256, hex(&Sha256::digest(&expected)));
        assert_eq!(stored.object_url, format!("{url}/2026/05/15/1.mp3"));
        store.probe().await.unwrap();
    }

    #[tokio::test]
    async fn a_copy_over_the_cap_or_cut_short_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::open(&format!("file://{}", dir.path().display())).unwrap();
        let big = || futures::stream::iter((0..3).map(|_| Ok(Bytes::from(vec![1u8; 1000]))));
        let error = store
            .write::<_, std::io::Error>("a.mp3", big(), 2500)
            .await
            .unwrap_err();
        assert!(
            matches!(error, CopyError::TooLarge { limit: 2500 }),
            "{error}"
        );
        let cut = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"half")),
            Err(std::io::Error::other("reset")),
        ]);
        let error = store.write("b.mp3", cut, u64::MAX).await.unwrap_err();
        assert!(matches!(error, CopyError::Source(_)), "{error}");
        assert!(!dir.path().join("a.mp3").exists());
        assert!(!dir.path().join("b.mp3").exists());
    }

    #[test]
    fn a_store_url_names_a_known_store() {
        for bad in ["not a url", "https://example.com/bucket", "memory:///"] {
            assert!(RecordingStore::open(bad).is_err(), "{bad}");
        }
    }
}
