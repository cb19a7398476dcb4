//! Posting a fixed number of events to the bridge's webhook, closed loop:
//! `concurrency` clients, each sending the next event when its previous one
//! is answered, until every sequence number has been sent once. Event `seq`
//! is `Payloads::body(seq)` with group id `<run>-<phase>-<seq>`.

use crate::load::group_id;
use crate::payloads::Payloads;
use crate::processes::SECRET;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the webhook answered.
#[derive(Debug, Default)]
pub struct Posted {
    /// Answers by status (`error`: no answer).
    pub statuses: BTreeMap<String, u64>,
    /// The first answer that was not a 202, with its body.
    pub first_refusal: Option<String>,
    /// Request body bytes sent.
    pub body_bytes: u64,
    pub elapsed: Duration,
}

impl Posted {
    pub fn count(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

pub struct Target {
    pub uri: Uri,
    pub group_id_header: HeaderName,
    pub run: String,
    pub phase: String,
}

/// Posts events `0..count`.
pub async fn post_all(
    target: Target,
    payloads: Arc<Payloads>,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Posted> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build::<_, Full<Bytes>>(connector);
    let authorization = HeaderValue::from_str(&format!("Bearer {SECRET}"))?;
    let target = Arc::new(target);
    let next = Arc::new(AtomicU64::new(0));
    let posted = Arc::new(Mutex::new(Posted::default()));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, authorization) = (client.clone(), authorization.clone());
        let (target, payloads, next, posted) = (
            Arc::clone(&target),
            Arc::clone(&payloads),
            Arc::clone(&next),
            Arc::clone(&posted),
        );
        clients.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= count {
                    return;
                }
                let body = payloads.body(seq);
                let bytes = body.len() as u64;
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(target.uri.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(AUTHORIZATION, authorization.clone())
                    .header(
                        target.group_id_header.clone(),
                        group_id(&target.run, &target.phase, seq),
                    )
                    .body(Full::new(body))
                    .expect("a valid request");
                let answer = match client.request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.into_body().collect().await;
                        body.map(|body| (status, body.to_bytes())).ok()
                    }
                    Err(_) => None,
                };
                let mut posted = posted.lock().expect("posted lock");
                posted.body_bytes += bytes;
                let label = answer
                    .as_ref()
                    .map_or("error".to_owned(), |(status, _)| status.to_string());
                if label != "202" && posted.first_refusal.is_none() {
                    posted.first_refusal = Some(match &answer {
                        Some((status, body)) => {
                            format!("{status}: {}", String::from_utf8_lossy(body))
                        }
                        None => "no answer".to_owned(),
                    });
                }
                *posted.statuses.entry(label).or_default() += 1;
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let mut posted = Arc::into_inner(posted)
        .expect("clients finished")
        .into_inner()
        .expect("posted lock");
    posted.elapsed = started.elapsed();
    Ok(posted)
}
