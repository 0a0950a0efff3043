//! `distillery bench`: the fixed micro-benchmark workload, printed as one JSON line.

use clap::Args;

use crate::ml::bench::{run_model, student_config, teacher_config, Workload};

/// Arguments of `distillery bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated models to run: `student_gru64`, `teacher_bilstm256x2`.
    #[arg(long, default_value = "student_gru64,teacher_bilstm256x2")]
    models: String,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Timed training steps (and batch-64 inference batches).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Timed single-row predictions.
    #[arg(long, default_value_t = 1000)]
    single_steps: usize,
    /// Seed of the random data and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `distillery bench`.
///
/// # Errors
/// An unknown model name or a tensor error.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let workload = Workload { warmup: args.warmup, steps: args.steps, single_steps: args.single_steps, ..Default::default() };
    let mut out = serde_json::Map::new();
    out.insert("threads".into(), candle_core::utils::get_num_threads().into());
    out.insert("vocab".into(), workload.vocab.into());
    out.insert("batch".into(), workload.batch.into());
    out.insert("seq_len".into(), workload.seq_len.into());
    out.insert("steps".into(), workload.steps.into());
    for name in args.models.split(',') {
        let config = match name {
            "student_gru64" => student_config(),
            "teacher_bilstm256x2" => teacher_config(),
            other => anyhow::bail!("unknown model `{other}`: use student_gru64 or teacher_bilstm256x2"),
        };
        let figures = run_model(&config, &workload, args.seed)?;
        out.insert(name.to_string(), serde_json::to_value(figures)?);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
