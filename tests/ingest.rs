//! End to end on the real broker and registry: each seed payload of the vendor's
//! payload reference is posted to the real bridge binary, read back from its
//! topic and decoded by Confluent's own Python AvroDeserializer, and must equal
//! the input field by field (with the mappings documented in the schemas).
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use support::{consume, fixture, post, post_with, Bridge, BridgeOptions, SECRET};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const EVENTS: [&str; 10] = [
    "ALL_CALLS",
    "MISSED_CALL",
    "CDR_RECORDING_AVAILABLE",
    "CDR_SUMMARY_READY",
    "CUSTOMER_CREATE",
    "CUSTOMER_CHANGE",
    "TASK_CREATE",
    "TASK_CHANGE",
    "TASK_NOTIFY_TIME",
    "TASK_DUE_TIME",
];
const TIMESTAMP_FIELDS: [&str; 3] = ["cdr_start", "cdr_answer", "cdr_end"];

fn instant(text: &str) -> i128 {
    OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .unix_timestamp_nanos()
        / 1_000_000
}

/// JSON equality where numbers compare by value (Avro doubles decode as 142.0).
fn same_json(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.iter()
                .all(|(k, v)| same_json(v, b.get(k).unwrap_or(&Value::Null)))
                && b.iter().all(|(k, v)| a.contains_key(k) || v.is_null())
        }
        _ => expected == actual,
    }
}

/// Asserts the decoded record equals the posted payload under the documented mappings.
fn assert_round_trip(input: &Map<String, Value>, decoded: &Map<String, Value>) {
    let event = input["event"].as_str().unwrap();
    for (field, expected) in input {
        let actual = decoded
            .get(field)
            .unwrap_or_else(|| panic!("{event}.{field} missing from the decoded record"));
        match field.as_str() {
            _ if expected.is_null() => assert!(actual.is_null(), "{event}.{field}: {actual}"),
            name if TIMESTAMP_FIELDS.contains(&name) => assert_eq!(
                instant(expected.as_str().unwrap()),
                instant(actual.as_str().unwrap()),
                "{event}.{field}"
            ),
            "updated_value" => {
                let parsed: Value = serde_json::from_str(actual.as_str().unwrap()).unwrap();
                assert_eq!(&parsed, expected, "{event}.updated_value");
            }
            "contact_custom_fields" => {
                let actual = actual.as_object().unwrap();
                let parsed: Map<String, Value> = actual
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::from_str(v.as_str().unwrap()).unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(
                    &Value::Object(parsed),
                    expected,
                    "{event}.contact_custom_fields"
                );
            }
            _ => assert!(
                same_json(expected, actual),
                "{event}.{field}: expected {expected}, decoded {actual}"
            ),
        }
    }
    // Absent is not null: each nullable member the input lacked is null and
    // listed in absent_fields (the field itself is never null).
    let absent = decoded["absent_fields"].as_array().expect("absent_fields");
    for (field, actual) in decoded {
        if !input.contains_key(field) && field != "absent_fields" {
            assert!(
                actual.is_null(),
                "{event}.{field} absent from the input but decoded as {actual}"
            );
            assert_eq!(
                absent.contains(&Value::from(format!("/{field}"))),
                field != "unmapped_fields_json",
                "{event}.{field}: absent_fields {absent:?}"
            );
        }
    }
}

fn expected_key(payload: &Value) -> Option<String> {
    ["contact_id", "cdr_phone", "cdr_uuid", "cdr_id"]
        .iter()
        .find_map(|field| match &payload[*field] {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_payload_round_trips_through_confluents_deserializer() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let mut schema_ids = BTreeMap::new();
    for event in EVENTS {
        let input = fixture(event);
        let (status, body) = post(&client, &bridge, input.to_string()).await;
        assert_eq!(status, 200, "{event}: {body}");
        assert_eq!(body["status"], "published");
        assert_eq!(body["event"], event);
        assert_eq!(body["topic"], bridge.topic(event));
        let group_id = body["group_id"].as_str().unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(group_id).unwrap().get_version_num(),
            7,
            "generated ids are UUID v7"
        );

        let records = consume(&bridge.topic(event), 1, false);
        assert_eq!(records.len(), 1, "{event}: exactly one record");
        let record = &records[0];
        assert_eq!(record["magic"], 0, "Confluent wire format");
        assert_eq!(record["schema_id"], body["schema_id"]);
        assert_eq!(record["partition"], body["partition"]);
        assert_eq!(record["offset"], body["offset"]);
        assert_eq!(
            record["key"].as_str().map(str::to_owned),
            expected_key(&input),
            "{event} key"
        );
        let headers = &record["headers"];
        assert_eq!(headers["superfone-event"], event);
        assert_eq!(headers["superfone-group-id"], group_id);
        assert_eq!(headers["content-type"], "application/vnd.confluent.avro");
        instant(headers["superfone-received-at"].as_str().unwrap());
        assert_round_trip(
            input.as_object().unwrap(),
            record["value"].as_object().unwrap(),
        );
        schema_ids.insert(event, body["schema_id"].as_u64().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = schema_ids.values().collect();
    assert_eq!(distinct.len(), 10, "one schema per event: {schema_ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_kept_and_any_json_values_are_lossless() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let values = [
        json!("COMPLETED"),
        json!(42),
        json!({"id": 10, "title": "Qualified"}),
        json!([1, "a", null]),
        json!(true),
    ];
    for (index, value) in values.iter().enumerate() {
        let mut input = fixture("CUSTOMER_CHANGE");
        input["updated_value"] = value.clone();
        input["contact_custom_fields"] =
            json!({"City": "Pune", "Budget": 5000, "Tags": ["a", 1], "Meta": {"k": null}});
        input["lead_score"] = json!(index);
        input["contact_phones"][0]["label"] = json!("work");
        input["group_id_ref"] = json!(format!("grp-{index}"));
        let (status, body) = post(&client, &bridge, input.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["group_id"],
            format!("grp-{index}"),
            "the body's group_id_ref is the group id"
        );
    }
    let records = consume(&bridge.topic("CUSTOMER_CHANGE"), values.len(), false);
    assert_eq!(records.len(), values.len());
    let mut records = records;
    records.sort_by_key(|r| r["offset"].as_i64());
    for (index, (record, value)) in records.iter().zip(&values).enumerate() {
        let decoded = record["value"].as_object().unwrap();
        let updated: Value =
            serde_json::from_str(decoded["updated_value"].as_str().unwrap()).unwrap();
        assert_eq!(&updated, value);
        let unmapped: Value =
            serde_json::from_str(decoded["unmapped_fields_json"].as_str().unwrap()).unwrap();
        assert_eq!(
            unmapped,
            json!({"/contact_phones/0/label": "work", "/lead_score": index, "/group_id_ref": format!("grp-{index}")})
        );
        assert_eq!(decoded["contact_phones"][0]["phone"], "+918000000001");
        assert_eq!(
            record["headers"]["superfone-group-id"],
            format!("grp-{index}")
        );
    }

    // A configured group-id header wins over the body.
    let input = fixture("TASK_CREATE");
    let auth = format!("Bearer {SECRET}");
    let headers = [("x-superfone-group-id", "from-header")];
    let (status, body) = post_with(
        &client,
        &bridge.ingest_url(),
        input.to_string(),
        Some(&auth),
        &headers,
    )
    .await;
    assert_eq!(
        (status, body["group_id"].as_str()),
        (200, Some("from-header"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_one_lead_stay_in_order_on_one_partition() {
    const CONTACTS: i64 = 4;
    const PER_CONTACT: i64 = 30;
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let mut senders = Vec::new();
    for contact in 0..CONTACTS {
        let client = client.clone();
        let url = bridge.ingest_url();
        senders.push(tokio::spawn(async move {
            // Superfone delivers one lead's events one after another.
            for sequence in 0..PER_CONTACT {
                let mut input = fixture("TASK_CHANGE");
                input["contact_id"] = json!(1000 + contact);
                input["task_id"] = json!(5000 + contact);
                input["updated_value"] = json!(sequence);
                let auth = format!("Bearer {SECRET}");
                let (status, body) =
                    post_with(&client, &url, input.to_string(), Some(&auth), &[]).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let records = consume(
        &bridge.topic("TASK_CHANGE"),
        (CONTACTS * PER_CONTACT) as usize,
        false,
    );
    assert_eq!(records.len(), (CONTACTS * PER_CONTACT) as usize);
    let mut by_key: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for record in &records {
        let sequence: i64 =
            serde_json::from_str(record["value"]["updated_value"].as_str().unwrap()).unwrap();
        by_key
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                record["partition"].as_i64().unwrap(),
                record["offset"].as_i64().unwrap(),
                sequence,
            ));
    }
    assert_eq!(by_key.len(), CONTACTS as usize);
    for (key, mut entries) in by_key {
        let partitions: std::collections::BTreeSet<_> = entries.iter().map(|e| e.0).collect();
        assert_eq!(
            partitions.len(),
            1,
            "contact {key} spread over {partitions:?}"
        );
        entries.sort_by_key(|e| e.1);
        let sequences: Vec<i64> = entries.iter().map(|e| e.2).collect();
        assert_eq!(
            sequences,
            (0..PER_CONTACT).collect::<Vec<_>>(),
            "contact {key} out of order"
        );
    }
}

/// The payload reference includes contact fields only "when the event is
/// associated with a CRM contact": a task event may come without any. It is
/// a valid event, published with null contact fields and keyed by its task.
#[tokio::test(flavor = "multi_thread")]
async fn task_events_without_a_contact_are_published_keyed_by_task() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    for (n, event) in [
        "TASK_CREATE",
        "TASK_CHANGE",
        "TASK_NOTIFY_TIME",
        "TASK_DUE_TIME",
    ]
    .into_iter()
    .enumerate()
    {
        let mut payload = fixture(event);
        let object = payload.as_object_mut().unwrap();
        object.retain(|field, _| !field.starts_with("contact_"));
        let task_id = 880_000 + n as i64;
        object.insert("task_id".into(), json!(task_id));
        object.insert("cdr_phone".into(), json!("+918000000001"));
        let (status, reply) = post(&client, &bridge, payload.to_string()).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{event}: {reply}"
        );
        let records = consume(&bridge.topic(event), 1, false);
        let record = &records[0];
        assert_eq!(
            record["key"],
            json!(task_id.to_string()),
            "{event} keyed by task_id"
        );
        let value = record["value"].as_object().unwrap();
        assert!(value["contact_id"].is_null(), "{event}: {value:?}");
        assert!(value["contact_first_name"].is_null(), "{event}: {value:?}");
        assert_eq!(value["task_id"], json!(task_id));
    }
}

/// `server.worker_threads`: by default one fewer runtime worker than the
/// CPUs (at least one), leaving a core to librdkafka's broker thread; a set
/// value is taken as it is. Either way the bridge publishes.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_leaves_a_core_to_librdkafka_unless_told_otherwise() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let client = support::client();
    for (option, expected) in [(None, cpus.saturating_sub(1).max(1)), (Some(3), 3)] {
        let mut options = BridgeOptions::default();
        if let Some(workers) = option {
            options = options.with("SERVER__WORKER_THREADS", workers);
        }
        let bridge = Bridge::start(options);
        let status: Value = client
            .get(bridge.admin_url("/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            status["runtime"]["workers"],
            json!(expected),
            "worker_threads {option:?} on {cpus} CPUs"
        );
        let (status, reply) = post(&client, &bridge, fixture("ALL_CALLS").to_string()).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{reply}"
        );
    }
}
