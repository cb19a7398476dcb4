//! The spool-memory run's own Kafka broker: a tansu process started only
//! when the run brings Kafka up, on a port chosen at the start. Until then
//! nothing listens there, so the bridge finds Kafka unreachable from its
//! first connection (a refused port, as a stopped broker looks). tansu keeps
//! records in memory: each part of the run gets a fresh one.

use crate::processes::{self, spawn};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::process::{Child, Command};

pub struct Broker {
    child: Child,
}

impl Broker {
    /// Starts tansu on `address` and waits until it listens.
    pub async fn start(tansu: &Path, address: SocketAddr, log: PathBuf) -> anyhow::Result<Broker> {
        let url = format!("tcp://{address}");
        let child = spawn(
            Command::new(tansu)
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"]),
            &log,
        )?;
        processes::wait_for_port(address).await?;
        Ok(Broker { child })
    }

    /// Stops it (SIGTERM), and its records with it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        processes::stop(&mut self.child).await?;
        Ok(())
    }
}
