//! `superfone-bench`: measures superfone-bridge against two ceilings taken in
//! the same run on the same machine (the broker alone, and HTTP alone), and
//! counts only deliveries found on the broker afterwards. `scripts/bench`
//! starts the broker and registry and runs `superfone-bench run`.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use superfone_bench::{run, sink};

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
