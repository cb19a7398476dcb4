//! The soak's faults, drawn before the run from a seed: the broker frozen
//! (SIGSTOP) and thawed (SIGCONT) at random intervals, and the bridge killed
//! with `kill -9` and restarted. Odd-numbered kills strike in the middle of a
//! freeze (the spool holds events, the broker hangs), even-numbered ones
//! while the broker is up (replay and new events racing), so two kills
//! cover both.

use std::time::Duration;

/// What happens at one moment of the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Action {
    Freeze,
    Thaw,
    Kill,
}

/// The faults of one run, in time order, from its start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub seed: u64,
    pub steps: Vec<(f64, Action)>,
}

/// How the plan is drawn: seconds are `(min, max)` ranges.
#[derive(Debug, Clone)]
pub struct Shape {
    pub duration: Duration,
    pub thawed_secs: (f64, f64),
    pub frozen_secs: (f64, f64),
    pub max_freezes: usize,
    pub kills: usize,
}

/// The broker is left up for this long at the end, so the last events of
/// the load are answered by a bridge that can reach it.
const THAWED_TAIL_SECS: f64 = 5.0;

impl Plan {
    pub fn draw(shape: &Shape, seed: u64) -> Plan {
        let mut random = SplitMix(seed);
        let end = shape.duration.as_secs_f64();
        let mut freezes: Vec<(f64, f64)> = Vec::new();
        let mut at = random.between(shape.thawed_secs);
        while at < end - THAWED_TAIL_SECS && freezes.len() < shape.max_freezes {
            let thaw = (at + random.between(shape.frozen_secs)).min(end - THAWED_TAIL_SECS);
            freezes.push((at, thaw));
            at = thaw + random.between(shape.thawed_secs);
        }
        let mut steps: Vec<(f64, Action)> = freezes
            .iter()
            .flat_map(|(freeze, thaw)| [(*freeze, Action::Freeze), (*thaw, Action::Thaw)])
            .collect();
        for kill in 1..=shape.kills {
            let target = end * kill as f64 / (shape.kills + 1) as f64;
            steps.push((
                kill_time(target, kill % 2 == 1, &freezes, end),
                Action::Kill,
            ));
        }
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        Plan { seed, steps }
    }

    pub fn count(&self, action: Action) -> usize {
        self.steps.iter().filter(|(_, a)| *a == action).count()
    }

    /// Seconds the broker spends frozen under this plan.
    pub fn frozen_secs(&self) -> f64 {
        let mut frozen_since = None;
        let mut total = 0.0;
        for (at, action) in &self.steps {
            match action {
                Action::Freeze => frozen_since = Some(*at),
                Action::Thaw => total += at - frozen_since.take().unwrap_or(*at),
                Action::Kill => {}
            }
        }
        total
    }
}

/// A kill near `target`: in the middle of the nearest freeze when
/// `in_freeze` (if there is one), else outside every freeze.
fn kill_time(target: f64, in_freeze: bool, freezes: &[(f64, f64)], end: f64) -> f64 {
    if in_freeze {
        return freezes
            .iter()
            .map(|(freeze, thaw)| (freeze + thaw) / 2.0)
            .min_by(|a, b| (a - target).abs().total_cmp(&(b - target).abs()))
            .unwrap_or(target);
    }
    match freezes
        .iter()
        .find(|(freeze, thaw)| (*freeze..=*thaw).contains(&target))
    {
        Some((_, thaw)) => (thaw + 3.0).min(end - 1.0),
        None => target,
    }
}

/// splitmix64: a fixed, seedable sequence, so a plan can be drawn again
/// from the seed a report prints.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn between(&mut self, (low, high): (f64, f64)) -> f64 {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        low + unit * (high - low).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_alternate_freezes_and_place_kills() {
        let shape = Shape {
            duration: Duration::from_secs(1800),
            thawed_secs: (30.0, 120.0),
            frozen_secs: (5.0, 60.0),
            max_freezes: usize::MAX,
            kills: 2,
        };
        for seed in 0..50 {
            let plan = Plan::draw(&shape, seed);
            assert_eq!(plan.count(Action::Kill), 2);
            assert!(plan.count(Action::Freeze) >= 5, "{plan:?}");
            let mut frozen = false;
            let mut kills_frozen = Vec::new();
            for (at, action) in &plan.steps {
                assert!(*at < 1800.0 - THAWED_TAIL_SECS + 1e-9 || *action == Action::Kill);
                match action {
                    Action::Freeze => {
                        assert!(!frozen);
                        frozen = true;
                    }
                    Action::Thaw => {
                        assert!(frozen);
                        frozen = false;
                    }
                    Action::Kill => kills_frozen.push(frozen),
                }
            }
            assert!(!frozen, "the plan ends thawed");
            assert_eq!(kills_frozen, [true, false], "{plan:?}");
        }
    }

    #[test]
    fn a_short_plan_has_one_freeze_with_the_kill_inside() {
        let shape = Shape {
            duration: Duration::from_secs(60),
            thawed_secs: (10.0, 15.0),
            frozen_secs: (12.0, 15.0),
            max_freezes: 1,
            kills: 1,
        };
        let plan = Plan::draw(&shape, 7);
        let actions: Vec<Action> = plan.steps.iter().map(|(_, a)| *a).collect();
        assert_eq!(actions, [Action::Freeze, Action::Kill, Action::Thaw]);
    }
}
