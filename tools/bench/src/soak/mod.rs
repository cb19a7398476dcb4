//! `superfone-bench soak` (issue 28): steady load against the real bridge
//! for a long while, with the broker frozen and thawed (SIGSTOP/SIGCONT) at
//! random intervals and the bridge killed with `kill -9` and restarted on
//! the same spool directory; then the spool drained, the topic read back
//! and every 2xx-answered event checked: none lost, each lead in the order
//! it was answered. `scripts/soak` runs it (its own broker and registry:
//! this command freezes the broker), `tests/soak.rs` runs a short one.

pub mod check;
pub mod load;
pub mod report;
pub mod schedule;
pub mod watch;

use crate::processes::{free_local_address, get, spawn, stop, wait_until_ready, SECRET};
use crate::verify;
use anyhow::Context;
use hyper::header::{HeaderName, HeaderValue};
use report::Report;
use schedule::{Action, Plan, Shape};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use superfone_bridge::config::Config;
use superfone_bridge::vocabulary::EventKind;
use tokio::process::{Child, Command};
use watch::Now;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Kafka bootstrap servers: a broker of this soak's own (it is frozen).
    #[arg(long)]
    pub brokers: String,
    /// The pid of that broker's process (tansu), frozen with SIGSTOP.
    #[arg(long)]
    pub broker_pid: i32,
    /// Schema registry URL.
    #[arg(long)]
    pub registry_url: String,
    /// The superfone-bridge binary (the release build for a real soak).
    #[arg(long, default_value = "target/release/superfone-bridge")]
    pub bridge_bin: PathBuf,
    /// The seed payloads; TASK_CHANGE is the soak's template.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Results go to `<out>/<run>/soak.{json,md}`, with the bridge's logs.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// How long the load runs.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Requests per second, all leads together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Leads (contact ids, so Kafka keys).
    #[arg(long, default_value_t = 2_000)]
    pub contacts: u64,
    /// Clients, each sending to its own leads one request at a time.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// The bridge's `delivery.ack_deadline_ms`: short, so a freeze spools.
    #[arg(long, default_value_t = 500)]
    pub ack_deadline_ms: u64,
    /// The bridge's `kafka.message_timeout_ms`: longer than the deadline, so
    /// a first attempt may still be in librdkafka when its event is spooled.
    #[arg(long, default_value_t = 3_000)]
    pub message_timeout_ms: u64,
    /// Seconds the broker stays up between freezes (min,max).
    #[arg(long, value_delimiter = ',', default_values_t = [30.0, 120.0])]
    pub thawed_secs: Vec<f64>,
    /// Seconds a freeze lasts (min,max).
    #[arg(long, value_delimiter = ',', default_values_t = [5.0, 60.0])]
    pub frozen_secs: Vec<f64>,
    /// At most this many freezes.
    #[arg(long, default_value_t = usize::MAX)]
    pub max_freezes: usize,
    /// Times the bridge is killed (kill -9) and restarted.
    #[arg(long, default_value_t = 2)]
    pub kills: usize,
    /// Seed of the fault plan (default: the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long the spool may take to empty once the load has stopped.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout_secs: u64,
}

/// How long a restarted bridge may take to turn ready (its start-up
/// checks wait for a frozen broker).
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// The bridge of the moment: the one started last.
struct Bridge {
    child: Child,
    command: Vec<String>,
    out: PathBuf,
    starts: usize,
}

impl Bridge {
    fn start(command: Vec<String>, out: &Path, now: &Now) -> anyhow::Result<Bridge> {
        let bridge = Bridge {
            child: spawn_bridge(&command, out, 0)?,
            command,
            out: out.to_owned(),
            starts: 1,
        };
        bridge.publish_pid(now);
        Ok(bridge)
    }

    /// `kill -9`, then the same command on the same spool directory.
    async fn kill_and_restart(&mut self, now: &Now) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        now.bridge_pid.store(0, Ordering::Relaxed);
        self.child = spawn_bridge(&self.command, &self.out, self.starts)?;
        self.starts += 1;
        self.publish_pid(now);
        Ok(())
    }

    fn publish_pid(&self, now: &Now) {
        let pid = self.child.id().unwrap_or(0);
        now.bridge_pid.store(pid, Ordering::Relaxed);
    }
}

fn spawn_bridge(command: &[String], out: &Path, start: usize) -> anyhow::Result<Child> {
    spawn(
        Command::new(&command[0])
            .args(&command[1..])
            .env("SUPERFONE_AUTH_SECRETS", SECRET),
        &out.join(format!("bridge-{start}.log")),
    )
}

fn signal_broker(pid: i32, action: Action) -> anyhow::Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let signal = match action {
        Action::Freeze => Signal::STOP,
        _ => Signal::CONT,
    };
    let pid = Pid::from_raw(pid).context("a broker pid is positive")?;
    kill_process(pid, signal).with_context(|| format!("signalling the broker {pid:?}"))
}

/// Thaws the broker however the soak ends: a frozen broker left behind
/// would hang whatever uses it next.
struct ThawOnDrop(i32);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = signal_broker(self.0, Action::Thaw);
    }
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let run = format!("soak{}", unix.as_secs());
    let out = options.out.join(&run);
    std::fs::create_dir_all(&out)?;
    anyhow::ensure!(
        options.thawed_secs.len() == 2 && options.frozen_secs.len() == 2,
        "--thawed-secs and --frozen-secs take MIN,MAX"
    );
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let shape = Shape {
        duration,
        thawed_secs: (options.thawed_secs[0], options.thawed_secs[1]),
        frozen_secs: (options.frozen_secs[0], options.frozen_secs[1]),
        max_freezes: options.max_freezes,
        kills: options.kills,
    };
    let plan = Plan::draw(&shape, options.seed.unwrap_or(unix.as_nanos() as u64));
    eprintln!("[soak] {run}: {:.1} min, plan {plan:?}", options.minutes);

    let mut config = Config::load(None).context("loading the bridge config")?;
    config.kafka.brokers = options.brokers.clone();
    config.registry.url = options.registry_url.clone();
    config.server.listen = free_local_address()?;
    config.admin.listen = free_local_address()?;
    config.spool.dir = out.join("spool");
    config.topics.prefix = format!("{run}.");
    config.delivery.ack_deadline_ms = Duration::from_millis(options.ack_deadline_ms);
    config.kafka.message_timeout_ms = Duration::from_millis(options.message_timeout_ms);
    let config_path = out.join("bridge.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let admin = format!("http://{}", config.admin.listen);
    let topic = config.topics.topic_for(EventKind::TaskChange);

    let _thaw = ThawOnDrop(options.broker_pid);
    let now = Arc::new(Now::default());
    let command = vec![
        options.bridge_bin.display().to_string(),
        "--config".into(),
        config_path.display().to_string(),
        "serve".into(),
    ];
    let mut bridge = Bridge::start(command, &out, &now)?;
    wait_until_ready(&admin, &mut bridge.child).await?;
    let watcher = tokio::spawn(watch::watch(
        now.clone(),
        admin.clone(),
        config.spool.dir.clone(),
    ));
    let template_path = options.fixtures.join("task_change.json");
    let template = serde_json::from_str(
        &std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?,
    )?;
    let load = load::Load {
        url: format!(
            "http://{}{}",
            config.server.listen, config.server.ingest_path
        )
        .parse()?,
        run: run.clone(),
        template,
        group_id_header: HeaderName::from_bytes(config.server.group_id_header.as_bytes())?,
        authorization: HeaderValue::from_str(&format!("Bearer {SECRET}"))?,
        contacts: options.contacts,
        workers: options.workers,
        rate: options.rate,
        duration,
    };
    let started = Instant::now();
    let (sent, faults) = tokio::join!(
        load.run(),
        inject(&plan, &mut bridge, &now, options.broker_pid, &admin)
    );
    let restarts_ready_secs = faults?;
    let load_secs = started.elapsed().as_secs_f64();
    signal_broker(options.broker_pid, Action::Thaw)?;
    now.broker_frozen.store(false, Ordering::Relaxed);

    eprintln!("[soak] {run}: load done; waiting for the spool to empty");
    wait_until_ready(&admin, &mut bridge.child).await?;
    let drain_started = Instant::now();
    wait_for_empty_spool(&admin, Duration::from_secs(options.drain_timeout_secs)).await?;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    now.stop.store(true, Ordering::Relaxed);
    let samples = watcher.await?;
    let exit = stop(&mut bridge.child).await?;
    anyhow::ensure!(exit.success(), "the bridge exited with {exit} on SIGTERM");

    eprintln!("[soak] {run}: reading {topic} back");
    let found = read_back(&options.brokers, &topic, &run).await?;
    let checked = check::check(&sent, &found);
    let report = Report::new(report::Inputs {
        run,
        options: &options,
        plan,
        sent: &sent,
        checked,
        samples,
        restarts_ready_secs,
        load_secs,
        drain_secs,
    });
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("soak.md"), report.markdown())?;
    eprintln!("[soak] results in {}", out.display());
    Ok(report)
}

/// Carries out the plan's steps at their times; returns, for each restart,
/// the seconds from the kill until the new bridge was ready.
async fn inject(
    plan: &Plan,
    bridge: &mut Bridge,
    now: &Arc<Now>,
    broker_pid: i32,
    admin: &str,
) -> anyhow::Result<Vec<f64>> {
    let started = Instant::now();
    let ready_after = Arc::new(Mutex::new(Vec::new()));
    let mut readiness = tokio::task::JoinSet::new();
    for (at, action) in &plan.steps {
        tokio::time::sleep_until((started + Duration::from_secs_f64(*at)).into()).await;
        eprintln!(
            "[soak] {:>7.1} s: {action:?}",
            started.elapsed().as_secs_f64()
        );
        match action {
            Action::Freeze | Action::Thaw => {
                signal_broker(broker_pid, *action)?;
                now.broker_frozen
                    .store(*action == Action::Freeze, Ordering::Relaxed);
            }
            Action::Kill => {
                let killed_at = Instant::now();
                bridge.kill_and_restart(now).await?;
                let (admin, ready_after) = (admin.to_owned(), ready_after.clone());
                // Timed apart: the plan goes on (a thaw is due) while it starts.
                readiness.spawn(async move {
                    while !matches!(get(&format!("{admin}/readyz")).await, Ok((200, _))) {
                        if killed_at.elapsed() > RESTART_TIMEOUT {
                            eprintln!("[soak] the restarted bridge was not ready within {RESTART_TIMEOUT:?}");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let secs = killed_at.elapsed().as_secs_f64();
                    eprintln!("[soak] restarted bridge ready {secs:.1} s after the kill");
                    ready_after.lock().expect("ready times").push(secs);
                });
            }
        }
    }
    while readiness.join_next().await.is_some() {}
    let times = ready_after.lock().expect("ready times").clone();
    Ok(times)
}

async fn wait_for_empty_spool(admin: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = match get(&format!("{admin}/metrics")).await {
            Ok((200, text)) => watch::gauge(&text, "superfone_spool_records"),
            _ => None,
        };
        if records == Some(0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{records:?} records still spooled after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_back(brokers: &str, topic: &str, run: &str) -> anyhow::Result<Vec<check::Found>> {
    let (brokers, topic, run) = (brokers.to_owned(), topic.to_owned(), run.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        verify::read_topics(&brokers, &[topic], &format!("{run}-verify"), |record| {
            if let Some((contact, n)) = record
                .group_id
                .and_then(|id| check::parse_group_id(&run, id))
            {
                found.push(check::Found {
                    contact,
                    n,
                    partition: record.partition,
                    offset: record.offset,
                });
            }
        })?;
        Ok(found)
    })
    .await?
}
