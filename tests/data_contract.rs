//! The data contract for consumers (issue 30, parts 1 and 3): absent is not
//! null (`absent_fields`), the new schemas are BACKWARD compatible with the
//! registered ones, records made before the change still go out, and vendor
//! schema drift becomes a reviewed schema patch (`schema drift`).
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{consume, fixture, post, stack, stdout_of, Bridge, BridgeOptions, SECRET};

fn tool(prefix: &str) -> Command {
    let stack = stack();
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    command
        .env("SUPERFONE_AUTH_SECRETS", SECRET)
        .env("SUPERFONE_BRIDGE_KAFKA__BROKERS", &stack.brokers)
        .env("SUPERFONE_BRIDGE_REGISTRY__URL", &stack.registry_url)
        .env("SUPERFONE_BRIDGE_TOPICS__PREFIX", prefix)
        .env_remove("SUPERFONE_BRIDGE_CONFIG")
        .env_remove("RUST_LOG");
    command
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The repository's schemas as they were before `absent_fields`: the same
/// files without that field (what the previous release registered).
fn schemas_before_absent_fields() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::create_dir(dir.path().join("types")).unwrap();
    for entry in std::fs::read_dir(source.join("types")).unwrap().flatten() {
        std::fs::copy(
            entry.path(),
            dir.path().join("types").join(entry.file_name()),
        )
        .unwrap();
    }
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        if entry.path().is_file() {
            let mut schema: Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
            let fields = schema["fields"].as_array_mut().unwrap();
            fields.retain(|field| field["name"] != "absent_fields");
            let text = serde_json::to_string_pretty(&schema).unwrap();
            std::fs::write(dir.path().join(entry.file_name()), text).unwrap();
        }
    }
    dir
}

async fn registry_get(path: &str) -> Value {
    let url = format!("{}{path}", stack().registry_url);
    let response = support::client().get(url).send().await.unwrap();
    response.json().await.unwrap()
}

/// The test registry's compatibility endpoint, for `schema` against
/// `version` of `subject`.
async fn compatible_in_registry(subject: &str, version: &str, schema: &str) -> Value {
    let url = format!(
        "{}/compatibility/subjects/{subject}/versions/{version}",
        stack().registry_url
    );
    let body = json!({ "schema": schema });
    let response = support::client()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

/// Apache Avro's own checker (tests/py/compat.py) on two schema texts.
fn avro_compatibility(old: &str, new: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (old_file, new_file) = (dir.path().join("old.avsc"), dir.path().join("new.avsc"));
    std::fs::write(&old_file, old).unwrap();
    std::fs::write(&new_file, new).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/compat.py");
    let out = stdout_of(
        Command::new(stack().python)
            .arg(script)
            .arg(&old_file)
            .arg(&new_file),
    );
    serde_json::from_str(&out).unwrap()
}

/// Versions 1 and 2 of `subject` are compatible both ways, by the registry's
/// check and by Apache Avro's checker. A bridge registers in the background
/// once it is up: version 2 is waited for.
async fn assert_backward_compatible(subject: &str) {
    let v1 = registry_get(&format!("/subjects/{subject}/versions/1")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let v2 = loop {
        let v2 = registry_get(&format!("/subjects/{subject}/versions/2")).await;
        if v2.get("schema").is_some() || Instant::now() > deadline {
            break v2;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(v2.get("schema").is_some(), "{subject}: no version 2: {v2}");
    let (v1, v2) = (
        v1["schema"].as_str().unwrap(),
        v2["schema"].as_str().unwrap(),
    );
    let verdict = compatible_in_registry(subject, "1", v2).await;
    assert_eq!(verdict["is_compatible"], true, "{subject}: {verdict}");
    let verdict = avro_compatibility(v1, v2);
    assert_eq!(
        verdict,
        json!({"backward": true, "forward": true}),
        "{subject}"
    );
}

fn absent(record: &Value) -> Vec<&str> {
    record["value"]["absent_fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no absent_fields: {record}"))
        .iter()
        .map(|pointer| pointer.as_str().unwrap())
        .collect()
}

/// Part 1: a CUSTOMER_CHANGE without `contact_emails` and one with
/// `"contact_emails": null` decode differently through Confluent's
/// AvroDeserializer.
#[tokio::test(flavor = "multi_thread")]
async fn absent_and_null_members_decode_differently() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let mut without = fixture("CUSTOMER_CHANGE");
    without.as_object_mut().unwrap().remove("contact_emails");
    let mut with_null = without.clone();
    with_null["contact_emails"] = Value::Null;
    with_null["updated_key"] = json!("city");
    for payload in [&without, &with_null] {
        let (status, reply) = post(&client, &bridge, payload.to_string()).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("published")),
            "{reply}"
        );
    }
    let records = consume(&bridge.topic("CUSTOMER_CHANGE"), 2, false);
    assert_eq!(records.len(), 2);
    let (first, second) = (&records[0], &records[1]);
    assert_eq!(first["value"]["contact_emails"], Value::Null);
    assert_eq!(second["value"]["contact_emails"], Value::Null);
    assert!(absent(first).contains(&"/contact_emails"), "{first}");
    assert!(!absent(second).contains(&"/contact_emails"), "{second}");
    assert_ne!(
        first["value"]["absent_fields"],
        second["value"]["absent_fields"]
    );
}

/// Every documented member the payload had comes back; the nullable ones it
/// lacked are listed; nothing is unmapped.
fn assert_round_trip(event: &str, sent: &Value, record: &Value) {
    let value = &record["value"];
    assert_eq!(
        value["unmapped_fields_json"],
        Value::Null,
        "{event}: {value}"
    );
    for (member, expected) in sent.as_object().unwrap() {
        assert!(
            same(expected, &value[member]),
            "{event}.{member}: sent {expected}, got {}",
            value[member]
        );
    }
    let listed = absent(record);
    for (field, got) in value.as_object().unwrap() {
        if field == "unmapped_fields_json" {
            continue;
        }
        let top_level_absent = sent.get(field).is_none() && got.is_null();
        assert_eq!(
            listed.contains(&format!("/{field}").as_str()),
            top_level_absent,
            "{event}.{field}: {listed:?}"
        );
    }
    for pointer in listed {
        assert!(
            sent.pointer(pointer).is_none(),
            "{event}: {pointer} was sent"
        );
    }
}

/// A value as sent and as decoded agree, through the documented mappings:
/// timestamps, doubles, JSON text.
fn same(sent: &Value, got: &Value) -> bool {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let instant = |v: &Value| {
        let text = v.as_str()?;
        time::OffsetDateTime::parse(text, &Rfc3339)
            .or_else(|_| time::OffsetDateTime::parse(text, &Iso8601::DEFAULT))
            .ok()
            .map(|at| at.unix_timestamp_nanos() / 1_000_000)
    };
    match (sent, got) {
        _ if sent == got => true,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(_), Value::String(_)) if instant(sent).is_some() => {
            instant(sent) == instant(got)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|got| same(v, got))),
        (_, Value::String(text)) => {
            serde_json::from_str::<Value>(text).is_ok_and(|parsed| same(sent, &parsed))
        }
        _ => false,
    }
}

/// Part 1: the ten fixtures round-trip through the bridge and Confluent's
/// AvroDeserializer.
#[tokio::test(flavor = "multi_thread")]
async fn the_ten_fixtures_round_trip_with_their_absent_members() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let events = [
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
    for event in events {
        let (status, reply) = post(&client, &bridge, fixture(event).to_string()).await;
        assert_eq!(status, 200, "{event}: {reply}");
    }
    for event in events {
        let records = consume(&bridge.topic(event), 1, false);
        assert_eq!(records.len(), 1, "{event}");
        assert_round_trip(event, &fixture(event), &records[0]);
    }
}

/// Part 1: records written with the schemas before `absent_fields`, then
/// the new ones registered over them (the registry checks BACKWARD at
/// registration, and again on request, as does Apache Avro's checker);
/// both decode. A record the earlier version spooled while the registry was
/// down, and a dead letter it wrote, still go out after the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_made_before_absent_fields_still_go_out_and_the_registry_accepts_the_new_schemas() {
    let earlier = schemas_before_absent_fields();
    let spool = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix();
    let unreachable = format!("http://127.0.0.1:{}", support::free_port());
    let options = |registry: Option<String>, spool: Option<&Path>| BridgeOptions {
        prefix: prefix.clone(),
        spool_dir: spool.map(Path::to_owned),
        registry_url: registry,
        ..BridgeOptions::default()
    };
    let client = support::client();
    // The earlier release, its registry unreachable: the event is spooled
    // waiting for its schema id; a bad one is dead-lettered.
    let old = Bridge::start(
        options(Some(unreachable), Some(spool.path()))
            .with("REGISTRY__SCHEMAS_DIR", earlier.path().display()),
    );
    let (status, reply) = post(&client, &old, fixture("CUSTOMER_CHANGE").to_string()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("spooled")),
        "{reply}"
    );
    let mut bad = fixture("ALL_CALLS");
    bad["cdr_disposition"] = json!(5);
    assert_eq!(post(&client, &old, bad.to_string()).await.0, 422);
    drop(old);
    // The earlier release with its registry (and a spool of its own):
    // version 1 of each subject.
    let old =
        Bridge::start(options(None, None).with("REGISTRY__SCHEMAS_DIR", earlier.path().display()));
    let mut created = fixture("CUSTOMER_CREATE");
    created["contact_id"] = json!(777);
    assert_eq!(post(&client, &old, created.to_string()).await.0, 200);
    drop(old);

    // The new release: its schemas registered over the earlier ones, which
    // the registry accepts only if compatible; the spooled record, encoded
    // with the earlier schema and waiting for an id, is parked.
    let new = Bridge::start(options(None, Some(spool.path())));
    let subject = format!("{prefix}customer_create-value");
    assert_backward_compatible(&subject).await;
    let (status, _) = post(&client, &new, fixture("CUSTOMER_CREATE").to_string()).await;
    assert_eq!(status, 200);
    let records = consume(&new.topic("CUSTOMER_CREATE"), 2, false);
    assert_eq!(records.len(), 2);
    let by_key = |key: &str| records.iter().find(|r| r["key"] == key).unwrap();
    let (old_record, new_record) = (by_key("777"), by_key("12345"));
    assert!(
        old_record["value"].get("absent_fields").is_none(),
        "{old_record}"
    );
    assert!(
        new_record["value"]["absent_fields"].is_array(),
        "{new_record}"
    );
    assert_eq!(new_record["value"]["contact_id"], 12345);
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let listed = stdout_of(
            tool(&prefix)
                .args(["spool", "parked", "list"])
                .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path()),
        );
        if !listed.is_empty() || Instant::now() > deadline {
            break json_lines(&listed);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(parked.len(), 1, "not parked:\n{}", new.log_text());
    assert!(
        parked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer has"),
        "{parked:?}"
    );
    drop(new);

    // The operator retries it: it goes out under the earlier schema's id.
    let retried = stdout_of(
        tool(&prefix)
            .args(["spool", "parked", "retry"])
            .env("SUPERFONE_BRIDGE_SPOOL__DIR", spool.path()),
    );
    let retried = json_lines(&retried);
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0]["status"], "published", "{retried:?}");
    let records = consume(&format!("{prefix}customer_change"), 1, false);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"]["contact_id"], 12345);
    assert_eq!(records[0]["value"]["updated_key"], "lead_stage");
    assert!(records[0]["value"].get("absent_fields").is_none());
    let subject = format!("{prefix}customer_change-value");
    let versions = registry_get(&format!("/subjects/{subject}/versions")).await;
    assert_eq!(
        versions,
        json!([1, 2]),
        "the earlier schema, then the new one"
    );
    assert_backward_compatible(&subject).await;

    // The dead letter the earlier release wrote, replayed by the new one
    // after a schema fix: converted with absent_fields.
    let fixed = tempfile::tempdir().unwrap();
    copy_schemas(fixed.path(), |name, schema| {
        if name == "all_calls.avsc" {
            let fields = schema["fields"].as_array_mut().unwrap();
            let field = fields
                .iter_mut()
                .find(|f| f["name"] == "cdr_disposition")
                .unwrap();
            field["type"] = json!(["string", "long"]);
        }
    });
    let replayed = stdout_of(
        tool(&prefix)
            .env("SUPERFONE_BRIDGE_REGISTRY__SCHEMAS_DIR", fixed.path())
            .args(["dead-letter", "replay", "--idle-exit-secs", "3"]),
    );
    let replayed = json_lines(&replayed);
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["status"], "replayed", "{replayed:?}");
    let records = consume(&format!("{prefix}all_calls"), 1, false);
    assert_eq!(records[0]["value"]["cdr_disposition"], 5);
    assert!(records[0]["value"]["absent_fields"].is_array());
}

/// Copies the repository's schemas into `dir`, each event schema through `edit`.
fn copy_schemas(dir: &Path, edit: impl Fn(&str, &mut Value)) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::create_dir(dir.join("types")).unwrap();
    for entry in std::fs::read_dir(source.join("types")).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.join("types").join(entry.file_name())).unwrap();
    }
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        if entry.path().is_file() {
            let mut schema: Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
            edit(&entry.file_name().to_string_lossy(), &mut schema);
            std::fs::write(dir.join(entry.file_name()), schema.to_string()).unwrap();
        }
    }
}

fn unmapped_series(metrics: &str, event: &str) -> f64 {
    let needle = format!("superfone_unmapped_members_total{{event=\"{event}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("no {needle}in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Part 3, end to end: members the schema does not know are counted and
/// kept in unmapped_fields_json; `schema drift` reports them and writes the
/// patch; the registry accepts it as BACKWARD compatible; restarted on the
/// patched schemas, the bridge carries them as real fields.
#[tokio::test(flavor = "multi_thread")]
async fn vendor_drift_becomes_a_schema_patch_the_registry_accepts() {
    let bridge = Bridge::start(BridgeOptions::default());
    let client = support::client();
    let before = support::metrics_text(&client, &bridge).await;
    assert_eq!(unmapped_series(&before, "ALL_CALLS"), 0.0);
    for score in [7, 8] {
        let mut call = fixture("ALL_CALLS");
        call["call_tag"] = json!("vip");
        call["call_score"] = json!(score);
        let (status, reply) = post(&client, &bridge, call.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    let metrics = support::metrics_text(&client, &bridge).await;
    assert_eq!(unmapped_series(&metrics, "ALL_CALLS"), 4.0);
    assert_eq!(unmapped_series(&metrics, "TASK_CHANGE"), 0.0);

    let patch = tempfile::tempdir().unwrap();
    let patch_dir = patch.path().join("schemas");
    let drift = |extra: &[&str]| {
        json_lines(&stdout_of(
            tool(&bridge.prefix)
                .args(["schema", "drift", "--from-beginning"])
                .args(extra),
        ))
    };
    let lines = drift(&[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = |pointer: &str| {
        lines
            .iter()
            .find(|l| l["pointer"] == pointer)
            .unwrap()
            .clone()
    };
    let tag = line("/call_tag");
    assert_eq!(tag["event"], "ALL_CALLS");
    assert_eq!(
        (tag["count"].clone(), tag["types"].clone()),
        (json!(2), json!(["string"]))
    );
    assert_eq!(line("/call_score")["types"], json!(["integer"]));
    assert!(tag["first_seen"].as_str().unwrap() <= tag["last_seen"].as_str().unwrap());
    assert!(
        tag["first_seen"].as_str().unwrap().starts_with("20"),
        "{tag}"
    );

    let lines = drift(&["--write-patch", patch_dir.to_str().unwrap()]);
    let patched = lines
        .iter()
        .find(|l| l.get("patched").is_some())
        .expect("a patch line");
    assert_eq!(
        patched["added"],
        json!(["/call_score", "/call_tag"]),
        "{patched}"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(patch_dir.join("all_calls.avsc")).unwrap())
            .unwrap();
    let field = |name: &str| {
        schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(field("call_tag")["type"], json!(["null", "string"]));
    // A later value of another type goes out as JSON text, not as a 422.
    assert_eq!(
        field("call_score")["type"],
        json!(["null", "long", "string"])
    );
    assert_eq!(field("call_score")["superfone.json"], json!(true));
    assert_eq!(field("call_tag")["default"], Value::Null);
    assert!(field("call_tag")["doc"]
        .as_str()
        .unwrap()
        .contains(tag["first_seen"].as_str().unwrap()));
    assert!(patch_dir.join("types/ContactPhone.avsc").is_file());

    // Restarted on the patch: registered over version 1 (the registry
    // refuses an incompatible version at start-up), checked both ways.
    let prefix = bridge.prefix.clone();
    drop(bridge);
    let bridge = Bridge::start(
        BridgeOptions {
            prefix: prefix.clone(),
            ..BridgeOptions::default()
        }
        .with("REGISTRY__SCHEMAS_DIR", patch_dir.display()),
    );
    assert_backward_compatible(&format!("{prefix}all_calls-value")).await;
    let mut call = fixture("ALL_CALLS");
    call["call_tag"] = json!("gold");
    call["call_score"] = json!(9);
    let (status, reply) = post(&client, &bridge, call.to_string()).await;
    assert_eq!(status, 200, "{reply}");
    let records = consume(&bridge.topic("ALL_CALLS"), 3, false);
    assert_eq!(records.len(), 3);
    let first = &records[0]["value"];
    assert_eq!(
        serde_json::from_str::<Value>(first["unmapped_fields_json"].as_str().unwrap()).unwrap(),
        json!({"/call_tag": "vip", "/call_score": 7})
    );
    let last = &records[2]["value"];
    assert_eq!(last["call_tag"], "gold");
    assert_eq!(last["call_score"], 9);
    assert_eq!(last["unmapped_fields_json"], Value::Null, "{last}");
    let metrics = support::metrics_text(&client, &bridge).await;
    assert_eq!(unmapped_series(&metrics, "ALL_CALLS"), 0.0);
}
