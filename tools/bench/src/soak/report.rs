//! The soak's report: the figures in the fault tests' form (sent, answered,
//! consumed, lost, duplicates, order), memory and spool over time, the
//! fault plan as carried out; as JSON (`soak.json`, and one
//! `SOAK-FIGURES {...}` line) and as Markdown (`soak.md`).

use super::check::Checked;
use super::load::{Outcome, Sent};
use super::schedule::{Action, Plan};
use super::watch::Sample;
use super::Options;
use std::fmt::Write;

/// The figures of one soak, as the fault table shows them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    pub minutes: f64,
    pub rate_per_s: f64,
    pub contacts: u64,
    pub sent: usize,
    pub answered_2xx: usize,
    pub published_200: usize,
    pub spooled_202: usize,
    /// Answered, but not 2xx (503 ...).
    pub refused_non_2xx: usize,
    /// Sent, no answer: the bridge was killed mid-request.
    pub no_answer: usize,
    /// No connection (the bridge down or restarting): nothing sent.
    pub not_connected: usize,
    pub consumed: usize,
    pub lost: usize,
    pub duplicate_records: usize,
    pub order_violations: usize,
    pub leads_with_violations: usize,
    pub repeats_after_later_events: usize,
    pub leads_on_several_partitions: usize,
    pub unaccepted_found: usize,
    pub max_answer_ms: u32,
    pub freezes: usize,
    pub frozen_secs: f64,
    pub kills: usize,
    pub restart_ready_secs: Vec<f64>,
    pub rss_max_mib: f64,
    /// The peak RSS of each bridge process, in start order.
    pub rss_max_per_bridge_mib: Vec<f64>,
    pub spool_bytes_max: u64,
    pub spool_records_max: u64,
    pub spool_dir_bytes_max: u64,
    pub drain_secs: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub run: String,
    pub seed: u64,
    pub figures: Figures,
    pub checked: Checked,
    pub plan: Plan,
    pub samples: Vec<Sample>,
    pub load_secs: f64,
}

pub struct Inputs<'a> {
    pub run: String,
    pub options: &'a Options,
    pub plan: Plan,
    pub sent: &'a [Sent],
    pub checked: Checked,
    pub samples: Vec<Sample>,
    pub restarts_ready_secs: Vec<f64>,
    pub load_secs: f64,
    pub drain_secs: f64,
}

impl Report {
    pub fn new(inputs: Inputs<'_>) -> Report {
        let Inputs {
            run,
            options,
            plan,
            sent,
            checked,
            samples,
            restarts_ready_secs,
            load_secs,
            drain_secs,
        } = inputs;
        let count =
            |wanted: fn(&Outcome) -> bool| sent.iter().filter(|s| wanted(&s.outcome)).count();
        let max =
            |value: fn(&Sample) -> Option<u64>| samples.iter().filter_map(value).max().unwrap_or(0);
        let figures = Figures {
            minutes: options.minutes,
            rate_per_s: options.rate,
            contacts: options.contacts,
            sent: sent.len(),
            answered_2xx: count(|o| matches!(o, Outcome::Accepted { .. })),
            published_200: count(|o| {
                matches!(
                    o,
                    Outcome::Accepted {
                        published: true,
                        ..
                    }
                )
            }),
            spooled_202: count(|o| matches!(o, Outcome::Accepted { status: 202, .. })),
            refused_non_2xx: count(|o| matches!(o, Outcome::Refused(_))),
            no_answer: count(|o| *o == Outcome::NoAnswer),
            not_connected: count(|o| *o == Outcome::NotConnected),
            consumed: checked.consumed,
            lost: checked.lost,
            duplicate_records: checked.duplicate_records,
            order_violations: checked.order_violations,
            leads_with_violations: checked.leads_with_violations,
            repeats_after_later_events: checked.repeats_after_later_events,
            leads_on_several_partitions: checked.leads_on_several_partitions,
            unaccepted_found: checked.unaccepted_found,
            max_answer_ms: sent
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Accepted { .. }))
                .map(|s| s.millis)
                .max()
                .unwrap_or(0),
            freezes: plan.count(Action::Freeze),
            frozen_secs: plan.frozen_secs(),
            kills: plan.count(Action::Kill),
            restart_ready_secs: restarts_ready_secs,
            rss_max_mib: samples.iter().filter_map(|s| s.rss_mib).fold(0.0, f64::max),
            rss_max_per_bridge_mib: rss_per_bridge(&samples),
            spool_bytes_max: max(|s| s.spool_bytes),
            spool_records_max: max(|s| s.spool_records),
            spool_dir_bytes_max: max(|s| Some(s.spool_dir_bytes)),
            drain_secs,
        };
        Report {
            run,
            seed: plan.seed,
            figures,
            checked,
            plan,
            samples,
            load_secs,
        }
    }

    /// Whether the soak kept the guarantee: nothing answered 2xx lost, every
    /// lead in the order it was answered.
    pub fn passed(&self) -> bool {
        self.figures.lost == 0
            && self.figures.order_violations == 0
            && self.figures.leads_on_several_partitions == 0
    }

    pub fn markdown(&self) -> String {
        let f = &self.figures;
        let mut md = String::new();
        let _ = writeln!(md, "# Soak `{}` (seed {})\n", self.run, self.seed);
        let _ = writeln!(
            md,
            "{:.1} min at {:.0} requests/s over {} leads, each lead's events one after another; \
             the broker frozen {} times ({:.0} s in all), the bridge killed with `kill -9` and \
             restarted {} times (ready {} s after each kill).\n",
            f.minutes,
            f.rate_per_s,
            f.contacts,
            f.freezes,
            f.frozen_secs,
            f.kills,
            join(&f.restart_ready_secs, 1),
        );
        md.push_str("| sent | 2xx (200 / 202) | not 2xx | no answer | not connected | consumed | lost | duplicates | order violations | RSS max | spool max |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        let _ = writeln!(
            md,
            "| {} | {} ({} / {}) | {} | {} | {} | {} | **{}** | {} | **{}** | {:.1} MiB | {:.1} MiB, {} records |\n",
            f.sent,
            f.answered_2xx,
            f.published_200,
            f.spooled_202,
            f.refused_non_2xx,
            f.no_answer,
            f.not_connected,
            f.consumed,
            f.lost,
            f.duplicate_records,
            f.order_violations,
            f.rss_max_mib,
            f.spool_bytes_max as f64 / 1_048_576.0,
            f.spool_records_max,
        );
        let _ = writeln!(
            md,
            "Peak RSS per bridge process: {} MiB. Spool directory at most {:.1} MiB. \
             Slowest 2xx answer {} ms. Spool empty {:.1} s after the load stopped. \
             Unanswered events found anyway: {}. Repeats after a later event of their lead: {}. \
             Leads on several partitions: {}.\n",
            join(&f.rss_max_per_bridge_mib, 1),
            f.spool_dir_bytes_max as f64 / 1_048_576.0,
            f.max_answer_ms,
            f.drain_secs,
            f.unaccepted_found,
            f.repeats_after_later_events,
            f.leads_on_several_partitions,
        );
        if !self.checked.lost_examples.is_empty() {
            let _ = writeln!(
                md,
                "Lost (`contact-n`): {}\n",
                self.checked.lost_examples.join(", ")
            );
        }
        if !self.checked.violation_examples.is_empty() {
            md.push_str("Order violations (first ones):\n\n| lead | partition | event (offset) | after event (offset) |\n|---|---|---|---|\n");
            for v in &self.checked.violation_examples {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} ({}) | {} ({}) |",
                    v.contact, v.partition, v.n, v.offset, v.after_n, v.after_offset
                );
            }
            md.push('\n');
        }
        md.push_str(&self.timeline());
        md
    }

    /// One line a minute (or every 10 s in a short soak): what the bridge
    /// held, and the faults.
    fn timeline(&self) -> String {
        let every = if self.figures.minutes >= 5.0 {
            60.0
        } else {
            10.0
        };
        let mut md = String::from(
            "| t (s) | broker | RSS MiB | spool records | spool MiB |\n|---|---|---|---|---|\n",
        );
        let mut next = 0.0;
        for sample in &self.samples {
            if sample.secs < next {
                continue;
            }
            next += every;
            let show = |value: Option<f64>| value.map_or("down".to_owned(), |v| format!("{v:.1}"));
            let _ = writeln!(
                md,
                "| {:.0} | {} | {} | {} | {} |",
                sample.secs,
                if sample.broker_frozen { "frozen" } else { "up" },
                show(sample.rss_mib),
                sample
                    .spool_records
                    .map_or("-".to_owned(), |r| r.to_string()),
                show(sample.spool_bytes.map(|b| b as f64 / 1_048_576.0)),
            );
        }
        md
    }
}

/// Each bridge process's peak: the samples between two restarts (a sample
/// without RSS marks the bridge down).
fn rss_per_bridge(samples: &[Sample]) -> Vec<f64> {
    let mut peaks: Vec<f64> = Vec::new();
    let mut pid = None;
    for sample in samples {
        let Some(rss) = sample.rss_mib else { continue };
        if pid != Some(sample.bridge_pid) {
            pid = Some(sample.bridge_pid);
            peaks.push(0.0);
        }
        if let Some(peak) = peaks.last_mut() {
            *peak = peak.max(rss);
        }
    }
    peaks
}

fn join(values: &[f64], decimals: usize) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}
