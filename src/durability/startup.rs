//! What a delivery waits for while the bridge starts. The start-up checks
//! (the brokers and the topics, the schema ids) run behind an open
//! listener, so hanging dependencies cannot keep the port closed. A record
//! that arrives before they have settled waits for them, so a healthy start
//! publishes instead of spooling its first events; but never past a bound
//! from start-up (the ack deadline): then it takes the path they have left
//! it, the spool while the topics or its schema id are missing.

use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The start-up checks a delivery waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The brokers answered and the topics exist, or the brokers did not answer.
    Kafka,
    /// The registry gave the schema ids, or did not answer.
    Registry,
}

/// Until when, and for which checks, a delivery waits at start-up.
#[derive(Debug)]
pub struct StartupGate {
    kafka: CancellationToken,
    registry: CancellationToken,
    /// No delivery waits past this instant, whatever the checks do.
    open_at: Instant,
}

impl StartupGate {
    /// A gate that deliveries wait at for at most `wait_at_most` from now.
    pub fn new(wait_at_most: Duration) -> StartupGate {
        StartupGate {
            kafka: CancellationToken::new(),
            registry: CancellationToken::new(),
            open_at: Instant::now() + wait_at_most,
        }
    }

    /// A gate with every check settled (`spool drain` ran them itself).
    pub fn passed() -> StartupGate {
        let gate = StartupGate::new(Duration::ZERO);
        gate.settle(Check::Kafka);
        gate.settle(Check::Registry);
        gate
    }

    fn token(&self, check: Check) -> &CancellationToken {
        match check {
            Check::Kafka => &self.kafka,
            Check::Registry => &self.registry,
        }
    }

    /// `check` has settled, or need not be waited for.
    pub fn settle(&self, check: Check) {
        self.token(check).cancel();
    }

    /// Settles `check` when dropped: at the end of the check, however it ends.
    pub fn settles_on_drop(&self, check: Check) -> DropGuard {
        self.token(check).clone().drop_guard()
    }

    /// Waits until `check` has settled, however long it takes.
    pub async fn checked(&self, check: Check) {
        self.token(check).cancelled().await;
    }

    /// Whether `check` has settled.
    pub fn has_settled(&self, check: Check) -> bool {
        self.token(check).is_cancelled()
    }

    /// Whether every check has settled.
    pub fn settled(&self) -> bool {
        self.kafka.is_cancelled() && self.registry.is_cancelled()
    }

    /// Waits until every check has settled, or the bound has passed.
    pub async fn pass(&self) {
        if self.settled() {
            return;
        }
        let both = async {
            self.kafka.cancelled().await;
            self.registry.cancelled().await;
        };
        let _ = tokio::time::timeout_at(self.open_at, both).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delivery_waits_for_both_checks_and_no_longer_than_the_bound() {
        let bound = Duration::from_millis(600);
        let gate = StartupGate::new(bound);
        let started = Instant::now();
        gate.settle(Check::Registry);
        let kafka = gate.settles_on_drop(Check::Kafka);
        let waiting = tokio::spawn(async move {
            gate.pass().await;
            gate
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "Kafka's check is still running");
        drop(kafka);
        let gate = waiting.await.unwrap();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(gate.settled());

        let hanging = StartupGate::new(bound);
        let started = Instant::now();
        hanging.pass().await;
        let waited = started.elapsed();
        assert!(
            waited >= bound && waited < bound * 2,
            "checks that hang hold a delivery for the bound only: {waited:?}"
        );
        assert!(!hanging.settled());
        let later = Instant::now();
        hanging.pass().await;
        assert!(
            later.elapsed() < Duration::from_millis(50),
            "past the bound, nobody waits"
        );
    }
}
