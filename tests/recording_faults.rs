//! The recording copier under faults, against real processes: the store
//! (moto's S3 server behind a gate) down for 20 s, the bridge killed with
//! SIGKILL in the middle of a slow 50 MB download, a 500 MB recording
//! streamed through a fixed buffer (resident memory measured), and a
//! hundred recordings at once, the registry unreachable while a recording
//! waits to be decoded, hostile expiry numbers in links. Each prints its figures (`RECORDING-FIGURES
//! {...}`; run with `-- --nocapture`).
#![cfg(feature = "e2e")]

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::source::{
    copying_options, file_of, file_sha256, recording_event, recording_sha256, signed, Source,
};
use support::store::{Gate, S3};
use support::{consume, metrics_text, post, rss_mib, signal, Bridge, BridgeOptions};

const LINK_LIFE: u64 = 604_800;

fn copies_topic(bridge: &Bridge) -> String {
    format!("{}recording_copies", bridge.prefix)
}

/// The pointer record of `cdr_id` with `status`, if there is one.
fn pointer<'a>(pointers: &'a [Value], cdr_id: i64, status: &str) -> Option<&'a Value> {
    pointers
        .iter()
        .map(|pointer| &pointer["value"])
        .find(|value| value["cdr_id"] == cdr_id && value["status"] == status)
}

/// A metric's value on the bridge's /metrics (0 when absent).
async fn metric(client: &reqwest::Client, bridge: &Bridge, series: &str) -> f64 {
    let text = metrics_text(client, bridge).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Each pointer record as `cdr_id status`.
fn summary(pointers: &[Value]) -> Vec<String> {
    pointers
        .iter()
        .map(|p| format!("{} {}", p["value"]["cdr_id"], p["value"]["status"]))
        .collect()
}

fn report(figures: Value) {
    println!("RECORDING-FIGURES {figures}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_down_for_20_s_delays_copies_and_loses_none() {
    let source = Source::start().await;
    let s3 = S3::start("outage");
    let gate = Gate::start(s3.port);
    // Three unfinished at most: the other two wait, unread, on the topic.
    let mut options =
        copying_options("s3://outage/calls", None).with("RECORDINGS__MAX_PENDING", "3");
    options.env.extend(S3::bridge_env(&gate.endpoint()));
    let bridge = Bridge::start(options);
    let client = support::client();

    let post_recording = |cdr_id: i64| {
        let link = source.link(
            &format!("{cdr_id}.mp3"),
            256 * 1024,
            &signed(time::Duration::minutes(1)),
            LINK_LIFE,
            "",
        );
        let (client, bridge) = (&client, &bridge);
        async move {
            let started = Instant::now();
            let event = recording_event(cdr_id, cdr_id, &link).to_string();
            let (status, body) = post(client, bridge, event).await;
            assert_eq!(
                status, 200,
                "the webhook does not wait for the store: {body}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "{body}");
        }
    };
    // One copy before the outage: the copier has joined its group.
    post_recording(4000).await;
    consume(&copies_topic(&bridge), 1, false);
    // Every status has a series from the start, so the first loss is an
    // increase an alert can see.
    let text = metrics_text(&client, &bridge).await;
    for status in ["expired", "refused", "failed"] {
        let series = format!("superfone_recordings_total{{status=\"{status}\"}} 0");
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }

    gate.shut();
    let outage = Instant::now();
    let ids: Vec<i64> = (4001..=4005).collect();
    for &cdr_id in &ids {
        post_recording(cdr_id).await;
    }
    while metric(&client, &bridge, "superfone_recordings_pending").await < 3.0 {
        assert!(
            outage.elapsed() < Duration::from_secs(15),
            "the copies never started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gauge is refreshed every 5 s.
    let mut left = 0.0;
    while left == 0.0 && outage.elapsed() < Duration::from_secs(18) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = metric(&client, &bridge, "superfone_recordings_next_expiry_seconds").await;
    }
    assert!(left > 600_000.0, "the most urgent link has ~7 days: {left}");
    let (ready, _) = support::admin_get(&client, &bridge, "/readyz").await;
    assert_eq!(ready, 200, "the store is not what readiness means");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    let during = consume(&copies_topic(&bridge), 1, false);
    assert!(
        during.len() == 1,
        "nothing gives up on a store that is down: {during:#?}"
    );
    let pending = metric(&client, &bridge, "superfone_recordings_pending").await;
    assert_eq!(pending, 3.0, "reading pauses at recordings.max_pending");

    gate.open();
    let reopened = Instant::now();
    let pointers = consume(&copies_topic(&bridge), 1 + ids.len(), false);
    let catch_up = reopened.elapsed();
    for &cdr_id in &ids {
        let stored = pointer(&pointers, cdr_id, "stored")
            .unwrap_or_else(|| panic!("{cdr_id} not stored: {pointers:#?}"));
        let key = format!("calls/2026/05/15/{cdr_id}.mp3");
        let expected = recording_sha256(&format!("{cdr_id}.mp3"), 256 * 1024);
        assert_eq!(s3.object(&key), (256 * 1024, expected.clone()));
        assert_eq!(stored["sha256"], expected);
    }
    assert_eq!(
        pointers.len(),
        1 + ids.len(),
        "one record each: {pointers:#?}"
    );
    report(json!({
        "test": "store_down_20s",
        "recordings": ids.len(),
        "stored_after_reopen_s": catch_up.as_secs_f64(),
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_copy_holds_back_no_other_and_survives_sigkill() {
    const SLOW: usize = 50 * 1024 * 1024;
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let bridge = Bridge::start(copying_options(&store_url, None));
    let prefix = bridge.prefix.clone();
    let client = support::client();
    let at = signed(time::Duration::minutes(1));
    // One lead, so one partition: the slow one first, two quick ones behind it.
    let slow = source.link("2001.mp3", SLOW, &at, LINK_LIFE, "&rate=8000000");
    let quick = |name: &str| source.link(name, 4096, &at, LINK_LIFE, "");
    for (cdr_id, link) in [
        (2001, slow),
        (2002, quick("2002.mp3")),
        (2003, quick("2003.mp3")),
    ] {
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(cdr_id, 9, &link).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    let first = consume(&copies_topic(&bridge), 2, false);
    assert!(
        pointer(&first, 2002, "stored").is_some() && pointer(&first, 2003, "stored").is_some(),
        "the quick ones finish behind the slow one: {first:#?}"
    );
    assert!(pointer(&first, 2001, "stored").is_none(), "{first:#?}");
    assert_eq!(
        source.requests_for("2001.mp3"),
        1,
        "the slow one is downloading"
    );
    // Past the auto-commit interval (5 s): what the group commits now is
    // all a restart has.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(bridge.pid(), "-KILL");
    drop(bridge);

    let restarted = Bridge::start(copying_options(&store_url, Some(prefix)));
    let killed_at = Instant::now();
    // The three again (the offset never passed the slow one), after the two.
    let all = support::consume_from(&support::stack().brokers, &copies_topic(&restarted), 5);
    let stored = pointer(&all, 2001, "stored").unwrap_or_else(|| {
        panic!(
            "the slow copy was lost: {:?}\n{}",
            summary(&all),
            restarted.log_text()
        )
    });
    let expected = recording_sha256("2001.mp3", SLOW);
    assert_eq!(stored["sha256"], expected);
    assert_eq!(stored["bytes"], SLOW as u64);
    let path = file_of(stored["object_url"].as_str().unwrap());
    assert_eq!(file_sha256(&path), expected, "the copy is whole");
    assert_eq!(source.requests_for("2001.mp3"), 2);
    report(json!({
        "test": "sigkill_mid_50mb",
        "stored_after_restart_s": killed_at.elapsed().as_secs_f64(),
        "pointer_records": all.len(),
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_mb_recording_streams_through_a_fixed_buffer() {
    const SIZE: usize = 500 * 1000 * 1000;
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(copying_options(
        &format!("file://{}", store.path().display()),
        None,
    ));
    let client = support::client();
    // Let the copier join its group and settle before the baseline.
    let warm = source.link(
        "3000.mp3",
        1024,
        &signed(time::Duration::ZERO),
        LINK_LIFE,
        "",
    );
    post(
        &client,
        &bridge,
        recording_event(3000, 1, &warm).to_string(),
    )
    .await;
    consume(&copies_topic(&bridge), 1, false);
    let before = rss_mib(bridge.pid());

    let link = source.link(
        "3001.mp3",
        SIZE,
        &signed(time::Duration::ZERO),
        LINK_LIFE,
        "",
    );
    let started = Instant::now();
    post(
        &client,
        &bridge,
        recording_event(3001, 1, &link).to_string(),
    )
    .await;
    let pid = bridge.pid();
    let copying = Arc::new(AtomicBool::new(true));
    let sampling = Arc::clone(&copying);
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while sampling.load(Ordering::SeqCst) {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    let pointers = consume(&copies_topic(&bridge), 2, false);
    let elapsed = started.elapsed();
    copying.store(false, Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    let stored = pointer(&pointers, 3001, "stored").expect("stored");
    assert_eq!(stored["bytes"], SIZE as u64);
    assert_eq!(stored["sha256"], recording_sha256("3001.mp3", SIZE));
    let growth = peak.saturating_sub(before);
    report(json!({
        "test": "streamed_500mb",
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "rss_growth_mib": growth,
        "mb_per_s": SIZE as f64 / 1e6 / elapsed.as_secs_f64(),
    }));
    assert!(growth <= 32, "RSS grew {growth} MiB copying 500 MB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_recordings_at_once_end_in_a_hundred_terminal_records() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(copying_options(
        &format!("file://{}", store.path().display()),
        None,
    ));
    let client = support::client();
    let fresh = signed(time::Duration::minutes(1));
    let dead = signed(time::Duration::days(8));
    // Every tenth link is dead.
    let posts = (5000..5100).map(|cdr_id: i64| {
        let (at, extra) = if cdr_id % 10 == 0 {
            (&dead, "&status=403")
        } else {
            (&fresh, "")
        };
        let link = source.link(&format!("{cdr_id}.mp3"), 64 * 1024, at, LINK_LIFE, extra);
        let (client, bridge) = (&client, &bridge);
        async move {
            post(
                client,
                bridge,
                recording_event(cdr_id, cdr_id % 7, &link).to_string(),
            )
            .await
        }
    });
    let started = Instant::now();
    let answers = futures::future::join_all(posts).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );

    let pointers = consume(&copies_topic(&bridge), 100, false);
    let elapsed = started.elapsed();
    let ids: BTreeSet<i64> = pointers
        .iter()
        .map(|p| p["value"]["cdr_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (5000..5100).collect(), "none missing");
    assert_eq!(pointers.len(), 100, "one each");
    for cdr_id in 5000..5100 {
        let status = if cdr_id % 10 == 0 {
            "expired"
        } else {
            "stored"
        };
        assert!(
            pointer(&pointers, cdr_id, status).is_some(),
            "{cdr_id}: {pointers:#?}"
        );
    }
    let files = walk(store.path());
    assert_eq!(files, 90, "one object per stored copy");
    report(json!({
        "test": "hundred_at_once",
        "seconds": elapsed.as_secs_f64(),
        "copies_per_s": 90.0 / elapsed.as_secs_f64(),
    }));
}

/// Files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

/// The copier alone (`recordings run`) reaches the registry through a gate;
/// a `serve` that does not copy takes the events. A recording read while
/// the registry is unreachable waits to be decoded, and is stored once the
/// registry is back: never `failed` for an outage.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_delays_a_recording_and_fails_none() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let registry_port: u16 = support::stack()
        .registry_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let gate = Gate::start(registry_port);
    let mut alone = copying_options(&format!("file://{}", store.path().display()), None);
    alone.command = vec!["recordings".into(), "run".into()];
    alone.registry_url = Some(gate.endpoint());
    let copier = Bridge::start(alone);
    let serving = Bridge::start(BridgeOptions {
        prefix: copier.prefix.clone(),
        ..BridgeOptions::default()
    });
    let client = support::client();
    let started = Instant::now();
    while support::admin_get(&client, &copier, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copier never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    gate.shut();
    let link = source.link(
        "4201.mp3",
        8192,
        &signed(time::Duration::ZERO),
        LINK_LIFE,
        "",
    );
    let (status, body) = post(
        &client,
        &serving,
        recording_event(4201, 42, &link).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let outage = Instant::now();
    while metric(&client, &copier, "superfone_recordings_pending").await < 1.0 {
        assert!(outage.elapsed() < Duration::from_secs(15), "never read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = consume(&copies_topic(&copier), 0, false);
    assert!(
        during.is_empty(),
        "nothing ends while the registry is away: {during:#?}"
    );
    assert_eq!(source.requests(), 0, "not decoded, not fetched");

    gate.open();
    let reopened = Instant::now();
    let pointers = consume(&copies_topic(&copier), 1, false);
    assert_eq!(summary(&pointers), ["4201 \"stored\""], "{pointers:#?}");
    report(json!({
        "test": "registry_outage",
        "stored_after_reopen_s": reopened.elapsed().as_secs_f64(),
    }));
}

/// Links are request input: a lifetime past SigV4's 7 days, a signature
/// date in year 9999 or before year 0 neither break the webhook (a panic
/// answered nothing) nor keep a copy retrying past the vendor's 7 days.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_expiry_numbers_neither_fail_the_webhook_nor_outlive_seven_days() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(copying_options(
        &format!("file://{}", store.path().display()),
        None,
    ));
    let client = support::client();
    let links = [
        (4301, signed(time::Duration::ZERO), "9223372036854775807"),
        (4302, "99991231T235959Z".to_owned(), "2"),
        (4303, "-00010101T000000Z".to_owned(), "60"),
        (4304, signed(time::Duration::ZERO), "31536000000"),
    ];
    for (cdr_id, date, expires) in &links {
        let link = source
            .link(&format!("{cdr_id}.mp3"), 1024, date, 0, "")
            .replace("X-Amz-Expires=0", &format!("X-Amz-Expires={expires}"));
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(*cdr_id, 43, &link).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{cdr_id}: {body}");
    }
    let events = consume(&bridge.topic("CDR_RECORDING_AVAILABLE"), links.len(), false);
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    for event in &events {
        let at = |name: &str| {
            time::OffsetDateTime::parse(event["headers"][name].as_str().unwrap(), rfc3339).unwrap()
        };
        assert!(
            at("superfone-recording-url-expires-at")
                <= at("superfone-received-at") + time::Duration::days(7),
            "{event}"
        );
    }
    let pointers = consume(&copies_topic(&bridge), links.len(), false);
    let ended: BTreeSet<String> = summary(&pointers).into_iter().collect();
    let expected: BTreeSet<String> = links
        .iter()
        .map(|(cdr_id, _, _)| format!("{cdr_id} \"stored\""))
        .collect();
    assert_eq!(ended, expected, "{pointers:#?}");
}

/// A link answering 404 days before its expiry is tried a few times, not
/// for days: it ends `failed` (which `recordings retry` can mend) and the
/// partition's offset moves on; a recording behind it is stored meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_answering_404_before_its_expiry_ends_failed_in_a_minute() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(copying_options(
        &format!("file://{}", store.path().display()),
        None,
    ));
    let client = support::client();
    let fresh = signed(time::Duration::ZERO);
    let missing = source.link("4401.mp3", 10, &fresh, LINK_LIFE, "&status=404");
    let behind = source.link("4402.mp3", 2048, &fresh, LINK_LIFE, "");
    let started = Instant::now();
    for (cdr_id, link) in [(4401, &missing), (4402, &behind)] {
        let (status, body) = post(
            &client,
            &bridge,
            recording_event(cdr_id, 44, link).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let pointers = consume(&copies_topic(&bridge), 2, false);
    let took = started.elapsed();
    let failed = pointer(&pointers, 4401, "failed")
        .unwrap_or_else(|| panic!("4401 not failed: {pointers:#?}"));
    assert!(
        failed["error"].as_str().unwrap().contains("404"),
        "{failed}"
    );
    assert!(
        pointer(&pointers, 4402, "stored").is_some(),
        "{pointers:#?}"
    );
    assert!(took < Duration::from_secs(90), "{took:?}");
    assert_eq!(source.requests_for("4401.mp3"), 6, "six attempts");
    report(json!({"test": "lasting_404", "failed_after_s": took.as_secs_f64()}));
}

/// Two copiers in one group: when the second joins, the first stops the
/// copies of the partitions it hands over (their new owner copies them),
/// so each recording ends in one pointer record, not one per copier.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_moves_copies_instead_of_doubling_them() {
    let source = Source::start().await;
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let alone = |prefix: Option<String>| {
        let mut options = copying_options(&store_url, prefix);
        options.command = vec!["recordings".into(), "run".into()];
        options
    };
    let first = Bridge::start(alone(None));
    let prefix = first.prefix.clone();
    let serving = Bridge::start(BridgeOptions {
        prefix: prefix.clone(),
        ..BridgeOptions::default()
    });
    let client = support::client();
    let started = Instant::now();
    while support::admin_get(&client, &first, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copier never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Five 503s each (about 31 s of backoff): the copies are still trying
    // when the second copier joins.
    let ids: Vec<i64> = (4501..4513).collect();
    for &cdr_id in &ids {
        let link = source.link(
            &format!("{cdr_id}.mp3"),
            4096,
            &signed(time::Duration::ZERO),
            LINK_LIFE,
            "&fail=5",
        );
        let (status, body) = post(
            &client,
            &serving,
            recording_event(cdr_id, cdr_id, &link).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let pending = |bridge| metric(&client, bridge, "superfone_recordings_pending");
    while pending(&first).await < ids.len() as f64 {
        assert!(started.elapsed() < Duration::from_secs(30), "not all read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let second = Bridge::start(alone(Some(prefix)));
    let joined = Instant::now();
    while pending(&first).await >= ids.len() as f64 {
        assert!(
            joined.elapsed() < Duration::from_secs(25),
            "the first copier kept every copy after the rebalance"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved = ids.len() as f64 - pending(&first).await;
    let pointers = consume(&copies_topic(&first), ids.len(), false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pointers = if pointers.len() == ids.len() {
        consume(&copies_topic(&first), ids.len(), false)
    } else {
        pointers
    };
    let ended: BTreeSet<String> = summary(&pointers).into_iter().collect();
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id} \"stored\"")).collect();
    assert_eq!(ended, expected, "{pointers:#?}");
    assert_eq!(
        pointers.len(),
        ids.len(),
        "one pointer record each: {pointers:#?}"
    );
    assert!(pending(&second).await == 0.0);
    report(json!({"test": "rebalance", "copies_moved": moved}));
}
