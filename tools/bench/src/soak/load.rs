//! The soak's load: many leads at once, each lead's events strictly one
//! after another (the next is sent once the previous one is answered, as
//! Superfone sends them), at a steady overall rate that does not catch up
//! after a stall. Each event is a TASK_CHANGE keyed by its lead's
//! `contact_id`, with the group id `<run>-<contact>-<n>`: `n` counts that
//! lead's events, so the order the bridge answered them in is `n`'s order.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Contact ids of the soak's leads start here.
pub const CONTACT_BASE: u64 = 7_000_000;
/// Longer than any answer the bridge should take (its deadline, a spool fsync).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a request got no answer (the bridge is down or restarting).
const DOWN_PAUSE: Duration = Duration::from_millis(200);

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, with the body's `status` (`published`, `spooled`, ...).
    Accepted { status: u16, published: bool },
    /// Any other HTTP status.
    Refused(u16),
    /// Sent (or maybe sent) but never answered: the bridge died mid-request,
    /// or the answer took longer than `ANSWER_TIMEOUT`.
    NoAnswer,
    /// No connection: nothing was sent.
    NotConnected,
}

/// One request of the load.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub contact: u64,
    pub n: u32,
    pub outcome: Outcome,
    pub millis: u32,
}

pub struct Load {
    pub url: Uri,
    pub run: String,
    pub template: Value,
    pub group_id_header: HeaderName,
    pub authorization: HeaderValue,
    pub contacts: u64,
    pub workers: usize,
    pub rate: f64,
    pub duration: Duration,
}

impl Load {
    /// Runs every worker to the end of the duration; returns every request.
    pub async fn run(self) -> Vec<Sent> {
        let load = Arc::new(self);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(load.workers)
            .build(connector);
        let deadline = Instant::now() + load.duration;
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..load.workers {
            let (load, client) = (load.clone(), client.clone());
            workers.spawn(async move { load.worker(worker, &client, deadline).await });
        }
        let mut sent = Vec::new();
        while let Some(done) = workers.join_next().await {
            sent.extend(done.expect("a load worker panicked"));
        }
        sent
    }

    /// Worker `index` owns the leads `index, index + workers, ...` and sends
    /// to them in turn, each request after the previous one's answer.
    async fn worker(
        &self,
        index: usize,
        client: &Client<HttpConnector, Full<Bytes>>,
        deadline: Instant,
    ) -> Vec<Sent> {
        let leads: Vec<u64> = (index as u64..self.contacts)
            .step_by(self.workers)
            .map(|lead| CONTACT_BASE + lead)
            .collect();
        if leads.is_empty() {
            return Vec::new();
        }
        let mut next_n = vec![0u32; leads.len()];
        let interval = Duration::from_secs_f64(self.workers as f64 / self.rate);
        let mut next_at = Instant::now() + interval.mul_f64(index as f64 / self.workers as f64);
        let mut sent = Vec::new();
        for turn in 0.. {
            tokio::time::sleep_until(next_at.into()).await;
            if Instant::now() >= deadline {
                break;
            }
            // A steady rate: after a stall the load goes on, it does not burst.
            next_at = (next_at + interval).max(Instant::now());
            let slot = turn % leads.len();
            let (contact, n) = (leads[slot], next_n[slot]);
            next_n[slot] += 1;
            let started = Instant::now();
            let outcome = self.send(client, contact, n).await;
            sent.push(Sent {
                contact,
                n,
                outcome,
                millis: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
            });
            if matches!(outcome, Outcome::NoAnswer | Outcome::NotConnected) {
                tokio::time::sleep(DOWN_PAUSE).await;
            }
        }
        sent
    }

    async fn send(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        contact: u64,
        n: u32,
    ) -> Outcome {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, self.authorization.clone())
            .header(
                self.group_id_header.clone(),
                format!("{}-{contact}-{n}", self.run),
            )
            .body(Full::new(self.body(contact, n)))
            .expect("valid request");
        let answer = async {
            let response = client.request(request).await.map_err(|error| {
                if error.is_connect() {
                    Outcome::NotConnected
                } else {
                    Outcome::NoAnswer
                }
            })?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| Outcome::NoAnswer)?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Ok(Outcome::Refused(status));
            }
            let published = serde_json::from_slice::<Value>(&body)
                .is_ok_and(|body| body["status"] == "published");
            Ok::<Outcome, Outcome>(Outcome::Accepted { status, published })
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(outcome) | Err(outcome)) => outcome,
            Err(_) => Outcome::NoAnswer,
        }
    }

    /// Lead `contact`'s event `n`: unique, so never answered as a duplicate.
    fn body(&self, contact: u64, n: u32) -> Bytes {
        let mut event = self.template.clone();
        event["contact_id"] = contact.into();
        event["task_id"] = (contact + 1_000_000_000).into();
        event["updated_value"] = n.to_string().into();
        Bytes::from(serde_json::to_vec(&event).expect("JSON"))
    }
}
