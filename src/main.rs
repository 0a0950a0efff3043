//! The `distillery` binary: parses the command line and runs it. Wiring only.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    distillery::cli::run(distillery::cli::Cli::parse())
}
