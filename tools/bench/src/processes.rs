//! The processes a benchmark starts (the bridge, the HTTP sink, the Python
//! peer): spawned with their output in a log file, waited on until they
//! listen or are ready, and stopped with SIGTERM, as Kubernetes would.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The bearer secret the benchmark's bridge (and the Python peer) accepts.
pub const SECRET: &str = "bench-secret-0123456";

pub fn free_local_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

pub async fn wait_for_port(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {address}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(url.parse::<Uri>()?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub async fn wait_until_ready(admin: &str, bridge: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = bridge.try_wait()? {
            bail!("the bridge exited during start-up ({status}); see its bridge.log");
        }
        if let Ok((200, _)) = get(&format!("{admin}/readyz")).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bridge was not ready within 120 s; see its bridge.log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the bridge's spool has handed every record to Kafka, so the
/// read-back sees all of them.
pub async fn wait_for_empty_spool(admin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = get(&format!("{admin}/metrics")).await?;
        let spooled = metrics
            .lines()
            .find_map(|line| line.strip_prefix("superfone_spool_records "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if spooled == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{spooled} records still spooled after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn stop(bridge: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let pid = bridge.id().context("bridge already exited")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    Ok(tokio::time::timeout(Duration::from_secs(120), bridge.wait()).await??)
}
