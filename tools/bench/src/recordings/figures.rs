//! Issue 27's figures from a run's phases: copies/s and MB/s for the small
//! and large recordings, MB/s for the RSS-size one, the event-to-`stored`
//! latency at p50/p99, each against the copy ceiling of the same run; the
//! bridge's RSS growth while copying the RSS-size recording against the
//! issue's 32 MiB; and whether every copy arrived intact.

use crate::recordings::phases::SizeClass;
use crate::recordings::report::{Figure, PhaseReport};
use crate::recordings::Classes;

/// The bound on RSS growth while one 500 MB recording is copied.
const RSS_GROWTH_GOAL_MIB: f64 = 32.0;

/// The figures; `concurrency` copies ran at a time, the latency phases at `rate`.
pub fn figures(
    phases: &[PhaseReport],
    classes: &Classes,
    concurrency: usize,
    rate: f64,
) -> Vec<Figure> {
    let find = |name: String| phases.iter().find(|phase| phase.phase == name);
    let (small, large, huge) = (&classes.small, &classes.large, &classes.rss);
    let mut figures = Vec::new();
    for class in [small, large] {
        let (Some(bridge), Some(ceiling)) =
            (find(class.phase("bridge")), find(class.phase("ceiling")))
        else {
            continue;
        };
        let at = format!("{} recordings, {concurrency} at a time", class.size);
        figures.push(Figure::versus(
            &format!("copies/s, {at}"),
            "/s",
            bridge.copies_per_s,
            ceiling.copies_per_s,
        ));
        figures.push(Figure::versus(
            &format!("MB/s, {at}"),
            "MB/s",
            bridge.mb_per_s,
            ceiling.mb_per_s,
        ));
    }
    if let (Some(bridge), Some(ceiling)) = (find(huge.phase("bridge")), find(huge.phase("ceiling")))
    {
        figures.push(Figure::versus(
            &format!("MB/s, one {} recording", huge.size),
            "MB/s",
            bridge.mb_per_s,
            ceiling.mb_per_s,
        ));
        let (idle, peak) = (
            bridge.idle_rss_mib.unwrap_or(f64::NAN),
            bridge.peak_rss_mib.unwrap_or(f64::NAN),
        );
        let growth = peak - idle;
        figures.push(
            Figure::goal(
                &format!("bridge RSS growth copying one {} recording", huge.size),
                "MiB",
                growth,
                &format!("<= {RSS_GROWTH_GOAL_MIB}"),
                growth <= RSS_GROWTH_GOAL_MIB,
            )
            .with_note(format!("{idle:.1} before, {peak:.1} at the peak")),
        );
    }
    latency_figures(&mut figures, phases, &classes.latency, rate);
    let recordings: u64 = phases.iter().map(|phase| phase.recordings).sum();
    let intact: u64 = phases.iter().map(|phase| phase.checked.intact).sum();
    figures.push(Figure::goal(
        "copies stored and intact, all phases",
        "copies",
        intact as f64,
        &format!("{recordings}"),
        intact == recordings,
    ));
    figures
}

/// Event to `stored` at p50/p99, open loop, against the ceiling's copy
/// time at the same rate.
fn latency_figures(
    figures: &mut Vec<Figure>,
    phases: &[PhaseReport],
    latency: &SizeClass,
    rate: f64,
) {
    let find = |name: String| phases.iter().find(|phase| phase.phase == name);
    let (Some(bridge), Some(ceiling)) = (
        find(latency.phase("bridge")),
        find(latency.phase("ceiling")),
    ) else {
        return;
    };
    let quantiles = [
        ("p50", bridge.p50_ms, ceiling.p50_ms),
        ("p99", bridge.p99_ms, ceiling.p99_ms),
    ];
    for (quantile, bridge_ms, ceiling_ms) in quantiles {
        let name = format!(
            "event → `stored` {quantile}, {} recordings at {rate:.1}/s (ceiling: the download alone)",
            latency.size
        );
        figures.push(Figure::versus(&name, "ms", bridge_ms, ceiling_ms));
    }
}
