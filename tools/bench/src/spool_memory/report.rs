//! The spool-memory run's results: what each part measured, and issue 28's
//! figures from them, each against its goal (RSS growth over the idle bridge
//! for the HTTP part, the chart's memory request for the full spool), with
//! the growth per entry. Written as JSON (for comparing runs) and markdown.

use crate::spool_memory::fill::Filled;
use crate::spool_memory::memory::{mib, Peak};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Part (a): events posted over HTTP with Kafka unreachable, a restart on
/// that spool, then Kafka up.
#[derive(Debug, Clone, Serialize)]
pub struct HttpPart {
    pub entries: u64,
    pub leads: u64,
    pub body_bytes: u64,
    pub statuses: BTreeMap<String, u64>,
    pub post_s: f64,
    /// The first start, on an empty spool: its peak and its idle RSS.
    pub start_peak: Peak,
    pub idle_kib: u64,
    /// After every event was answered, the load over.
    pub steady_kib: u64,
    /// The restart on that spool: from spawn to ready.
    pub restart_ready_s: f64,
    pub restart_peak: Peak,
    pub restart_steady_kib: u64,
    /// Kafka up until the backlog is empty.
    pub replay: Replay,
}

/// Part (b): a spool written in its real format, reopened, replayed and
/// drained.
#[derive(Debug, Clone, Serialize)]
pub struct FullPart {
    pub filled: Filled,
    pub idle_kib: u64,
    pub reopen_ready_s: f64,
    pub reopen_peak: Peak,
    pub steady_kib: u64,
    pub replay: Replay,
    pub drain: Option<Drain>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub elapsed_s: f64,
    pub peak: Peak,
    /// Events found on the broker afterwards, of those spooled.
    pub delivered: u64,
    pub missing: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub elapsed_s: f64,
    pub peak: Peak,
    /// What `spool drain` printed.
    pub output: serde_json::Value,
    pub delivered: u64,
    pub missing: u64,
}

/// One figure of the issue's, with its goal where it sets one.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: String,
    pub goal: Option<String>,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpoolMemoryReport {
    pub run: String,
    pub label: Option<String>,
    pub settings: serde_json::Value,
    pub http: Option<HttpPart>,
    pub full: Option<FullPart>,
    pub figures: Vec<Figure>,
}

/// The goals the figures are checked against.
pub struct Goals {
    pub growth_mib: f64,
    /// The chart's `resources.requests.memory`, as written and in MiB.
    pub request: (String, f64),
}

fn figure(name: String, value: String, note: String) -> Figure {
    Figure {
        name,
        value,
        goal: None,
        met: None,
        note,
    }
}

fn goal(name: String, value_mib: f64, at_most: f64, goal: &str, note: String) -> Figure {
    Figure {
        name,
        value: format!("{value_mib:.1} MiB"),
        goal: Some(goal.to_owned()),
        met: Some(value_mib <= at_most),
        note,
    }
}

/// `+12.3 MiB (64 B/entry)` of `kib` over `idle_kib`, for `entries`.
fn per_entry(kib: u64, idle_kib: u64, entries: u64) -> String {
    let growth = kib as f64 - idle_kib as f64;
    format!(
        "{:+.1} MiB over idle, {:.0} B/entry",
        growth / 1024.0,
        growth * 1024.0 / entries.max(1) as f64
    )
}

fn delivered(name: &str, delivered: u64, expected: u64, missing: u64) -> Figure {
    Figure {
        name: name.to_owned(),
        value: format!("{delivered} of {expected}"),
        goal: Some(format!("{expected}")),
        met: Some(delivered == expected && missing == 0),
        note: format!("{missing} missing"),
    }
}

pub fn http_figures(part: &HttpPart, goals: &Goals) -> Vec<Figure> {
    let (n, idle) = (part.entries, part.idle_kib);
    let growth = |kib: u64| mib(kib) - mib(idle);
    let limit = goals.growth_mib;
    let at_most = format!("growth <= {limit} MiB");
    vec![
        figure(
            "(a) idle bridge, Kafka unreachable".into(),
            format!("{:.1} MiB", mib(idle)),
            format!("start-up peak {:.1} MiB", part.start_peak.mib()),
        ),
        figure(
            format!("(a) {n} events posted over HTTP, {} leads", part.leads),
            format!("{:.0} /s", n as f64 / part.post_s),
            format!(
                "{:.1} s, {:.0} B/body; answers {:?}",
                part.post_s,
                part.body_bytes as f64 / n.max(1) as f64,
                part.statuses
            ),
        ),
        goal(
            "(a) RSS growth while serving, after the load".into(),
            growth(part.steady_kib),
            limit,
            &at_most,
            format!(
                "{:.1} MiB; {}",
                mib(part.steady_kib),
                per_entry(part.steady_kib, idle, n)
            ),
        ),
        goal(
            "(a) RSS growth at the peak of the restart on that spool (VmHWM)".into(),
            growth(hwm(&part.restart_peak)),
            limit,
            &at_most,
            format!(
                "{:.1} MiB, ready after {:.1} s; {}",
                part.restart_peak.mib(),
                part.restart_ready_s,
                per_entry(hwm(&part.restart_peak), idle, n)
            ),
        ),
        goal(
            "(a) RSS growth while serving after the restart".into(),
            growth(part.restart_steady_kib),
            limit,
            &at_most,
            format!(
                "{:.1} MiB; {}",
                mib(part.restart_steady_kib),
                per_entry(part.restart_steady_kib, idle, n)
            ),
        ),
        figure(
            "(a) peak during replay, Kafka up (VmHWM)".into(),
            format!("{:.1} MiB", part.replay.peak.mib()),
            format!(
                "{:.1} s to an empty backlog; {}",
                part.replay.elapsed_s,
                per_entry(hwm(&part.replay.peak), idle, n)
            ),
        ),
        delivered(
            "(a) events on the broker after the replay",
            part.replay.delivered,
            n,
            part.replay.missing,
        ),
    ]
}

pub fn full_figures(part: &FullPart, goals: &Goals) -> Vec<Figure> {
    let filled = &part.filled;
    let (n, idle) = (filled.entries, part.idle_kib);
    let (request, request_mib) = (&goals.request.0, goals.request.1);
    let under = format!("<= request {request}");
    let mut figures = vec![
        figure(
            "(b) full spool written in the real format".into(),
            format!("{n} entries"),
            format!(
                "{:.0} MiB of segments ({:.0} B/entry), {:.0} B/body, {} keys, written in {:.0} s; idle bridge {:.1} MiB",
                filled.spool_bytes as f64 / 1048576.0,
                filled.spool_bytes as f64 / n.max(1) as f64,
                filled.body_bytes as f64 / n.max(1) as f64,
                filled.keys,
                filled.elapsed_s,
                mib(idle)
            ),
        ),
        goal(
            "(b) peak during reopen (start-up, VmHWM)".into(),
            part.reopen_peak.mib(),
            request_mib,
            &under,
            format!(
                "ready after {:.1} s; {}",
                part.reopen_ready_s,
                per_entry(hwm(&part.reopen_peak), idle, n)
            ),
        ),
        goal(
            "(b) steady while serving, Kafka unreachable".into(),
            mib(part.steady_kib),
            request_mib,
            &under,
            per_entry(part.steady_kib, idle, n),
        ),
        goal(
            "(b) peak during replay, Kafka up (VmHWM)".into(),
            part.replay.peak.mib(),
            request_mib,
            &under,
            format!(
                "{:.1} s to an empty backlog; {}",
                part.replay.elapsed_s,
                per_entry(hwm(&part.replay.peak), idle, n)
            ),
        ),
        delivered(
            "(b) events on the broker after the replay",
            part.replay.delivered,
            n,
            part.replay.missing,
        ),
    ];
    if let Some(drain) = &part.drain {
        figures.push(goal(
            "(b) peak in `spool drain` (VmHWM)".into(),
            drain.peak.mib(),
            request_mib,
            &under,
            format!("{:.1} s; printed {}", drain.elapsed_s, drain.output),
        ));
        figures.push(delivered(
            "(b) events on the broker after `spool drain`",
            drain.delivered,
            n,
            drain.missing,
        ));
    }
    figures
}

/// The kernel's peak, or the sampled one if that is higher (it cannot be,
/// unless the reset failed).
fn hwm(peak: &Peak) -> u64 {
    peak.hwm_kib.max(peak.sampled_kib)
}

impl SpoolMemoryReport {
    /// Events spooled that did not reach the broker, over every part.
    pub fn undelivered(&self) -> u64 {
        let http = self.http.as_ref().map_or(0, |part| part.replay.missing);
        let full = self.full.as_ref().map_or(0, |part| {
            part.replay.missing + part.drain.as_ref().map_or(0, |drain| drain.missing)
        });
        http + full
    }

    pub fn unmet(&self) -> Vec<&str> {
        self.figures
            .iter()
            .filter(|figure| figure.met == Some(false))
            .map(|figure| figure.name.as_str())
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let label = self.label.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "## superfone-bridge spool memory `{}` {label}\n",
            self.run
        );
        let _ = writeln!(out, "| figure | value | goal | met | detail |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for figure in &self.figures {
            let met = figure
                .met
                .map_or("", |met| if met { "yes" } else { "**no**" });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {met} | {} |",
                figure.name,
                figure.value,
                figure.goal.as_deref().unwrap_or(""),
                figure.note.replace('|', "\\|"),
            );
        }
        let _ = writeln!(out, "\nsettings: `{}`", self.settings);
        out
    }
}
