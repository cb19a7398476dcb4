//! Duplicate suppression against the real bridge and broker: a repeat is
//! suppressed only when it is identical to the latest event of its entity,
//! so genuine changes (a lead stage moved back, a reminder firing again after
//! its task was rescheduled) are all published.
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
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
