//! The run's results: one row per phase, the ratios against the ceilings and
//! the targets, written as JSON (for comparing runs) and a markdown table.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    /// `bridge`, `broker ceiling` or `HTTP ceiling`.
    pub target: String,
    /// `closed, 64 clients` or `open, 1234/s`.
    pub load: String,
    pub offered_per_s: Option<f64>,
    pub sent: u64,
    /// Answered 2xx (HTTP) or acknowledged (producer).
    pub accepted: u64,
    /// Accepted and found on the broker afterwards; `None` where the target
    /// writes no records (HTTP ceiling).
    pub verified: Option<u64>,
    /// Accepted but not found on the broker.
    pub missing: u64,
    /// The first few missing requests' sequence numbers (group id `<run>-<phase>-<seq>`).
    pub missing_seqs: Vec<u64>,
    pub statuses: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Verified records (or, for the HTTP ceiling, 200s) per second.
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// CPU of the serving process (bridge, sink; the producing process for the
    /// broker ceiling) per 1,000 deliveries.
    pub cpu_ms_per_1000: Option<f64>,
    /// Peak resident memory of the serving process during the phase.
    pub peak_rss_mib: Option<f64>,
    /// Most file descriptors (mostly client connections) open at once.
    pub peak_open_fds: Option<u64>,
}

/// A goal from the issue, checked on this run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub name: String,
    pub value: f64,
    pub goal: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub bridge_per_s: f64,
    pub broker_ceiling_per_s: f64,
    pub http_ceiling_per_s: f64,
    /// bridge / min(ceilings).
    pub throughput_ratio: f64,
    pub bridge_p99_at_half_ms: f64,
    pub broker_p99_at_half_ms: f64,
    /// bridge p99 / broker p99, both open loop at 50% of the bridge's max rate.
    pub p99_ratio_at_half: f64,
    pub bridge_peak_rss_mib: f64,
    /// Resident memory once started and ready, before any load.
    pub bridge_idle_rss_mib: f64,
    pub bridge_cpu_ms_per_1000: f64,
    /// The bridge against the Python peer's best, per client count.
    pub versus_peer: Vec<VersusPeer>,
    pub goals: Vec<Goal>,
}

/// The bridge and the Python peer at one closed-loop client count; the
/// peer's figures are the best over the worker counts tried.
#[derive(Debug, Clone, Serialize)]
pub struct VersusPeer {
    pub clients: usize,
    pub bridge_per_s: f64,
    pub peer_per_s: f64,
    pub bridge_cpu_us: f64,
    /// The producer alone (the broker ceiling) at the same client count: the
    /// part of the bridge's CPU that librdkafka spends.
    pub floor_cpu_us: Option<f64>,
    pub peer_cpu_us: f64,
    /// bridge / peer deliveries per second.
    pub throughput_ratio: f64,
    /// bridge / peer CPU per delivery.
    pub cpu_ratio: f64,
}

/// The name of the closed-loop phase of `target` (`bridge`, or `broker` for
/// the producer alone) at `clients`: the run at `--concurrency` keeps the
/// bare name, the others are `<target>-c<clients>`.
pub fn closed_phase(target: &str, clients: usize, concurrency: usize) -> String {
    if clients == concurrency {
        target.to_owned()
    } else {
        format!("{target}-c{clients}")
    }
}

impl VersusPeer {
    fn new(phases: &[PhaseReport], clients: usize, concurrency: usize) -> Option<VersusPeer> {
        let bridge_phase = closed_phase("bridge", clients, concurrency);
        let bridge = phases.iter().find(|phase| phase.phase == bridge_phase)?;
        let floor_phase = closed_phase("broker", clients, concurrency);
        let floor_cpu_us = phases
            .iter()
            .find(|phase| phase.phase == floor_phase)
            .and_then(|phase| phase.cpu_ms_per_1000);
        let suffix = format!("-c{clients}");
        let peers: Vec<&PhaseReport> = phases
            .iter()
            .filter(|phase| phase.phase.starts_with("peer") && phase.phase.ends_with(&suffix))
            .collect();
        if peers.is_empty() {
            return None;
        }
        let peer_per_s = peers
            .iter()
            .map(|phase| phase.deliveries_per_s)
            .fold(0.0, f64::max);
        let peer_cpu_us = peers
            .iter()
            .filter_map(|phase| phase.cpu_ms_per_1000)
            .fold(f64::INFINITY, f64::min);
        let bridge_cpu_us = bridge.cpu_ms_per_1000.unwrap_or(f64::NAN);
        Some(VersusPeer {
            clients,
            bridge_per_s: bridge.deliveries_per_s,
            peer_per_s,
            bridge_cpu_us,
            floor_cpu_us,
            peer_cpu_us,
            throughput_ratio: bridge.deliveries_per_s / peer_per_s,
            cpu_ratio: bridge_cpu_us / peer_cpu_us,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub label: Option<String>,
    pub settings: serde_json::Value,
    pub phases: Vec<PhaseReport>,
    pub summary: Summary,
}

impl Summary {
    pub fn new(
        phases: &[PhaseReport],
        idle_rss_mib: f64,
        compared: &[usize],
        concurrency: usize,
    ) -> Option<Summary> {
        let find = |name: &str| phases.iter().find(|phase| phase.phase == name);
        let bridge = find("bridge")?;
        let broker = find("broker")?;
        let http = find("http")?;
        let bridge_half = find("bridge-open-50")?;
        let broker_half = find("broker-open-50")?;
        let lower_ceiling = broker.deliveries_per_s.min(http.deliveries_per_s);
        let throughput_ratio = bridge.deliveries_per_s / lower_ceiling;
        let p99_ratio_at_half = bridge_half.p99_ms / broker_half.p99_ms;
        let peak_rss = phases
            .iter()
            .filter(|phase| phase.target == "bridge")
            .filter_map(|phase| phase.peak_rss_mib)
            .fold(0.0, f64::max);
        let versus_peer: Vec<VersusPeer> = compared
            .iter()
            .filter_map(|clients| VersusPeer::new(phases, *clients, concurrency))
            .collect();
        let mut goals = vec![
            Goal {
                name: "throughput / lower ceiling".into(),
                value: throughput_ratio,
                goal: ">= 0.70".into(),
                met: throughput_ratio >= 0.70,
            },
            Goal {
                name: "p99 at 50% of max rate / broker p99".into(),
                value: p99_ratio_at_half,
                goal: "<= 2.0".into(),
                met: p99_ratio_at_half <= 2.0,
            },
            Goal {
                name: "peak RSS under load (MiB)".into(),
                value: peak_rss,
                goal: "<= 64".into(),
                met: peak_rss <= 64.0,
            },
        ];
        for versus in &versus_peer {
            if [8, 64].contains(&versus.clients) {
                goals.push(Goal {
                    name: format!(
                        "CPU per delivery / Python peer's, {} clients",
                        versus.clients
                    ),
                    value: versus.cpu_ratio,
                    goal: "<= 0.33".into(),
                    met: versus.cpu_ratio <= 1.0 / 3.0,
                });
            }
            if [64, 256].contains(&versus.clients) {
                goals.push(Goal {
                    name: format!("deliveries/s / Python peer's, {} clients", versus.clients),
                    value: versus.throughput_ratio,
                    goal: ">= 3.0".into(),
                    met: versus.throughput_ratio >= 3.0,
                });
            }
        }
        Some(Summary {
            versus_peer,
            bridge_per_s: bridge.deliveries_per_s,
            broker_ceiling_per_s: broker.deliveries_per_s,
            http_ceiling_per_s: http.deliveries_per_s,
            throughput_ratio,
            bridge_p99_at_half_ms: bridge_half.p99_ms,
            broker_p99_at_half_ms: broker_half.p99_ms,
            p99_ratio_at_half,
            bridge_peak_rss_mib: peak_rss,
            bridge_idle_rss_mib: idle_rss_mib,
            bridge_cpu_ms_per_1000: bridge.cpu_ms_per_1000.unwrap_or(f64::NAN),
            goals,
        })
    }
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |value| format!("{value:.decimals$}"))
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let label = self.label.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "## superfone-bridge benchmark `{}` {label}\n",
            self.run
        );
        let _ = writeln!(
            out,
            "| phase | target | load | sent | accepted | verified on broker | missing | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | CPU ms / 1000 | peak RSS MiB | peak open fds | answers |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for phase in &self.phases {
            let statuses = phase
                .statuses
                .iter()
                .map(|(status, count)| format!("{status}×{count}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                phase.phase,
                phase.target,
                phase.load,
                phase.sent,
                phase.accepted,
                phase.verified.map_or("–".into(), |v| v.to_string()),
                phase.missing,
                phase.deliveries_per_s,
                phase.p50_ms,
                phase.p99_ms,
                phase.p999_ms,
                phase.max_ms,
                optional(phase.cpu_ms_per_1000, 0),
                optional(phase.peak_rss_mib, 1),
                phase.peak_open_fds.map_or("–".into(), |fds| fds.to_string()),
                statuses,
            );
        }
        let summary = &self.summary;
        let _ = writeln!(out);
        let _ = writeln!(out, "| ratio | value | goal | met |");
        let _ = writeln!(out, "|---|---|---|---|");
        let _ = writeln!(
            out,
            "| bridge deliveries/s | {:.0} (broker ceiling {:.0}, HTTP ceiling {:.0}) | | |",
            summary.bridge_per_s, summary.broker_ceiling_per_s, summary.http_ceiling_per_s
        );
        let _ = writeln!(
            out,
            "| p99 at 50% of max rate | bridge {:.2} ms, broker {:.2} ms | | |",
            summary.bridge_p99_at_half_ms, summary.broker_p99_at_half_ms
        );
        for versus in &summary.versus_peer {
            let _ = writeln!(
                out,
                "| vs Python peer, {} clients | bridge {:.0}/s at {:.0} µs CPU each (producer alone: {} µs), peer (best) {:.0}/s at {:.0} µs: {:.2}x the throughput, {:.2}x the CPU | | |",
                versus.clients,
                versus.bridge_per_s,
                versus.bridge_cpu_us,
                optional(versus.floor_cpu_us, 0),
                versus.peer_per_s,
                versus.peer_cpu_us,
                versus.throughput_ratio,
                versus.cpu_ratio
            );
        }
        for goal in &summary.goals {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {} | {} |",
                goal.name,
                goal.value,
                goal.goal,
                if goal.met { "yes" } else { "no" }
            );
        }
        let _ = writeln!(
            out,
            "\nbridge CPU per 1,000 deliveries: {:.0} ms; resident memory idle {:.1} MiB, peak under load {:.1} MiB",
            summary.bridge_cpu_ms_per_1000, summary.bridge_idle_rss_mib, summary.bridge_peak_rss_mib
        );
        out
    }
}
