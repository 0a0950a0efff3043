//! `distillery bench`: the fixed micro-benchmark workload, printed as one JSON line.
//!
//! Candle's CPU thread count comes from `RAYON_NUM_THREADS` (read once, at the first
//! parallel operation); the line records the count used. `--gemm` adds, per model, the
//! measured rate of each matrix-product shape of a training step and the fraction of
//! that rate the step reaches.

use std::time::Duration;

use clap::Args;

use crate::ml::bench::{gemm_report, run_model, student_config, teacher_config, Phases, Workload};

/// Arguments of `distillery bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated models to run: `student_gru64`, `teacher_bilstm256x2`.
    #[arg(long, default_value = "student_gru64,teacher_bilstm256x2")]
    models: String,
    /// Comma-separated phases to run: `train`, `infer64`, `infer1`.
    #[arg(long, default_value = "train,infer64,infer1")]
    phases: String,
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
    /// Also time Candle's matrix product on each shape of a training step (milliseconds
    /// per shape; 0 skips it).
    #[arg(long, default_value_t = 0)]
    gemm_ms: u64,
}

/// Runs `distillery bench`.
///
/// # Errors
/// An unknown model or phase name, or a tensor error.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let workload = Workload {
        warmup: args.warmup,
        steps: args.steps,
        single_steps: args.single_steps,
        ..Default::default()
    };
    let phases = parse_phases(&args.phases)?;
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
            other => {
                anyhow::bail!("unknown model `{other}`: use student_gru64 or teacher_bilstm256x2")
            }
        };
        let figures = run_model(&config, &workload, phases, args.seed)?;
        let mut value = serde_json::to_value(&figures)?;
        if args.gemm_ms > 0 {
            let min_time = Duration::from_millis(args.gemm_ms);
            let report = gemm_report(&config, &workload, &figures, min_time)?;
            value["gemm"] = serde_json::to_value(report)?;
        }
        out.insert(name.to_string(), value);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

fn parse_phases(list: &str) -> anyhow::Result<Phases> {
    let mut phases = Phases { train: false, infer_batch: false, infer_single: false };
    for name in list.split(',') {
        match name.trim() {
            "train" => phases.train = true,
            "infer64" => phases.infer_batch = true,
            "infer1" => phases.infer_single = true,
            other => anyhow::bail!("unknown phase `{other}`: use train, infer64 or infer1"),
        }
    }
    Ok(phases)
}
