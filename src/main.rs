//! The `distillery` binary: command-line parsing and wiring only.

use mimalloc::MiMalloc;

// glibc's malloc returns freed step tensors to the system and faults them back in; mimalloc
// keeps them, which was worth 2.5x on small models (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    distillery::cli::main()
}
