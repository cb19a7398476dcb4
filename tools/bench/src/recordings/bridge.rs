//! The bridge under test with its recording copier on: its config (the
//! run's own topics and consumer group, a `file://` store in the run's
//! folder, the source's loopback address allowed over plain http), its
//! process, and the CDR_RECORDING_AVAILABLE events posted to its webhook.

use crate::processes::{self, free_local_address, SECRET};
use crate::recordings::pointers::now_ms;
use crate::recordings::schedule::Schedule;
use crate::recordings::Recording;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use superfone_bridge::config::Config;
use tokio::process::{Child, Command};

/// Leads the recording events spread over (their Kafka keys).
const CONTACTS: u64 = 5_000;
const CONTACT_BASE: u64 = 1_000_000;

/// The bridge's config for a run: its defaults and any SUPERFONE_BRIDGE_*
/// override, with this run's addresses and topics, and the copier on,
/// copying into `store` from the benchmark's source on 127.0.0.1.
pub fn config(
    brokers: &str,
    registry_url: &str,
    run: &str,
    out: &Path,
    concurrency: usize,
) -> anyhow::Result<Config> {
    let mut config = Config::load(None).context("loading the bridge config")?;
    config.kafka.brokers = brokers.to_owned();
    config.registry.url = registry_url.to_owned();
    config.server.listen = free_local_address()?;
    config.admin.listen = free_local_address()?;
    config.spool.dir = out.join("spool");
    config.topics.prefix = format!("{run}.");
    let store = std::path::absolute(out.join("store"))?;
    let recordings = &mut config.recordings;
    recordings.enabled = true;
    recordings.store_url = Some(format!("file://{}", store.display()));
    recordings.allowed_hosts = vec!["127.0.0.1".into()];
    recordings.allow_private_networks = true;
    recordings.allow_plain_http = true;
    recordings.concurrency = concurrency;
    recordings.group_id = format!("{run}-recordings");
    Ok(config)
}

/// The running bridge and a client of its webhook.
pub struct CopyingBridge {
    process: Child,
    pid: u32,
    client: Client<HttpConnector, Full<Bytes>>,
    ingest: Uri,
    authorization: HeaderValue,
    group_id_header: HeaderName,
    /// The fixture CDR_RECORDING_AVAILABLE event the posted ones vary.
    event: Value,
}

impl CopyingBridge {
    /// Writes `config` to `<out>/bridge.toml`, starts `bin` on it and waits
    /// until it is ready; `event` is the event template.
    pub async fn start(
        bin: &Path,
        config: &Config,
        out: &Path,
        event: Value,
    ) -> anyhow::Result<CopyingBridge> {
        let config_path = out.join("bridge.toml");
        std::fs::write(&config_path, toml::to_string(config)?)?;
        let mut process = processes::spawn(
            Command::new(bin)
                .arg("--config")
                .arg(&config_path)
                .arg("serve")
                .env("SUPERFONE_AUTH_SECRETS", SECRET),
            &out.join("bridge.log"),
        )?;
        let pid = process.id().context("bridge pid")?;
        let admin = format!("http://{}", config.admin.listen);
        processes::wait_until_ready(&admin, &mut process).await?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(CopyingBridge {
            process,
            pid,
            client: Client::builder(TokioExecutor::new()).build(connector),
            ingest: format!(
                "http://{}{}",
                config.server.listen, config.server.ingest_path
            )
            .parse()?,
            authorization: HeaderValue::from_str(&format!("Bearer {SECRET}"))?,
            group_id_header: HeaderName::from_bytes(config.server.group_id_header.as_bytes())?,
            event,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Posts the event of every recording as `schedule` says, with group
    /// id `<run>-<phase>-<seq>`; returns when each was answered (Unix ms,
    /// the clock the bridge stamps `stored_at` with), by sequence number.
    /// An event the webhook does not accept fails the phase.
    pub async fn post_all(
        self: &Arc<Self>,
        run: &str,
        phase: &str,
        recordings: &[Recording],
        schedule: Schedule,
    ) -> anyhow::Result<BTreeMap<u64, f64>> {
        let bridge = Arc::clone(self);
        let prefix = format!("{run}-{phase}-");
        let answered = schedule
            .run(recordings, move |recording, _| {
                let bridge = Arc::clone(&bridge);
                let group_id = format!("{prefix}{}", recording.seq);
                async move {
                    bridge.post(group_id, &recording).await?;
                    Ok((recording.seq, now_ms()))
                }
            })
            .await?;
        Ok(answered.into_iter().collect())
    }

    async fn post(&self, group_id: String, recording: &Recording) -> anyhow::Result<()> {
        let mut event = self.event.clone();
        event["cdr_id"] = recording.cdr_id.into();
        event["contact_id"] = (CONTACT_BASE + recording.seq % CONTACTS).into();
        event["cdr_recording_url"] = recording.url.clone().into();
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.ingest.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, self.authorization.clone())
            .header(self.group_id_header.clone(), group_id)
            .body(Full::new(Bytes::from(serde_json::to_vec(&event)?)))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "the webhook answered {status} to recording {}: {}",
            recording.cdr_id,
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }

    /// Stops the bridge with SIGTERM; an unclean exit is an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = processes::stop(&mut self.process).await?;
        anyhow::ensure!(
            status.success(),
            "the bridge exited with {status}; see its bridge.log"
        );
        Ok(())
    }
}
