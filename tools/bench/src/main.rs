//! `superfone-bench`: measures superfone-bridge against two ceilings taken in
//! the same run on the same machine (the broker alone, and HTTP alone), and
//! counts only deliveries found on the broker afterwards; and, with
//! `recordings`, its recording copier against a plain download of the same
//! recordings (issue 27's figures); with `spool-memory`, the bridge's
//! memory through a long Kafka outage; and with `soak`, the bridge under
//! steady load while the broker flaps and the bridge is killed (both issue
//! 28). `scripts/bench` starts the broker and registry and runs
//! `superfone-bench run` (`recordings` with `--recordings`, `spool-memory`
//! with `--spool-memory`); `scripts/soak` runs `soak`.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use superfone_bench::{recordings, run, sink, soak, spool_memory};

#[derive(Parser)]
#[command(about = "Benchmark superfone-bridge against broker and HTTP ceilings")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every phase and write bench.json and bench.md.
    Run {
        #[command(flatten)]
        options: Box<run::Options>,
        /// Exit non-zero unless every goal is met (missing records always fail).
        #[arg(long)]
        require_goals: bool,
    },
    /// Copy recordings through the bridge and through a plain HTTP client
    /// (the copy ceiling); write bench.json and bench.md.
    Recordings {
        #[command(flatten)]
        options: Box<recordings::Options>,
        /// Exit non-zero unless every goal is met (a broken copy always fails).
        #[arg(long)]
        require_goals: bool,
    },
    /// Spool events with Kafka unreachable (over HTTP, and a full spool
    /// written in its real format), restart, replay, drain: the bridge's
    /// memory at each step; write bench.json and bench.md.
    SpoolMemory {
        #[command(flatten)]
        options: Box<spool_memory::Options>,
        /// Exit non-zero unless every goal is met (an event not delivered
        /// after the replay always fails).
        #[arg(long)]
        require_goals: bool,
    },
    /// Steady load with the broker frozen and thawed at random and the
    /// bridge killed and restarted; every 2xx-answered event checked on the
    /// broker (none lost, each lead in order). Writes soak.json and soak.md.
    Soak {
        #[command(flatten)]
        options: Box<soak::Options>,
    },
    /// The HTTP ceiling's trivial server (started by `run`).
    HttpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::HttpSink { listen } => sink::serve(listen).await,
        Command::SpoolMemory {
            options,
            require_goals,
        } => {
            let report = spool_memory::run(*options).await?;
            println!("{}", report.markdown());
            let undelivered = report.undelivered();
            anyhow::ensure!(
                undelivered == 0,
                "{undelivered} spooled events were not found on the broker"
            );
            let unmet = report.unmet();
            anyhow::ensure!(
                !require_goals || unmet.is_empty(),
                "goals not met: {}",
                unmet.join(", ")
            );
            Ok(())
        }
        Command::Soak { options } => {
            let report = soak::run(*options).await?;
            println!("{}", report.markdown());
            println!("SOAK-FIGURES {}", serde_json::to_string(&report.figures)?);
            anyhow::ensure!(
                report.passed(),
                "the soak broke the guarantee: {} lost, {} order violations, {} leads on several partitions",
                report.figures.lost,
                report.figures.order_violations,
                report.figures.leads_on_several_partitions
            );
            Ok(())
        }
        Command::Recordings {
            options,
            require_goals,
        } => {
            let report = recordings::run(*options).await?;
            println!("{}", report.markdown());
            let broken = report.broken_copies();
            anyhow::ensure!(broken == 0, "{broken} recordings were not copied intact");
            let unmet: Vec<&str> = report
                .figures
                .iter()
                .filter(|figure| figure.met == Some(false))
                .map(|figure| figure.name.as_str())
                .collect();
            anyhow::ensure!(
                !require_goals || unmet.is_empty(),
                "goals not met: {}",
                unmet.join(", ")
            );
            Ok(())
        }
        Command::Run {
            options,
            require_goals,
        } => {
            let report = run::run(*options).await?;
            println!("{}", report.markdown());
            let missing: u64 = report.phases.iter().map(|phase| phase.missing).sum();
            anyhow::ensure!(
                missing == 0,
                "{missing} accepted deliveries were not found on the broker"
            );
            if require_goals {
                let unmet: Vec<_> = report
                    .summary
                    .goals
                    .iter()
                    .filter(|goal| !goal.met)
                    .map(|goal| goal.name.as_str())
                    .collect();
                anyhow::ensure!(unmet.is_empty(), "goals not met: {}", unmet.join(", "));
            }
            Ok(())
        }
    }
}
