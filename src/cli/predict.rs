//! `distillery predict`: the label of each text given on the command line.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::{Args, ValueEnum};

use crate::ml::manifest::Role;
use crate::ml::predictor::Predictor;

/// Which network predicts.
#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Student,
    Teacher,
}

/// Arguments of `distillery predict`.
#[derive(Args)]
pub struct PredictArgs {
    /// Model folder written by `distillery train`.
    #[arg(long)]
    model: PathBuf,
    /// Use the student (default) or the teacher.
    #[arg(long, value_enum, default_value = "student")]
    role: RoleArg,
    /// Print one JSON object per text.
    #[arg(long)]
    json: bool,
    /// Texts to classify.
    #[arg(required = true)]
    texts: Vec<String>,
}

/// Runs `distillery predict`.
///
/// # Errors
/// When the model cannot be loaded.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let role = match args.role {
        RoleArg::Student => Role::Student,
        RoleArg::Teacher => Role::Teacher,
    };
    let predictor = Predictor::load(&args.model, role, &Device::Cpu)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let probabilities = predictor.predict(&texts)?;
    for (text, probs) in texts.iter().zip(probabilities) {
        let (best, score) =
            probs
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc });
        let label = &predictor.labels()[best];
        if args.json {
            let scores: serde_json::Map<String, serde_json::Value> = predictor
                .labels()
                .iter()
                .zip(&probs)
                .map(|(l, p)| (l.clone(), (*p).into()))
                .collect();
            let line =
                serde_json::json!({"text": text, "label": label, "score": score, "scores": scores});
            println!("{line}");
        } else {
            println!("{label}\t{score:.4}\t{text}");
        }
    }
    Ok(())
}
