//! The recordings run's results: one row per phase, then the figures issue
//! 27 asks for, each beside the copy ceiling measured in the same run and
//! their ratio, and the goal where it sets one. Written as JSON
//! (for comparing runs) and as markdown.

use crate::recordings::checks::Checked;
use serde::Serialize;
use std::fmt::Write;

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    /// `bridge` or `copy ceiling`.
    pub target: String,
    /// `burst, 4 copies at a time` or `open, 40.0/s`.
    pub load: String,
    pub recordings: u64,
    pub bytes_each: u64,
    pub checked: Checked,
    /// From the phase's start to its last copy complete (the ceiling: its
    /// file closed; the bridge: its pointer record's `stored_at`).
    pub elapsed_s: f64,
    /// Intact copies per second.
    pub copies_per_s: f64,
    /// Intact copies' bytes per second, in 10^6 bytes.
    pub mb_per_s: f64,
    /// What the latencies run from and to.
    pub latency_span: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The bridge's resident memory before the phase and at its peak.
    pub idle_rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// One figure of the issue's, against the ceiling where there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub bridge: f64,
    pub ceiling: Option<f64>,
    /// bridge / ceiling.
    pub ratio: Option<f64>,
    pub goal: Option<String>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

impl Figure {
    pub fn versus(name: &str, unit: &str, bridge: f64, ceiling: f64) -> Figure {
        Figure {
            name: name.to_owned(),
            unit: unit.to_owned(),
            bridge,
            ceiling: Some(ceiling),
            ratio: Some(bridge / ceiling),
            goal: None,
            met: None,
            note: None,
        }
    }

    pub fn goal(name: &str, unit: &str, value: f64, goal: &str, met: bool) -> Figure {
        Figure {
            name: name.to_owned(),
            unit: unit.to_owned(),
            bridge: value,
            ceiling: None,
            ratio: None,
            goal: Some(goal.to_owned()),
            met: Some(met),
            note: None,
        }
    }

    pub fn with_note(mut self, note: String) -> Figure {
        self.note = Some(note);
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingsReport {
    pub run: String,
    pub label: Option<String>,
    pub settings: serde_json::Value,
    pub phases: Vec<PhaseReport>,
    pub figures: Vec<Figure>,
}

impl RecordingsReport {
    /// Copies that did not arrive intact, over every phase.
    pub fn broken_copies(&self) -> u64 {
        self.phases
            .iter()
            .map(|phase| phase.recordings - phase.checked.intact)
            .sum()
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let label = self.label.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "## superfone-bridge recordings benchmark `{}` {label}\n",
            self.run
        );
        let _ = writeln!(
            out,
            "| phase | target | load | recordings | MB each | stored | intact (bytes compared) | s | copies/s | MB/s | p50 ms | p99 ms | max ms | latency from → to | bridge RSS MiB before → peak |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for phase in &self.phases {
            let rss = match (phase.idle_rss_mib, phase.peak_rss_mib) {
                (Some(idle), Some(peak)) => format!("{idle:.1} → {peak:.1}"),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                phase.phase,
                phase.target,
                phase.load,
                phase.recordings,
                phase.bytes_each as f64 / 1e6,
                phase.checked.stored,
                phase.checked.intact,
                phase.checked.sha256_checked,
                phase.elapsed_s,
                phase.copies_per_s,
                phase.mb_per_s,
                phase.p50_ms,
                phase.p99_ms,
                phase.max_ms,
                phase.latency_span,
                rss,
            );
        }
        self.figures_markdown(&mut out);
        for phase in &self.phases {
            for problem in &phase.checked.problems {
                let _ = writeln!(out, "- {}: {problem}", phase.phase);
            }
        }
        out
    }

    fn figures_markdown(&self, out: &mut String) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| figure | bridge | copy ceiling | bridge / ceiling | goal | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for figure in &self.figures {
            let unit = &figure.unit;
            let ceiling = figure
                .ceiling
                .map_or("–".into(), |ceiling| amount(ceiling, unit));
            let ratio = figure
                .ratio
                .map_or("–".into(), |ratio| format!("{ratio:.2}"));
            let note = figure
                .note
                .as_deref()
                .map_or(String::new(), |note| format!(" ({note})"));
            let met = figure.met.map_or("", |met| if met { "yes" } else { "no" });
            let _ = writeln!(
                out,
                "| {} | {}{note} | {ceiling} | {ratio} | {} | {met} |",
                figure.name,
                amount(figure.bridge, unit),
                figure.goal.as_deref().unwrap_or(""),
            );
        }
    }
}

/// `12.3 MB/s`; a count of copies without decimals.
fn amount(value: f64, unit: &str) -> String {
    match unit {
        "copies" => format!("{value:.0} {unit}"),
        _ => format!("{value:.1} {unit}"),
    }
}

/// The value at quantile `q` of `values` (sorted here), nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut values, 0.5), 50.0);
        assert_eq!(quantile(&mut values, 0.99), 99.0);
        assert_eq!(quantile(&mut values, 1.0), 100.0);
        assert_eq!(quantile(&mut [7.0], 0.99), 7.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }
}
