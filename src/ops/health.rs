//! What this pod reports about itself, and the watcher that keeps it current.
//!
//! - **Readiness** (`/readyz`) means "this pod can make an event durable
//!   now": its spool is writable (a write is probed every couple of
//!   seconds) and has room for a largest record. Kafka's state is left out
//!   on purpose: while Kafka is down the spool takes the events, and taking
//!   every pod out of the Service would turn a Kafka outage into events the
//!   vendor drops.
//! - **Status** (`/status`) is what an operator asks during an incident:
//!   Kafka's reachability and the topics, each schema's registry id, the
//!   spool's backlog and what its replay waits for.
//! - The watcher also finishes what start-up could not: topics are created
//!   once Kafka is reachable.
//! - A copier alone (`recordings run`, `CopierHealth`) is ready once its
//!   copier has started: store opened, pointer schema registered, consumer
//!   subscribed.

use crate::durability::delivery::Delivery;
use crate::durability::kafka::{Publisher, TopicSpec};
use crate::http::body::BodyBudget;
use crate::ops::admin::Probe;
use crate::recordings::copier::CopierState;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often, and how patiently, the watcher checks the spool and Kafka.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The last broker check.
struct KafkaState {
    reachable: Option<bool>,
    error: Option<String>,
    since: Instant,
}

pub struct Health {
    delivery: Arc<Delivery>,
    publisher: Arc<Publisher>,
    /// Spool bytes a largest record takes: the room readiness asks for.
    largest_record: u64,
    /// The topics to create once Kafka is reachable; `None` when they are
    /// not the bridge's to create.
    topics: Option<TopicSpec>,
    kafka: Mutex<KafkaState>,
    body_budget: Arc<BodyBudget>,
}

impl Health {
    pub fn new(
        delivery: Arc<Delivery>,
        publisher: Arc<Publisher>,
        largest_record: u64,
        topics: Option<TopicSpec>,
        body_budget: Arc<BodyBudget>,
    ) -> Self {
        Health {
            delivery,
            publisher,
            largest_record,
            topics,
            body_budget,
            kafka: Mutex::new(KafkaState {
                reachable: None,
                error: None,
                since: Instant::now(),
            }),
        }
    }

    /// `Ok` when this pod can make an event durable now, else the reasons.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let spool = self.delivery.spool();
        let mut reasons = Vec::new();
        if let Some(error) = spool.write_error() {
            reasons.push(format!("spool is not writable: {error}"));
        }
        if !spool.has_room_for(self.largest_record) {
            reasons.push(format!(
                "spool is full: {} of {} bytes used, and a largest record needs {}",
                spool.used_bytes(),
                spool.cap_bytes(),
                self.largest_record
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The `/status` report.
    pub fn status(&self) -> Value {
        let spool = self.delivery.spool();
        let (records, oldest) = self.delivery.backlog_summary();
        let kafka = self.kafka.lock().expect("kafka state lock");
        let readiness = self.readiness();
        json!({
            "ready": readiness.is_ok(),
            "reasons": readiness.err().unwrap_or_default(),
            "spool": {
                "records": records,
                "bytes": spool.used_bytes(),
                "cap_bytes": spool.cap_bytes(),
                "parked": spool.parked(),
                "oldest_age_secs": oldest.unwrap_or_default().as_secs(),
                "write_error": spool.write_error(),
            },
            "replay": { "waiting_for": self.delivery.waiting_for() },
            "kafka": {
                "reachable": kafka.reachable,
                "error": kafka.error,
                "for_secs": kafka.since.elapsed().as_secs(),
                "topics_ready": self.delivery.topics_ready(),
            },
            "registry": self.delivery.schemas().status(),
            "http": {
                "body_bytes_held": self.body_budget.held(),
                "body_budget_bytes": self.body_budget.capacity(),
            },
            "runtime": {
                "workers": tokio::runtime::Handle::try_current()
                    .ok()
                    .map(|runtime| runtime.metrics().num_workers()),
            },
        })
    }

    /// Every `CHECK_INTERVAL` until `stop`: probes the spool, checks the
    /// brokers, creates the topics once they are reachable, and updates the
    /// gauges.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(error) = self.delivery.spool().probe().await {
                tracing::error!(%error, "spool probe failed: not ready");
            }
            self.check_kafka().await;
            let ready = self.readiness().is_ok();
            metrics::gauge!(crate::observe::metrics::READY).set(f64::from(u8::from(ready)));
            metrics::gauge!(crate::observe::metrics::REGISTRY_PENDING)
                .set(self.delivery.schemas().pending() as f64);
            tokio::select! {
                () = tokio::time::sleep(CHECK_INTERVAL) => {},
                () = stop.cancelled() => return,
            }
        }
    }

    /// Checks the brokers, records what it found, and creates the topics
    /// once they are reachable. Returns whether they are.
    pub async fn check_kafka(&self) -> bool {
        let result = self.publisher.check_broker(BROKER_CHECK_TIMEOUT).await;
        let reachable = result.is_ok();
        {
            let mut kafka = self.kafka.lock().expect("kafka state lock");
            if kafka.reachable != Some(reachable) {
                match &result {
                    Ok(()) => tracing::info!("Kafka reachable"),
                    Err(error) => {
                        tracing::warn!(%error, "Kafka unreachable; events go to the spool")
                    }
                }
                kafka.since = Instant::now();
            }
            kafka.reachable = Some(reachable);
            kafka.error = result.err().map(|error| error.to_string());
        }
        metrics::gauge!(crate::observe::metrics::KAFKA_REACHABLE)
            .set(f64::from(u8::from(reachable)));
        if reachable && !self.delivery.topics_ready() {
            self.create_topics().await;
        }
        reachable
    }

    async fn create_topics(&self) {
        if let Some(spec) = &self.topics {
            if let Err(error) = self
                .publisher
                .create_topics(spec, BROKER_CHECK_TIMEOUT)
                .await
            {
                tracing::warn!(%error, "cannot create the topics yet");
                return;
            }
            self.publisher
                .check_topic_limits(spec, BROKER_CHECK_TIMEOUT)
                .await;
        }
        tracing::info!("topics ready: sending what was spooled");
        self.delivery.set_topics_ready();
    }
}

impl Probe for Health {
    fn readiness(&self) -> Result<(), Vec<String>> {
        Health::readiness(self)
    }

    fn status(&self) -> Value {
        Health::status(self)
    }
}

/// What `recordings run` reports: its copier's state.
pub struct CopierHealth {
    pub state: Arc<CopierState>,
    pub group_id: String,
}

impl Probe for CopierHealth {
    fn readiness(&self) -> Result<(), Vec<String>> {
        if self.state.running() {
            return Ok(());
        }
        let why = self
            .state
            .start_error()
            .unwrap_or_else(|| "starting".into());
        Err(vec![format!("recording copier not running: {why}")])
    }

    fn status(&self) -> Value {
        let readiness = self.readiness();
        json!({
            "ready": readiness.is_ok(),
            "reasons": readiness.err().unwrap_or_default(),
            "recordings": {
                "group_id": self.group_id,
                "running": self.state.running(),
                "pending": self.state.pending(),
            },
        })
    }
}
