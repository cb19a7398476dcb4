//! The load generator: a target (an HTTP endpoint, or the Kafka producer
//! straight) driven closed-loop (fixed concurrency, as fast as it answers) or
//! open-loop (a fixed request rate, latency measured from each request's
//! *scheduled* start, so a stall is not hidden by coordinated omission).
//!
//! Every request carries a group id `<run>-<phase>-<seq>`; a phase keeps the
//! sequence numbers its target accepted, for checking on the broker later.

use crate::payloads::Payloads;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use superfone_bridge::durability::kafka::Publisher;
use superfone_bridge::vocabulary::headers::GROUP_ID_HEADER;
use superfone_bridge::vocabulary::Record;
use tokio::sync::Semaphore;

/// Requests an open-loop phase lets wait for an answer at once; later ones
/// queue (and their wait counts in their latency).
const MAX_OUTSTANDING: usize = 1024;

/// What a phase sends to.
pub enum Target {
    /// POSTs of the seed payloads; 2xx counts as accepted.
    Http(Box<HttpTarget>),
    /// The bridge's own producer with records the bridge's converter made
    /// from the same payloads; an acknowledged produce counts as accepted.
    /// With several producers, each key always goes to the same one, so
    /// each lead stays ordered.
    Kafka {
        publishers: Vec<Publisher>,
        records: Vec<Record>,
    },
}

pub struct HttpTarget {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    authorization: HeaderValue,
    group_id_header: HeaderName,
    payloads: Arc<Payloads>,
    /// Numbers bodies across phases: a body repeated in a later phase would
    /// be (rightly) answered as a duplicate and not published.
    next_body: AtomicU64,
}

/// How the target answered one request.
enum Answer {
    /// HTTP status (200 and 202 are accepted), or 200 for a Kafka ack.
    Status(u16),
    /// No answer: connection or produce error.
    Failed,
}

impl Target {
    pub fn http(
        uri: Uri,
        secret: &str,
        group_id_header: &str,
        payloads: Arc<Payloads>,
    ) -> anyhow::Result<Target> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Ok(Target::Http(Box::new(HttpTarget {
            client,
            uri,
            authorization: HeaderValue::from_str(&format!("Bearer {secret}"))?,
            group_id_header: HeaderName::from_bytes(group_id_header.as_bytes())?,
            payloads,
            next_body: AtomicU64::new(0),
        })))
    }

    async fn send(&self, group_id: String, seq: u64) -> Answer {
        match self {
            Target::Http(http) => {
                let body = http
                    .payloads
                    .body(http.next_body.fetch_add(1, Ordering::Relaxed));
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(http.uri.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(AUTHORIZATION, http.authorization.clone())
                    .header(http.group_id_header.clone(), group_id)
                    .body(Full::new(body))
                    .expect("valid request");
                let Ok(response) = http.client.request(request).await else {
                    return Answer::Failed;
                };
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => Answer::Status(status),
                    Err(_) => Answer::Failed,
                }
            }
            Target::Kafka {
                publishers,
                records,
            } => {
                let mut record = records[(seq % records.len() as u64) as usize].clone();
                if let Some((_, value)) = record
                    .headers
                    .iter_mut()
                    .find(|(name, _)| name == GROUP_ID_HEADER)
                {
                    *value = group_id;
                }
                let publisher = &publishers[shard(record.key.as_deref(), publishers.len())];
                match publisher.publish(&record).await {
                    Ok(_) => Answer::Status(200),
                    Err(_) => Answer::Failed,
                }
            }
        }
    }
}

/// The producer (of `producers`) that sends records with `key`: the same
/// one for every record of a key. With one producer nothing is hashed: the
/// broker ceiling measures this process, so it does no work of its own.
fn shard(key: Option<&str>, producers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    if producers == 1 {
        return 0;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % producers as u64) as usize
}

/// What one phase measured on the client side.
#[derive(Debug)]
pub struct PhaseResult {
    pub name: String,
    pub sent: u64,
    /// Sequence numbers answered 2xx / acknowledged.
    pub accepted: Vec<u64>,
    pub statuses: BTreeMap<String, u64>,
    /// Microseconds, from the scheduled (open loop) or actual (closed loop) start.
    pub latency: Histogram<u64>,
    /// First request sent to last answer received.
    pub elapsed: Duration,
}

struct Tally {
    sent: u64,
    accepted: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            accepted: Vec::new(),
            statuses: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
        }
    }

    fn add(&mut self, seq: u64, answer: Answer, latency: Duration) {
        self.sent += 1;
        let label = match answer {
            Answer::Status(status) => {
                if (200..300).contains(&status) {
                    self.accepted.push(seq);
                }
                status.to_string()
            }
            Answer::Failed => "error".to_string(),
        };
        *self.statuses.entry(label).or_default() += 1;
        self.latency
            .saturating_record(latency.as_micros().max(1) as u64);
    }

    fn finish(self, name: &str, elapsed: Duration) -> PhaseResult {
        PhaseResult {
            name: name.to_owned(),
            sent: self.sent,
            accepted: self.accepted,
            statuses: self.statuses,
            latency: self.latency,
            elapsed,
        }
    }
}

/// The group id of request `seq` of a phase.
pub fn group_id(run: &str, phase: &str, seq: u64) -> String {
    format!("{run}-{phase}-{seq}")
}

/// `concurrency` clients, each sending its next request when the previous
/// one is answered, until `duration` has passed.
pub async fn closed_loop(
    target: Arc<Target>,
    run: &str,
    phase: &str,
    concurrency: usize,
    duration: Duration,
) -> PhaseResult {
    let next_seq = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::new()));
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (target, next_seq, tally) = (target.clone(), next_seq.clone(), tally.clone());
        let (run, phase) = (run.to_owned(), phase.to_owned());
        clients.spawn(async move {
            while Instant::now() < deadline {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let sent_at = Instant::now();
                let answer = target.send(group_id(&run, &phase, seq), seq).await;
                let latency = sent_at.elapsed();
                tally.lock().expect("tally").add(seq, answer, latency);
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let tally = Arc::into_inner(tally).expect("clients finished");
    tally.into_inner().expect("tally").finish(phase, elapsed)
}

/// `rate` requests per second on a fixed schedule for `duration`, whether or
/// not earlier ones were answered.
pub async fn open_loop(
    target: Arc<Target>,
    run: &str,
    phase: &str,
    rate: f64,
    duration: Duration,
) -> PhaseResult {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let outstanding = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    let tally = Arc::new(Mutex::new(Tally::new()));
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for seq in 0..total {
        let scheduled = started + Duration::from_secs_f64(seq as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let (target, outstanding, tally) = (target.clone(), outstanding.clone(), tally.clone());
        let group_id = group_id(run, phase, seq);
        requests.spawn(async move {
            let _permit = outstanding.acquire_owned().await.expect("semaphore open");
            let answer = target.send(group_id, seq).await;
            tally
                .lock()
                .expect("tally")
                .add(seq, answer, scheduled.elapsed());
        });
        // Reap finished requests as we go so the set stays small.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let tally = Arc::into_inner(tally).expect("requests finished");
    tally.into_inner().expect("tally").finish(phase, elapsed)
}
