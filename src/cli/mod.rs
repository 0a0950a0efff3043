//! The command line: `distillery serve` (API and training workers) and `distillery
//! worker` (training workers with health and metrics only).

pub mod serve;
pub mod telemetry;

use clap::{Parser, Subcommand};

/// Train small, fast text classifiers by knowledge distillation, and serve them over HTTP.
#[derive(Debug, Parser)]
#[command(name = "distillery", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and, unless `--workers 0`, training workers.
    Serve(serve::ServeArgs),
    /// Run training workers only, with `/health`, `/ready` and `/metrics` on `--listen`.
    Worker(serve::WorkerArgs),
}

/// Runs a parsed command line to the end.
///
/// # Errors
/// Any failure at start-up (bind, connect, migrate) or while running.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run_serve(args),
        Command::Worker(args) => serve::run_worker(args),
    }
}
