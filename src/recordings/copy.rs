//! One recording from its link to its terminal outcome: download through
//! the guarded source, stream into the store, and on a transient failure
//! (the source's 5xx or timeout, the store down) try again with backoff
//! until the link expires; a lasting status (a 404 before expiry) a few
//! times only. At most `concurrency` copies run at once; a copy
//! waiting to retry holds no slot, so it holds back nobody.

use crate::config::RecordingsConfig;
use crate::recordings::job::RecordingJob;
use crate::recordings::pointer::{CopyReport, CopyStatus};
use crate::recordings::source::{self, LowSpeedLimit, RecordingSource, SourceError, SourcePolicy};
use crate::recordings::store::{self, CopyError, RecordingStore, StoreError};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// The first wait before a failed copy is tried again; it doubles up to
/// `LAST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(300);
/// How long the source may take to connect, and to send the next bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest download kept going: 64 KiB a minute (about 1 KiB/s; an
/// object store sends megabytes a second). Slower, the attempt fails and
/// frees its slot for the copies behind it.
const LOW_SPEED: LowSpeedLimit = LowSpeedLimit {
    bytes: 64 * 1024,
    window: Duration::from_secs(60),
};

#[derive(Debug, thiserror::Error)]
pub enum CopiesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the recording source: {0}")]
    Source(#[from] SourceError),
}

/// How one attempt ended, when it did not store the copy.
enum Setback {
    /// Never as it is: scheme, host, address or size.
    Refused(String),
    /// Perhaps next time. `link_gone`: the source said 403 or 404, which is
    /// what a dead link says. `lasting`: a status that is no "not now"
    /// (a 4xx but 408 and 429), which trying again rarely mends.
    Retry {
        error: String,
        link_gone: bool,
        lasting: bool,
    },
}

/// How many attempts a lasting status (a 404 or 403 before the link's
/// expiry, a 400) gets before the copy ends `failed`: about 30 s, for
/// an object still being written, rather than days that would hold the
/// partition's committed offset behind it. `recordings retry` can mend it
/// while the link lives.
const LASTING_ATTEMPTS: u32 = 6;

/// The copier's means of copying: source, store, limits.
pub struct Copies {
    source: RecordingSource,
    store: RecordingStore,
    max_bytes: u64,
    slots: Semaphore,
    /// The links of copies not yet ended, by expiry (with a count: two
    /// recordings may share an expiry).
    waiting: Mutex<BTreeMap<OffsetDateTime, usize>>,
}

impl Copies {
    pub fn open(config: &RecordingsConfig) -> Result<Copies, CopiesError> {
        let store_url = config.store_url.as_deref().unwrap_or_default();
        let policy = SourcePolicy {
            allowed_hosts: config.allowed_hosts.clone(),
            allow_private_networks: config.allow_private_networks,
            allow_plain_http: config.allow_plain_http,
            max_bytes: config.max_bytes,
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            low_speed: LOW_SPEED,
        };
        Ok(Copies {
            source: RecordingSource::new(&policy)?,
            store: RecordingStore::open(store_url)?,
            max_bytes: config.max_bytes,
            slots: Semaphore::new(config.concurrency),
            waiting: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn store(&self) -> &RecordingStore {
        &self.store
    }

    /// Copies `job`'s recording, trying again until its link expires, or
    /// until `give_up_at` if that comes first (`recordings retry` does not
    /// wait days); returns the terminal outcome.
    pub async fn copy(&self, job: &RecordingJob, give_up_at: Option<OffsetDateTime>) -> CopyReport {
        let expires_at = job.expires_at;
        self.wait_on(expires_at, 1);
        let report = self.copy_until_terminal(job, give_up_at).await;
        self.wait_on(expires_at, -1);
        if let Some(bytes) = report.bytes {
            metrics::counter!(crate::observe::metrics::RECORDING_BYTES).increment(bytes);
        }
        report
    }

    async fn copy_until_terminal(
        &self,
        job: &RecordingJob,
        give_up_at: Option<OffsetDateTime>,
    ) -> CopyReport {
        let mut backoff = FIRST_RETRY;
        let mut lasting_failures = 0;
        loop {
            let attempt = {
                let _slot = self.slots.acquire().await.expect("never closed");
                self.attempt(job).await
            };
            let (error, link_gone, lasting) = match attempt {
                Ok(report) => return report,
                Err(Setback::Refused(reason)) => {
                    return with_error(job.report(CopyStatus::Refused), reason)
                }
                Err(Setback::Retry {
                    error,
                    link_gone,
                    lasting,
                }) => (error, link_gone, lasting),
            };
            lasting_failures += u32::from(lasting);
            let next_try = OffsetDateTime::now_utc() + backoff;
            let expired = job.expires_at.is_some_and(|at| next_try >= at);
            if lasting_failures >= LASTING_ATTEMPTS && !expired {
                let error = format!("{error}, {lasting_failures} times: not a transient status");
                return with_error(job.report(CopyStatus::Failed), error);
            }
            if expired || give_up_at.is_some_and(|at| next_try >= at) {
                // A dead link's 403 before its expiry (a retry giving up
                // early) is no proof it expired: `failed`.
                let status = if link_gone && expired {
                    CopyStatus::Expired
                } else {
                    CopyStatus::Failed
                };
                return with_error(job.report(status), error);
            }
            tracing::warn!(
                cdr_id = job.cdr_id, link = %source::redact(&job.url), %error,
                retry_in = ?backoff, "recording copy failed; trying again"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(LAST_RETRY);
        }
    }

    /// One download streamed into the store.
    async fn attempt(&self, job: &RecordingJob) -> Result<CopyReport, Setback> {
        let download = self.source.open(&job.url).await.map_err(setback)?;
        let content_type = download.content_type().map(str::to_owned);
        let name = store::object_name(
            job.call_date,
            &job.copy_id(),
            content_type.as_deref(),
            &job.url,
        );
        let stored = self
            .store
            .write(&name, download.into_stream(), self.max_bytes)
            .await
            .map_err(|error| match error {
                CopyError::Source(error) => setback(error),
                CopyError::TooLarge { .. } => Setback::Refused(error.to_string()),
                CopyError::Store(_) => Setback::Retry {
                    error: error.to_string(),
                    link_gone: false,
                    lasting: false,
                },
            })?;
        let mut report = job.report(CopyStatus::Stored);
        report.object_url = Some(stored.object_url);
        report.bytes = Some(stored.bytes);
        report.sha256 = Some(stored.sha256);
        report.content_type = content_type;
        report.stored_at = Some(OffsetDateTime::now_utc());
        Ok(report)
    }

    fn wait_on(&self, expires_at: Option<OffsetDateTime>, change: isize) {
        let Some(at) = expires_at else {
            return;
        };
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let count = waiting.entry(at).or_default();
        *count = count.saturating_add_signed(change);
        if *count == 0 {
            waiting.remove(&at);
        }
    }

    /// Seconds left on the most urgent link not yet copied (0 when none
    /// waits), for `superfone_recordings_next_expiry_seconds`.
    pub fn next_expiry_seconds(&self) -> f64 {
        let waiting = self.waiting.lock().expect("waiting lock");
        waiting.keys().next().map_or(0.0, |at| {
            (*at - OffsetDateTime::now_utc()).as_seconds_f64().max(0.0)
        })
    }
}

fn setback(error: SourceError) -> Setback {
    match &error {
        SourceError::Refused { reason } => Setback::Refused(reason.clone()),
        SourceError::Status { status } => Setback::Retry {
            link_gone: matches!(status.as_u16(), 403 | 404),
            lasting: !error.is_transient(),
            error: error.to_string(),
        },
        _ => Setback::Retry {
            error: error.to_string(),
            link_gone: false,
            lasting: false,
        },
    }
}

fn with_error(mut report: CopyReport, error: String) -> CopyReport {
    report.error = Some(error);
    report
}
