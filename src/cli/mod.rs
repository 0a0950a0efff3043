//! Command-line front end: `train`, `predict`, `eval`, and the service commands `serve`
//! (API and training workers) and `worker` (training workers with health and metrics).

mod bench;
mod eval;
mod predict;
mod progress_bar;
pub mod serve;
pub mod telemetry;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train small, fast text classifiers by knowledge distillation, and serve them.
#[derive(Parser)]
#[command(name = "distillery", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a teacher and distil it into a student; write the model folder.
    Train(train::TrainArgs),
    /// Predict the label of texts with a trained model.
    Predict(predict::PredictArgs),
    /// Evaluate a trained model on a labelled file.
    Eval(eval::EvalArgs),
    /// Run the HTTP API and, unless `--workers 0`, training workers.
    Serve(serve::ServeArgs),
    /// Run training workers only, with `/health`, `/ready` and `/metrics` on `--listen`.
    Worker(serve::WorkerArgs),
    /// Run the fixed training and inference micro-benchmark; print one JSON line.
    Bench(bench::BenchArgs),
}

/// Parses the command line and runs the command; errors are printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve::run_serve(args),
        Command::Worker(args) => serve::run_worker(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
