//! Duplicate suppression against the real bridge and broker: a repeat is
//! suppressed only when it is identical to the latest event of its entity,
//! so genuine changes (a lead stage moved back, a reminder firing again after
//! its task was rescheduled) are all published.
#![cfg(feature = "e2e")]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::{consume, fixture, post, Bridge, BridgeOptions};

fn lead_stage(contact: i64, stage: &str) -> Value {
    let mut event = fixture("CUSTOMER_CHANGE");
    event["contact_id"] = json!(contact);
    event["updated_key"] = json!("lead_stage");
    event["updated_value"] = json!({ "title": stage });
    event["contact_lead_stage_name"] = json!(stage);
    event
}

fn statuses(replies: &[(u16, Value)]) -> Vec<String> {
    replies
        .iter()
        .map(|(status, body)| format!("{status} {}", body["status"].as_str().unwrap_or("?")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_stage_changed_back_is_published_every_time() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let mut replies = Vec::new();
    for stage in ["Interested", "Not interested", "Interested"] {
        replies.push(post(&client, &bridge, lead_stage(555, stage).to_string()).await);
    }
    assert_eq!(
        statuses(&replies),
        ["200 published", "200 published", "200 published"]
    );
    let records = consume(&bridge.topic("CUSTOMER_CHANGE"), 3, false);
    let stages: Vec<&str> = records
        .iter()
        .map(|r| r["value"]["contact_lead_stage_name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["Interested", "Not interested", "Interested"]);
    // A true repeat of the latest event is still suppressed.
    let (status, body) = post(&client, &bridge, lead_stage(555, "Interested").to_string()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(body["offset"], records[2]["offset"], "points at the latest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_after_a_reschedule_is_published_again() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let reminder = fixture("TASK_NOTIFY_TIME").to_string();
    let mut reschedule = fixture("TASK_CHANGE");
    reschedule["task_id"] = fixture("TASK_NOTIFY_TIME")["task_id"].clone();
    reschedule["updated_key"] = json!("task_due_date");
    reschedule["updated_value"] = json!("2026-05-16T10:00:00.000Z");
    let replies = vec![
        post(&client, &bridge, reminder.clone()).await,
        post(&client, &bridge, reschedule.to_string()).await,
        post(&client, &bridge, reminder).await,
    ];
    assert_eq!(
        statuses(&replies),
        ["200 published", "200 published", "200 published"]
    );
    assert_eq!(
        consume(&bridge.topic("TASK_NOTIFY_TIME"), 2, false).len(),
        2
    );
    assert_eq!(consume(&bridge.topic("TASK_CHANGE"), 1, false).len(), 1);
}

/// `777.0` is the same id as `777`: the same key (so the same partition) and
/// the same event for dedup; `-0` keys as `0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_written_as_whole_floats_key_and_dedup_like_integers() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let mut event = fixture("TASK_CREATE");
    event["contact_id"] = json!(777);
    event["task_id"] = json!(4242);
    let first = post(&client, &bridge, event.to_string()).await;
    event["contact_id"] = json!(777.0);
    event["task_id"] = json!(4242.0);
    let again = post(&client, &bridge, event.to_string()).await;
    assert_eq!(
        statuses(&[first, again]),
        ["200 published", "200 duplicate"]
    );
    event["contact_id"] = json!(-0.0);
    event["task_id"] = json!(1);
    let zero = post(&client, &bridge, event.to_string()).await;
    assert_eq!(zero.1["status"], "published", "{zero:?}");
    let records = consume(&bridge.topic("TASK_CREATE"), 2, false);
    let mut keys: Vec<&str> = records.iter().map(|r| r["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["0", "777"]);
}

/// The shared test registry behind a gate: while closed, every call naming
/// `subject` is answered 503, so that schema gets no id and its events wait
/// in the spool (the replay waits for the id) while the other events are
/// published at once.
struct RegistryGate {
    port: u16,
    closed: Arc<AtomicBool>,
}

impl RegistryGate {
    async fn start(subject: String) -> RegistryGate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed = Arc::new(AtomicBool::new(true));
        let gate = Arc::new((Arc::clone(&closed), subject, support::stack().registry_url));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (gate, client) = (Arc::clone(&gate), client.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        forward(request, Arc::clone(&gate), client.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RegistryGate { port, closed }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}

/// One registry call through the gate: refused while it is closed and the
/// call names its subject, else forwarded to the registry and its answer
/// returned.
async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    gate: Arc<(Arc<AtomicBool>, String, String)>,
    client: reqwest::Client,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (closed, subject, upstream) = &*gate;
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |path| path.as_str().to_owned());
    if closed.load(Ordering::SeqCst) && path.contains(subject.as_str()) {
        let mut refused = hyper::Response::new(Full::new(Bytes::from_static(b"gate closed")));
        *refused.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(refused);
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut headers = parts.headers;
    headers.remove(hyper::header::HOST);
    let answer = client
        .request(parts.method, format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let mut response = hyper::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap();
    Ok(response.body(Full::new(body)).unwrap())
}

/// A task's reminder A is spooled (its schema has no registry id yet, so
/// it waits in the spool), the task is reassigned to another contact (B:
/// another Kafka key, so it is not held behind A and goes straight to
/// Kafka), and the bridge restarts with A still in the spool. The same
/// reminder posted again is news after B: A -> B -> A, which must be
/// published, not answered `duplicate` from the A that waited in the spool.
/// The dedup window rebuilt from the spool once remembered A as the task's
/// latest event and answered the last A `duplicate`: it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_back_across_a_restart_is_published_not_a_duplicate() {
    let prefix = support::unique_prefix();
    let gate = RegistryGate::start(format!("{prefix}task_notify_time-value")).await;
    let spool = tempfile::tempdir().unwrap();
    let options = || BridgeOptions {
        prefix: prefix.clone(),
        spool_dir: Some(spool.path().to_owned()),
        registry_url: Some(gate.url()),
        ..BridgeOptions::default()
    };
    let client = support::client();
    let reminder = fixture("TASK_NOTIFY_TIME");
    let mut reassigned = fixture("TASK_CHANGE");
    reassigned["task_id"] = reminder["task_id"].clone();
    reassigned["contact_id"] = json!(reminder["contact_id"].as_i64().unwrap() + 1);
    reassigned["updated_key"] = json!("contact_id");
    reassigned["updated_value"] = reassigned["contact_id"].clone();

    let first = Bridge::start(options());
    let replies = vec![
        post(&client, &first, reminder.to_string()).await,
        post(&client, &first, reassigned.to_string()).await,
    ];
    assert_eq!(
        statuses(&replies),
        ["202 spooled", "200 published"],
        "A waits in the spool for its schema id; B, keyed by another contact, does not wait behind it"
    );
    drop(first); // killed: A stays in the spool

    let second = Bridge::start(options());
    let again = post(&client, &second, reminder.to_string()).await;
    assert_eq!(
        statuses(std::slice::from_ref(&again)),
        ["202 spooled"],
        "A after B is news, even across a restart: {again:?}"
    );
    gate.open();
    let reminders = consume(&second.topic("TASK_NOTIFY_TIME"), 2, false);
    assert_eq!(
        reminders.len(),
        2,
        "both reminders reach Kafka: {reminders:?}"
    );
    assert_eq!(consume(&second.topic("TASK_CHANGE"), 1, false).len(), 1);
}
