//! Sockets that never speak, or stop halfway through their headers, must not
//! take the bridge offline: 2,100 silent connections used
//! to hold all 2,048 permits forever, and a real delivery then timed out.
#![cfg(feature = "e2e")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{peak_rss_mib, post, Bridge, BridgeOptions};

const SILENT: usize = 10_000;
const HALF_SENT: usize = 1_000;
const EVENTS: i64 = 1_000;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1)]
}

/// Opens `SILENT` connections that send nothing and `HALF_SENT` that stop
/// inside their headers, holds them until `release`, and returns how many
/// connected.
fn flood(addr: SocketAddr, opened: Arc<AtomicUsize>, release: Arc<AtomicBool>) -> usize {
    let mut held = Vec::with_capacity(SILENT + HALF_SENT);
    for n in 0..SILENT + HALF_SENT {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        if n % 11 == 10 {
            let _ = stream.write_all(b"POST /superfone/events HTTP/1.1\r\nhost: x\r\nauthoriz");
        }
        held.push(stream);
        opened.fetch_add(1, Ordering::Relaxed);
    }
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    held.len()
}

/// Posts event `sequence` of lead 2 on an open keep-alive connection, and
/// returns the answer's status (0 when the connection was closed).
fn post_on(stream: &mut TcpStream, sequence: i64) -> u16 {
    let event = support::sequenced_event(2, sequence).to_string();
    let request = format!(
        "POST /superfone/events HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{event}",
        support::SECRET,
        event.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return 0,
            Ok(read) => answer.extend_from_slice(&chunk[..read]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while answer.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return 0,
            Ok(read) => answer.extend_from_slice(&chunk[..read]),
        }
    }
    head[9..12].parse().unwrap_or(0)
}

/// Posts event `sequence` of lead 1 (on a new connection, with the test's
/// client); its status and how long the answer took, connecting included.
async fn timed_post(client: &reqwest::Client, bridge: &Bridge, sequence: i64) -> (u16, Duration) {
    let started = Instant::now();
    let event = support::sequenced_event(1, sequence).to_string();
    let (status, _) = post(client, bridge, event).await;
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_thousand_silent_sockets_do_not_lock_out_a_real_delivery() {
    // This process holds the flood's sockets: the bridge's own start-up step
    // lifts a login session's soft limit of 1024 for it too.
    superfone_bridge::http::server::raise_open_file_limit(SILENT + HALF_SENT);
    // One runtime worker, the default on 2 cores and the hardest case: the
    // worker also runs every flood connection's task. With one, the accept
    // loop searched every connection for one to shed per newcomer and the
    // kernel's accept queue overflowed: a real delivery waited 1.2-2.3 s.
    let bridge = Bridge::start(BridgeOptions::default().with("SERVER__WORKER_THREADS", 1));
    // No keep-alive, as a webhook sender may: every event needs a new
    // connection accepted, through the flood.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut normal = Vec::new();
    for sequence in 0..200 {
        let (status, latency) = timed_post(&client, &bridge, sequence).await;
        assert_eq!(status, 200);
        normal.push(latency);
    }
    normal.sort();
    let normal_p99 = percentile(&normal, 0.99);
    // A keep-alive connection that delivers every 2 s: sockets that never
    // spoke are shed before it (it used to be shed once silent for 250 ms,
    // and its next delivery found the connection closed).
    let mut keep_alive = TcpStream::connect(&bridge.addr).unwrap();
    keep_alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(post_on(&mut keep_alive, 0), 200);

    let (opened, release) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let addr: SocketAddr = bridge.addr.parse().unwrap();
    let attacker = {
        let (opened, release) = (Arc::clone(&opened), Arc::clone(&release));
        std::thread::spawn(move || flood(addr, opened, release))
    };
    // Post at a webhook's pace while the flood goes on: it fills every
    // permit a few seconds in, and keeps coming.
    let mut answers = Vec::new();
    let mut keep_alive_answers = Vec::new();
    let mut full_at = None;
    for sequence in 200..200 + EVENTS {
        let (status, latency) = timed_post(&client, &bridge, sequence).await;
        answers.push((status, latency));
        if sequence % 100 == 0 {
            keep_alive_answers.push(post_on(&mut keep_alive, sequence));
        }
        if full_at.is_none() && opened.load(Ordering::Relaxed) > 2_048 {
            full_at = Some(answers.len());
        }
        tokio::time::sleep(Duration::from_millis(20).saturating_sub(latency)).await;
    }
    let opened_during = opened.load(Ordering::Relaxed);
    let full_at = full_at.expect("the flood filled every connection permit while posting");
    assert!(
        full_at < EVENTS as usize / 2,
        "at least half the events were posted with every permit taken (full after {full_at})"
    );
    release.store(true, Ordering::Relaxed);
    let connected = attacker.join().unwrap();
    let mut slowest_answers: Vec<(usize, Duration)> = answers
        .iter()
        .map(|(_, latency)| *latency)
        .enumerate()
        .collect();
    slowest_answers.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
    println!(
        "slowest answers (index, latency): {:?}",
        &slowest_answers[..5]
    );
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    let slowest = *latencies.last().unwrap();
    let rss_mib = peak_rss_mib(bridge.pid());
    println!(
        "CONNECTION-FLOOD {}",
        serde_json::json!({
            "silent": SILENT, "half_sent": HALF_SENT, "connected": connected,
            "opened_while_posting": opened_during, "events": EVENTS,
            "events_posted_before_the_permits_ran_out": full_at,
            "answered_2xx": answers.iter().filter(|(s, _)| *s == 200 || *s == 202).count(),
            "normal_p99_ms": normal_p99.as_secs_f64() * 1e3,
            "flood_p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            "flood_p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            "flood_max_ms": slowest.as_secs_f64() * 1e3,
            "flood_max_over_normal_p99": slowest.as_secs_f64() / normal_p99.as_secs_f64(),
            "bridge_peak_rss_mib": rss_mib,
        })
    );
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every event published during the flood"
    );
    assert_eq!(
        keep_alive_answers,
        vec![200; keep_alive_answers.len()],
        "the keep-alive connection delivers every 2 s through the flood"
    );
    assert!(
        connected > SILENT,
        "the flood really connected: {connected}"
    );
    // Before the fix the post never got an answer (curl gave up after 5 s).
    // The latency ratio to the normal p99 is a timing figure: reported above
    // (goal: within 3x), asserted only far from scheduling noise.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer during the flood {slowest:?} vs normal p99 {normal_p99:?}"
    );
}
