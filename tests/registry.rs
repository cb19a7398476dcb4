//! Schema registry behaviour: the bridge's start-up registration (and its
//! refusals), and the test registry checked by Confluent's own client.
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use support::{consume, fixture, post, stack, Bridge, BridgeOptions};

async fn register(subject: &str, schema: &Value) -> (u16, Value) {
    let url = format!("{}/subjects/{subject}/versions", stack().registry_url);
    let body = json!({ "schema": schema.to_string() });
    let response = support::client()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_registered_schema_stops_startup_naming_the_subject() {
    let options = BridgeOptions::default();
    let subject = format!("{}all_calls-value", options.prefix);
    let legacy = json!({"type": "record", "name": "AllCalls", "namespace": "com.superfone.events",
                        "fields": [{"name": "legacy_id", "type": "string"}]});
    assert_eq!(register(&subject, &legacy).await.0, 200);

    // The check runs behind the open listener: the refusal stops the bridge.
    let failure = Bridge::run_until_it_stops(options);
    assert!(!failure.status.success());
    assert!(
        failure
            .logs
            .contains(&format!("rejected the schema for subject {subject}")),
        "{}",
        failure.logs
    );
    assert!(
        failure.logs.contains("incompatible"),
        "the registry's message is shown: {}",
        failure.logs
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auto_registration_missing_schemas_stop_startup_and_registered_ones_are_used() {
    let prefix = support::unique_prefix();
    let lookup_only = || {
        BridgeOptions {
            prefix: prefix.clone(),
            ..BridgeOptions::default()
        }
        .with("REGISTRY__AUTO_REGISTER", "false")
    };

    let failure = Bridge::run_until_it_stops(lookup_only());
    assert!(!failure.status.success(), "nothing registered yet");
    assert!(
        failure.logs.contains(&format!(
            "subject {prefix}all_calls-value has no matching schema"
        )),
        "{}",
        failure.logs
    );

    let registering = Bridge::start(BridgeOptions {
        prefix: prefix.clone(),
        ..BridgeOptions::default()
    });
    let client = support::client();
    let (_, first) = post(&client, &registering, fixture("TASK_CREATE").to_string()).await;
    drop(registering);

    let bridge = Bridge::start(lookup_only());
    let (status, reply) = post(&client, &bridge, fixture("TASK_CREATE").to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["schema_id"], first["schema_id"],
        "looked-up id is the registered one"
    );
    assert_eq!(consume(&bridge.topic("TASK_CREATE"), 2, false).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn record_name_strategy_registers_by_record_name() {
    let bridge =
        Bridge::start(BridgeOptions::default().with("REGISTRY__SUBJECT_STRATEGY", "record"));
    let client = support::client();
    let (status, reply) = post(&client, &bridge, fixture("TASK_DUE_TIME").to_string()).await;
    assert_eq!(status, 200, "{reply}");
    let url = format!(
        "{}/subjects/com.superfone.events.TaskDueTime/versions/latest",
        stack().registry_url
    );
    let latest: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(latest["id"], reply["schema_id"]);
    let records = consume(&bridge.topic("TASK_DUE_TIME"), 1, false);
    assert_eq!(records[0]["value"]["task_id"], 4567);
}

#[test]
fn the_test_registry_behaves_like_confluents_for_confluents_own_client() {
    let subject = format!("{}probe-value", support::unique_prefix());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/registry_client_check.py"
    );
    let output = support::stdout_of(std::process::Command::new(stack().python).args([
        script,
        &stack().registry_url,
        &subject,
    ]));
    let seen: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(seen["get_by_id_equal"], true);
    assert_eq!(seen["register_again_same_id"], true);
    assert_eq!(seen["id2_differs"], true);
    assert_eq!(
        seen["latest"],
        json!({"version": 2, "id_is_id2": true, "subject": subject})
    );
    assert_eq!(seen["versions"], json!([1, 2]));
    assert_eq!(seen["lookup_v1_version"], 1);
    assert_eq!(seen["compatible_v3"], false);
    assert_eq!(
        seen["incompatible"],
        json!({"http_status": 409, "error_code": 409})
    );
    assert_eq!(
        seen["missing_id"],
        json!({"http_status": 404, "error_code": 40403})
    );
    assert_eq!(seen["subject_listed"], true);
    assert_eq!(seen["wire_header"], json!([0, true]));
    assert_eq!(seen["round_trip"], json!({"a": "x", "b": 7}));
}
