//! The bridge under test, as a black box: `serve` on a config file, watched
//! from /proc from the moment it is spawned, ready when `/readyz` says so;
//! its spool backlog read from `/metrics`; stopped with SIGTERM. And
//! `spool drain` on a spool, watched until it exits.

use crate::processes::{self, spawn, SECRET};
use crate::spool_memory::memory::{Peak, Watch};
use anyhow::{bail, Context};
use std::path::Path;
use std::time::{Duration, Instant};
use superfone_bridge::observe::metrics::SPOOL_RECORDS;
use tokio::process::{Child, Command};

pub struct Bridge {
    child: Child,
    pub pid: u32,
    admin: String,
}

/// A start: the bridge, its peak from spawn to ready, and how long that took.
pub struct Started {
    pub bridge: Bridge,
    pub peak: Peak,
    pub ready_after: Duration,
}

impl Bridge {
    /// Spawns `bin --config <config> serve` and waits until it is ready,
    /// sampling its memory all along (start-up is where a spool is reopened).
    pub async fn start(
        bin: &Path,
        config: &Path,
        admin: &str,
        log: &Path,
    ) -> anyhow::Result<Started> {
        let started = Instant::now();
        let mut child = spawn(
            Command::new(bin)
                .arg("--config")
                .arg(config)
                .arg("serve")
                .env("SUPERFONE_AUTH_SECRETS", SECRET),
            log,
        )?;
        let pid = child.id().context("bridge pid")?;
        let watch = Watch::start(pid, false)?;
        processes::wait_until_ready(admin, &mut child).await?;
        let ready_after = started.elapsed();
        let peak = watch.finish();
        Ok(Started {
            bridge: Bridge {
                child,
                pid,
                admin: admin.to_owned(),
            },
            peak,
            ready_after,
        })
    }

    /// The replay's backlog (`superfone_spool_records`), once the gauge is
    /// published.
    pub async fn spooled(&self) -> anyhow::Result<Option<u64>> {
        let (_, metrics) = processes::get(&format!("{}/metrics", self.admin)).await?;
        Ok(metrics
            .lines()
            .find_map(|line| line.strip_prefix(SPOOL_RECORDS)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64))
    }

    /// Waits until the backlog gauge reads `expected` (published once a
    /// second), so the figures that follow see every entry in memory.
    pub async fn wait_for_backlog(&self, expected: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let spooled = self.spooled().await?;
            if spooled == Some(expected) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the spool backlog reads {spooled:?}, not {expected}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it with SIGTERM; an unclean exit is an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = processes::stop(&mut self.child).await?;
        anyhow::ensure!(
            status.success(),
            "the bridge exited with {status}; see its log"
        );
        Ok(())
    }
}

/// What `spool drain` printed, and its memory from spawn to exit.
pub struct Drained {
    pub output: serde_json::Value,
    pub peak: Peak,
    pub elapsed: Duration,
}

/// Runs `bin --config <config> spool drain --dir <dir>` to its end.
pub async fn drain(
    bin: &Path,
    config: &Path,
    dir: &Path,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["spool", "drain", "--dir"])
        .arg(dir)
        .args(["--timeout-secs", &timeout.as_secs().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("drain pid")?;
    let watch = Watch::start(pid, false)?;
    let mut stdout = child.stdout.take().context("drain stdout")?;
    let mut printed = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut printed).await?;
    let status = child.wait().await?;
    let peak = watch.finish();
    anyhow::ensure!(
        status.success(),
        "spool drain exited with {status}: {printed}; see {}",
        log.display()
    );
    let output = serde_json::from_str(printed.trim())
        .with_context(|| format!("spool drain printed {printed:?}"))?;
    Ok(Drained {
        output,
        peak,
        elapsed: started.elapsed(),
    })
}
