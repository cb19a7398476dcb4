//! The `superfone-bridge` binary: CLI, config loading, signals. `anyhow` lives
//! only here.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use superfone_bridge::config::Config;
use superfone_bridge::http::auth::{self, Authenticator};
use superfone_bridge::observe::telemetry;
use superfone_bridge::ops::tools;
use superfone_bridge::App;

#[derive(Parser)]
#[command(version, about = "Superfone event notifications -> Avro -> Kafka")]
struct Cli {
    /// TOML config file; every key has a default and a SUPERFONE_BRIDGE_* override.
    #[arg(long, short, env = superfone_bridge::config::CONFIG_FILE_ENV, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive notifications and publish them to Kafka.
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig(CheckConfigArgs),
    /// Post sample payloads (e.g. tests/fixtures/*.json) to a bridge with the configured auth.
    Send(SendArgs),
    /// Exit 0 if this config's bridge answers 200 on its admin listener
    /// (a container HEALTHCHECK without curl).
    Healthcheck(HealthcheckArgs),
    /// Dead-letter topic operations.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Local spool operations (`spool.dir` of this config).
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Print a topic's records as JSON lines, values decoded through the registry.
    Tail(TailArgs),
    /// Call recordings copied to the store of `[recordings]`.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// The event schemas against what Superfone sends.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Per event, each member the schema does not know (from the topics'
    /// unmapped_fields_json): its JSON Pointer, count, JSON types, first and
    /// last seen. Reads with a throwaway consumer group, commits nothing.
    Drift(DriftArgs),
}

#[derive(Args)]
struct DriftArgs {
    /// Read every record of each topic, not each partition's last --max.
    #[arg(long)]
    from_beginning: bool,
    /// At most this many records per topic.
    #[arg(long, default_value_t = 10_000)]
    max: usize,
    /// Write the schemas, those of drifted events with the new members added
    /// as nullable fields, into this directory (for review; usable as
    /// registry.schemas_dir).
    #[arg(long)]
    write_patch: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RecordingsCommand {
    /// Run the recording copier alone (not inside `serve`): join the consumer
    /// group superfone-bridge-recordings and copy recordings until SIGTERM.
    Run,
    /// Print recordings not copied yet, or whose copy did not end stored, as
    /// JSON lines (links without their signature). Reads the recording events
    /// and the pointer records to their end (no idle wait), then exits 0.
    List(RecordingsListArgs),
    /// Copy recordings again while their links live (after raising
    /// recordings.max_bytes, allowing a host, mending the store), and publish
    /// a new pointer record for each. One JSON line each; exit 1 unless every
    /// one ended stored.
    Retry(RecordingsRetryArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RecordingsListArgs {
    /// Recording events with no pointer record yet (copying, or waiting to try
    /// again): ids, group id, the link's expiry and the seconds left on it.
    #[arg(long)]
    pending: bool,
    /// Recordings whose latest pointer record is expired, refused or failed:
    /// status, error, and whether `recordings retry` can act on it.
    #[arg(long)]
    failed: bool,
}

#[derive(Args)]
struct RecordingsRetryArgs {
    /// The cdr_id (or cdr_uuid) of each recording to copy again.
    #[arg(value_name = "CDR_ID", required_unless_present = "failed")]
    ids: Vec<String>,
    /// Also every recording whose latest pointer record is not stored and
    /// whose link still lives.
    #[arg(long)]
    failed: bool,
    /// How long one recording's transient failures (the source's 5xx, the
    /// store down) are tried again before its pointer record says failed.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// Instead, ask every dependency whether this deployment can work:
    /// brokers and topics, registry and subjects, spool directory, TLS
    /// files, auth secrets. One line per check; exit 1 on any FAIL.
    #[arg(long)]
    online: bool,
}

#[derive(Args)]
struct SendArgs {
    /// Ingest URL; default: this config's listen address and ingest path.
    #[arg(long)]
    url: Option<String>,
    /// PEM CA certificate to trust for an HTTPS URL, besides the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct HealthcheckArgs {
    /// `/healthz` (the process is alive) or `/readyz` (it can make an
    /// event durable now).
    #[arg(long, default_value = "/healthz")]
    path: String,
}

#[derive(Args)]
struct TailArgs {
    /// An event (ALL_CALLS), dead_letter, or a topic name.
    target: String,
    /// Start at the oldest record instead of the newest.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<usize>,
    /// Stop after this many seconds without a record.
    #[arg(long)]
    idle_exit_secs: Option<u64>,
    /// Show recording links whole: their query is a credential for 7 days,
    /// so it is left out unless asked for.
    #[arg(long)]
    show_secrets: bool,
}

// glibc's malloc was the largest user-space cost in the profile under load;
// jemalloc costs less CPU per delivery than it, and less memory than mimalloc
// (docs/benchmarks/README.md, "What each change bought"). Its options are
// built in from .cargo/config.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command {
        Command::Serve => serve(config),
        Command::CheckConfig(args) if args.online => check_config_online(&config),
        Command::CheckConfig(_) => check_config(&config),
        Command::Send(args) => send(&config, args),
        Command::Healthcheck(args) => healthcheck(&config, &args.path),
        Command::DeadLetter(DeadLetterCommand::Replay(args)) => replay_dead_letters(&config, args),
        Command::Spool(SpoolCommand::Drain(args)) => drain_spool(config, args),
        Command::Spool(SpoolCommand::Parked(ParkedCommand::Retry { ids })) => {
            retry_parked(&config, &ids)
        }
        Command::Spool(SpoolCommand::Parked(ParkedCommand::List)) => {
            list_parked(&config, tools::ParkedFormat::List)
        }
        Command::Spool(SpoolCommand::Parked(ParkedCommand::Export)) => {
            list_parked(&config, tools::ParkedFormat::Export)
        }
        Command::Tail(args) => tail(&config, args),
        Command::Recordings(RecordingsCommand::Run) => run_recordings(config),
        Command::Recordings(RecordingsCommand::List(args)) => list_recordings(&config, &args),
        Command::Recordings(RecordingsCommand::Retry(args)) => retry_recordings(&config, args),
        Command::Schema(SchemaCommand::Drift(args)) => schema_drift(&config, args),
    }
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Records Kafka refused for good (too large, forbidden or invalid topic),
    /// parked so they block nothing.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Send every event left in a spool to Kafka, in order, and exit: for a
    /// volume a scaled-in or deleted pod left behind. Refused while a bridge
    /// has the spool open. Exit 1 if anything is left.
    Drain(DrainArgs),
}

#[derive(Args)]
struct DrainArgs {
    /// The spool directory (default: this config's spool.dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up after this many seconds; what is left stays in the spool.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// One JSON line per parked record: topic, key, event, group id, reason, size.
    List,
    /// One JSON line per parked record with its headers and base64 payload.
    Export,
    /// Publish parked records again once the cause is fixed (e.g. a topic's
    /// max.message.bytes raised); each one Kafka acknowledges leaves the list.
    /// Safe beside a running bridge.
    Retry {
        /// Only these spool ids (default: every parked record).
        #[arg(long = "id")]
        ids: Vec<u64>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Re-submit dead letters through the conversion path (after a schema fix),
    /// keeping their original group id. Progress is committed as consumer group
    /// superfone-bridge-dead-letter-replay, so a second run continues after the first.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Start at the oldest dead letter, not after the last replayed one.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many dead letters.
    #[arg(long)]
    max: Option<usize>,
    /// Stop after this many seconds without a dead letter.
    #[arg(long, default_value_t = 5)]
    idle_exit_secs: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// The bridge's runtime, with `server.worker_threads` workers.
fn serving_runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.runtime_workers())
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let secrets = auth::load_secrets(&config.auth)?;
    Authenticator::new(&config.auth, &secrets)?;
    print!("{}", config.to_redacted_toml());
    println!(
        "# auth: {} secret(s) accepted (from {}), values not shown",
        secrets.len(),
        config.auth.secret_sources()
    );
    if let Some(tls) = &config.server.tls {
        superfone_bridge::http::tls::Tls::load(tls).context("server.tls")?;
        println!(
            "# tls: {} and {} usable{}",
            tls.cert_file.display(),
            tls.key_file.display(),
            tls.client_ca_file
                .as_ref()
                .map(|ca| format!(", clients need a certificate from {}", ca.display()))
                .unwrap_or_default()
        );
    }
    if !config.kafka.options_from_dir.is_empty() {
        println!(
            "# kafka: {} from {}, values not shown",
            config.kafka.options_from_dir.join(", "),
            config
                .kafka
                .options_dir
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
    }
    Ok(())
}

/// `check-config --online`: one line per dependency check; fails on any FAIL.
fn check_config_online(config: &Config) -> anyhow::Result<()> {
    let report = runtime()?.block_on(superfone_bridge::ops::preflight::run(config));
    print!("{report}");
    let failures = report.failures();
    anyhow::ensure!(failures == 0, "{failures} check(s) failed");
    Ok(())
}

/// `healthcheck`: the admin listener's status line; fails unless 200.
fn healthcheck(config: &Config, path: &str) -> anyhow::Result<()> {
    let status_line = tools::healthcheck(config, path)
        .with_context(|| format!("asking {} for {path}", config.admin.listen))?;
    println!("{status_line}");
    anyhow::ensure!(
        status_line.split_whitespace().nth(1) == Some("200"),
        "not healthy"
    );
    Ok(())
}

/// `send`: one JSON line per file posted; fails unless every answer was 2xx.
fn send(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let url = args.url.unwrap_or_else(|| tools::local_ingest_url(config));
    let all_accepted = runtime()?.block_on(tools::send(
        config,
        &url,
        args.ca_file.as_deref(),
        &args.files,
        std::io::stdout(),
    ))?;
    anyhow::ensure!(all_accepted, "not every payload was accepted");
    Ok(())
}

/// `dead-letter replay`: prints each dead letter's fate, then the totals.
fn replay_dead_letters(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let options = tools::ReplayOptions {
        from_beginning: args.from_beginning,
        max: args.max,
        idle_exit: Duration::from_secs(args.idle_exit_secs),
    };
    let (replayed, still_invalid) = runtime()?.block_on(tools::replay_dead_letters(
        config,
        options,
        std::io::stdout(),
    ))?;
    eprintln!("replayed {replayed}, still invalid {still_invalid}");
    Ok(())
}

/// `spool drain`: prints what was found, sent and left; fails if anything is left.
fn drain_spool(mut config: Config, args: DrainArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.dir {
        config.spool.dir = dir;
    }
    let _telemetry =
        telemetry::init(&config.log, &Default::default()).context("setting up logging")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let report = runtime()?
        .block_on(superfone_bridge::drain_spool(&config, timeout))
        .with_context(|| format!("draining {}", config.spool.dir.display()))?;
    println!(
        "{{\"found\":{},\"sent\":{},\"left\":{},\"parked\":{}}}",
        report.found,
        report.found - report.left,
        report.left,
        report.parked
    );
    anyhow::ensure!(
        report.left == 0,
        "{} event(s) left in {}",
        report.left,
        config.spool.dir.display()
    );
    Ok(())
}

/// `spool parked list | export`: one JSON line per parked record.
fn list_parked(config: &Config, format: tools::ParkedFormat) -> anyhow::Result<()> {
    let count = tools::parked(config, format, std::io::stdout())?;
    eprintln!("{count} parked record(s) in {}", config.spool.dir.display());
    Ok(())
}

/// `spool parked retry`: fails if any record could not be published.
fn retry_parked(config: &Config, ids: &[u64]) -> anyhow::Result<()> {
    let (published, failed) =
        runtime()?.block_on(tools::retry_parked(config, ids, std::io::stdout()))?;
    eprintln!("re-published {published}, failed {failed}");
    anyhow::ensure!(
        failed == 0,
        "{failed} parked record(s) could not be published; they stay parked"
    );
    Ok(())
}

/// `recordings run`: the copier alone, until SIGTERM or SIGINT.
fn run_recordings(mut config: Config) -> anyhow::Result<()> {
    // Running the copier is enabling it: its topic is then one to create.
    config.recordings.enabled = true;
    anyhow::ensure!(
        config.recordings.store_url.is_some(),
        "recordings run needs recordings.store_url"
    );
    runtime()?.block_on(async move {
        let telemetry =
            telemetry::init(&config.log, &config.tracing).context("setting up telemetry")?;
        superfone_bridge::run_recordings(config, shutdown_signal())
            .await
            .context("recording copier")?;
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
        Ok(())
    })
}

/// `recordings list`: one JSON line per recording; exit 0 once both topics
/// were read, whatever was found.
fn list_recordings(config: &Config, args: &RecordingsListArgs) -> anyhow::Result<()> {
    let (which, what) = if args.pending {
        (tools::RecordingsList::Pending, "pending")
    } else {
        (tools::RecordingsList::Failed, "failed")
    };
    let listed = runtime()?
        .block_on(tools::list_recordings(config, which, std::io::stdout()))
        .context("reading the recording events and pointer records")?;
    eprintln!("{} {what} recording(s)", listed.listed);
    if listed.unreadable > 0 {
        eprintln!(
            "{} record(s) could not be read as recordings",
            listed.unreadable
        );
    }
    Ok(())
}

/// `recordings retry`: fails unless every recording ended stored.
fn retry_recordings(config: &Config, args: RecordingsRetryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.recordings.store_url.is_some(),
        "recordings retry needs recordings.store_url"
    );
    // A copy's retries are logged (links without their signature).
    let _telemetry =
        telemetry::init(&config.log, &Default::default()).context("setting up logging")?;
    let options = tools::RetryOptions {
        ids: args.ids,
        failed: args.failed,
        give_up_after: Duration::from_secs(args.timeout_secs),
    };
    let retried = runtime()?
        .block_on(tools::retry_recordings(config, &options, std::io::stdout()))
        .context("recordings retry")?;
    eprintln!(
        "stored {}, not stored {}",
        retried.stored, retried.not_stored
    );
    if retried.left_alone > 0 {
        eprintln!(
            "{} failed recording(s) left alone: their links have expired",
            retried.left_alone
        );
    }
    anyhow::ensure!(
        retried.not_stored == 0,
        "{} recording(s) not stored",
        retried.not_stored
    );
    Ok(())
}

/// `schema drift`: unknown members per event, and the draft patch.
fn schema_drift(config: &Config, args: DriftArgs) -> anyhow::Result<()> {
    let options = tools::DriftOptions {
        from_beginning: args.from_beginning,
        max: args.max,
        write_patch: args.write_patch,
    };
    let found = runtime()?.block_on(tools::drift(config, options, std::io::stdout()))?;
    eprintln!("{found} unknown member(s)");
    Ok(())
}

/// `tail`: a topic's records as JSON lines.
fn tail(config: &Config, args: TailArgs) -> anyhow::Result<()> {
    let options = tools::TailOptions {
        target: args.target,
        from_beginning: args.from_beginning,
        max: args.max,
        idle_exit: args.idle_exit_secs.map(Duration::from_secs),
        show_secrets: args.show_secrets,
    };
    runtime()?.block_on(tools::tail(config, options, std::io::stdout()))?;
    Ok(())
}

/// `serve`: the bridge, on a runtime with `server.worker_threads` workers.
fn serve(config: Config) -> anyhow::Result<()> {
    serving_runtime(&config)?.block_on(run_bridge(config))
}

async fn run_bridge(config: Config) -> anyhow::Result<()> {
    let telemetry =
        telemetry::init(&config.log, &config.tracing).context("setting up telemetry")?;
    let auth = Authenticator::from_config(&config.auth)?;
    let app = App::build(config, auth).await.context("start-up failed")?;
    tracing::info!(
        ingest_addr = %app.local_addr(),
        admin_addr = %app.admin_addr(),
        otlp_endpoint = telemetry.exporting_to.as_deref().unwrap_or("none"),
        "ready"
    );
    let stopped = app.run_until_stopped(shutdown_signal()).await;
    // Flushing the last spans blocks: off the runtime's workers.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    // A refusal found by the start-up checks, once the listeners were open.
    stopped.context("start-up failed")
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
