//! The one-topic mode (`topics.single`, subjects by
//! `registry.subject_strategy = "topic_record"`): every event of a lead on
//! one partition in the order the bridge received them, each record decoded
//! by Confluent's deserializer by its schema id, the recording copier
//! reading the one topic, and the checks that refuse a shared topic under
//! the plain `topic` strategy.
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use support::source::{copying_options, recording_event, signed, Source};
use support::{consume, fixture, post, stack, Bridge, BridgeOptions};

/// Six kinds of event a lead goes through; each lead gets them in its own
/// order, so the topic interleaves leads and kinds.
const KINDS: [&str; 6] = [
    "CUSTOMER_CREATE",
    "TASK_CREATE",
    "CUSTOMER_CHANGE",
    "ALL_CALLS",
    "CDR_RECORDING_AVAILABLE",
    "TASK_CHANGE",
];

fn one_topic(prefix: &str) -> BridgeOptions {
    BridgeOptions {
        prefix: prefix.to_owned(),
        ..BridgeOptions::default()
    }
    .with("TOPICS__SINGLE", format!("{prefix}events"))
    .with("REGISTRY__SUBJECT_STRATEGY", "topic_record")
}

/// The record name of each event's schema, e.g. `com.superfone.events.AllCalls`.
fn record_name(event: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("schemas/{}.avsc", event.to_lowercase()));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    format!(
        "{}.{}",
        schema["namespace"].as_str().unwrap(),
        schema["name"].as_str().unwrap()
    )
}

/// The binary's command line in the one-topic mode under `prefix`, with a
/// secret strong enough for `check-config --online`.
fn one_topic_tool(prefix: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command
        .env_remove("SUPERFONE_BRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .env(
            "SUPERFONE_AUTH_SECRETS",
            "4f1c9a7e2b8d3f60a5c7e9b1d2f4a6c8e0b3d5f7a9c1e3b5",
        )
        .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", stack().brokers)
        .env("SUPERFONE_BRIDGE_REGISTRY__URL", stack().registry_url)
        .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", prefix)
        .env("SUPERFONE_BRIDGE_TOPICS__SINGLE", format!("{prefix}events"))
        .env(
            "SUPERFONE_BRIDGE_REGISTRY__SUBJECT_STRATEGY",
            "topic_record",
        );
    command
}

async fn latest_id(client: &reqwest::Client, subject: &str) -> u64 {
    let url = format!(
        "{}/subjects/{subject}/versions/latest",
        stack().registry_url
    );
    let latest: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    latest["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{subject}: {latest}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_leads_mixed_events_are_each_on_one_partition_in_arrival_order() {
    let prefix = support::unique_prefix();
    let bridge = Bridge::start(one_topic(&prefix));
    let client = support::client();
    let leads = [7001_i64, 7002, 7003, 7004];
    let mut sent: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for step in 0..KINDS.len() {
        for (index, lead) in leads.iter().enumerate() {
            let kind = KINDS[(step + index) % KINDS.len()];
            let mut event = fixture(kind);
            event["contact_id"] = json!(lead);
            let (status, reply) = post(&client, &bridge, event.to_string()).await;
            assert_eq!(status, 200, "{kind} of {lead}: {reply}");
            assert_eq!(reply["topic"], format!("{prefix}events"), "{reply}");
            sent.entry(lead.to_string())
                .or_default()
                .push((kind.to_owned(), step));
        }
    }
    let (status, reply) = post(&client, &bridge, "{not json").await;
    assert_eq!(
        (status, &reply["dead_letter"]["topic"]),
        (400, &json!(format!("{prefix}dead_letter")))
    );

    let records = consume(&format!("{prefix}events"), leads.len() * KINDS.len(), false);
    assert_eq!(records.len(), leads.len() * KINDS.len());
    let mut by_lead: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for record in &records {
        by_lead
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(record);
    }
    for (lead, mut got) in by_lead {
        got.sort_by_key(|r| r["offset"].as_i64());
        let partitions: Vec<_> = got.iter().map(|r| &r["partition"]).collect();
        assert!(
            partitions.iter().all(|p| *p == partitions[0]),
            "{lead}: {partitions:?}"
        );
        let events: Vec<_> = got
            .iter()
            .map(|r| r["headers"]["superfone-event"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<_> = sent[&lead].iter().map(|(kind, _)| kind.clone()).collect();
        assert_eq!(events, expected, "lead {lead} in arrival order");
        for record in &got {
            // Decoded by Confluent's AvroDeserializer by the id in its wire
            // header: the lead's own payload came back.
            assert_eq!(record["value"]["contact_id"].to_string(), lead, "{record}");
        }
    }
    // Each record's id is its event's schema under `<topic>-<record name>`,
    // the subject Confluent's TopicRecordNameStrategy names.
    for kind in KINDS {
        let subject = format!("{prefix}events-{}", record_name(kind));
        let id = latest_id(&client, &subject).await;
        let record = records
            .iter()
            .find(|r| r["headers"]["superfone-event"] == kind)
            .unwrap();
        assert_eq!(record["schema_id"], json!(id), "{subject}");
        assert_eq!(
            record["headers"]["superfone-schema-id"],
            json!(id.to_string())
        );
    }
    assert_eq!(consume(&format!("{prefix}dead_letter"), 1, true).len(), 1);
    drop(bridge);

    // check-config --online sees one event topic and a subject per record.
    let spool = tempfile::tempdir().unwrap();
    let output = one_topic_tool(&prefix)
        .args(["check-config", "--online"])
        .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let topic_lines = stdout
        .lines()
        .filter(|line| line.contains(" topic "))
        .count();
    assert_eq!(
        topic_lines, 2,
        "the one topic and the dead letters:\n{stdout}"
    );
    let subject = format!("subject {prefix}events-{}", record_name("ALL_CALLS"));
    assert!(stdout.contains(&subject), "{stdout}");
}

/// `schema drift` on the one topic credits an unknown member to the event
/// whose records carry it (told by the `superfone-event` header), not to
/// the other nine events read from the same topic; `--write-patch` patches
/// that event's schema only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_on_the_one_topic_credits_a_member_to_its_own_event_only() {
    let prefix = support::unique_prefix();
    let bridge = Bridge::start(one_topic(&prefix));
    let client = support::client();
    let mut task = fixture("TASK_CHANGE");
    task["vendor_new_thing"] = json!("new");
    for event in [task, fixture("ALL_CALLS")] {
        let (status, reply) = post(&client, &bridge, event.to_string()).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["topic"], format!("{prefix}events"), "{reply}");
    }
    drop(bridge);

    let patch = tempfile::tempdir().unwrap();
    let drift = |extra: &[&str]| -> Vec<Value> {
        support::stdout_of(
            one_topic_tool(&prefix)
                .args(["schema", "drift", "--from-beginning"])
                .args(extra),
        )
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
    };
    let lines = drift(&[]);
    let reported: Vec<_> = lines
        .iter()
        .map(|l| (&l["event"], &l["pointer"], &l["count"], &l["records_read"]))
        .collect();
    assert_eq!(
        reported,
        [(
            &json!("TASK_CHANGE"),
            &json!("/vendor_new_thing"),
            &json!(1),
            &json!(1)
        )],
        "{lines:#?}"
    );

    let lines = drift(&["--write-patch", patch.path().to_str().unwrap()]);
    let patched: Vec<_> = lines
        .iter()
        .filter(|l| l.get("patched").is_some())
        .map(|l| (&l["event"], &l["added"]))
        .collect();
    assert_eq!(
        patched,
        [(&json!("TASK_CHANGE"), &json!(["/vendor_new_thing"]))],
        "{lines:#?}"
    );
    let mut schemas = 0;
    for entry in std::fs::read_dir(patch.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".avsc") {
            continue;
        }
        schemas += 1;
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        let gained = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|field| field["name"] == "vendor_new_thing");
        assert_eq!(gained, name == "task_change.avsc", "{name}");
    }
    assert_eq!(schemas, 10, "one schema per event");
}

/// The recording copier reads the one topic and copies the recording
/// events only: the others, told by their `superfone-event` header, end in
/// no pointer record (taken for recordings, each ended `failed`: no link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copier_on_the_one_topic_copies_recording_events_only() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let options = copying_options(
        &format!("file://{}", store.path().display()),
        Some(prefix.clone()),
    )
    .with("TOPICS__SINGLE", format!("{prefix}events"))
    .with("REGISTRY__SUBJECT_STRATEGY", "topic_record");
    let bridge = Bridge::start(options);
    let client = support::client();
    let link = source.link(
        "4001.mp3",
        2048,
        &signed(time::Duration::minutes(1)),
        604_800,
        "",
    );
    for event in [
        fixture("ALL_CALLS"),
        recording_event(4001, 12345, &link),
        fixture("MISSED_CALL"),
        fixture("TASK_CREATE"),
    ] {
        let (status, reply) = post(&client, &bridge, event.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    let pointers = consume(&format!("{prefix}recording_copies"), 1, false);
    let statuses: Vec<_> = pointers.iter().map(|p| &p["value"]["status"]).collect();
    assert_eq!(statuses, ["stored"], "{pointers:#?}");
    assert_eq!(pointers[0]["value"]["cdr_id"], 4001);
    assert_eq!(source.requests(), 1);
}

/// Start-up refuses a shared topic under the plain `topic` strategy, and
/// `check-config` one topic named for two events without the one-topic
/// mode, each saying why.
#[test]
fn a_shared_topic_is_refused_without_the_mode_and_its_strategy() {
    let prefix = support::unique_prefix();
    let options = BridgeOptions::default()
        .with("TOPICS__SINGLE", format!("{prefix}events"))
        .with("REGISTRY__SUBJECT_STRATEGY", "topic");
    let Err(failure) = Bridge::try_start(options) else {
        panic!("the bridge started");
    };
    assert_eq!(failure.status.code(), Some(1));
    for words in [
        format!("share the one subject `{prefix}events-value`"),
        "topic_record".to_owned(),
    ] {
        assert!(failure.logs.contains(&words), "{words}: {}", failure.logs);
    }

    // Environment keys are lower-cased, and [topics.names] is keyed by the
    // event's upper-case name: a file.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        "[registry]\nsubject_strategy = \"topic_record\"\n\
         [topics.names]\nALL_CALLS = \"calls\"\nMISSED_CALL = \"calls\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"))
        .args(["--config", config.to_str().unwrap(), "check-config"])
        .env_remove("SUPERFONE_BRIDGE_CONFIG")
        .env("SUPERFONE_AUTH_SECRETS", support::SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("topics.names puts ALL_CALLS, MISSED_CALL on the one topic `calls`")
            && stderr.contains("set topics.single"),
        "{stderr}"
    );
}
