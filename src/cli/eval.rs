//! `distillery eval`: metrics of a trained model on a labelled file, and optionally how fast
//! its networks predict.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::ml::data::{read_file, ReadLimits};
use crate::ml::evaluation::{ModelNetworks, PredictSpeed};
use crate::ml::manifest::Role;
use crate::ml::metrics::Metrics;

/// Arguments of `distillery eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Model folder written by `distillery train`.
    #[arg(long)]
    model: PathBuf,
    /// Labelled rows (JSON lines or CSV).
    #[arg(long)]
    data: PathBuf,
    /// Folder of pretrained transformer folders; with it, a transformer teacher is evaluated
    /// too (without it, only a recurrent teacher is).
    #[arg(long, env = "DISTILLERY_PRETRAINED_DIR")]
    pretrained_dir: Option<PathBuf>,
    /// Also measure prediction speed (texts per second at batch 1 and 64, tokenization
    /// included) of each network on the file's texts, for at most this many seconds per
    /// network and batch size.
    #[arg(long, value_name = "SECONDS")]
    speed: Option<f64>,
    /// Print the metrics as one JSON object keyed `teacher` and `student` (and `speed`).
    #[arg(long)]
    json: bool,
}

/// Runs `distillery eval`.
///
/// # Errors
/// When the model or the data cannot be read.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let rows = read_file(&args.data, &ReadLimits::default())
        .with_context(|| format!("in {}", args.data.display()))?;
    let networks = ModelNetworks::load(&args.model, args.pretrained_dir.as_deref())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let metrics = networks.evaluate(&rows, 256)?;
    let speed = match args.speed {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
            networks.measure_speed(&texts, Duration::from_secs_f64(seconds))?
        }
        Some(seconds) => {
            anyhow::bail!("--speed must be a positive number of seconds, got {seconds}")
        }
        None => Default::default(),
    };

    if args.json {
        println!("{}", to_json(&metrics, &speed));
        return Ok(());
    }
    if !networks.has_teacher() && networks.manifest().transformer_teacher.is_some() {
        println!("teacher: a pretrained transformer; pass --pretrained-dir to evaluate it");
    }
    for role in [Role::Teacher, Role::Student] {
        if let Some(m) = metrics.get(&role) {
            print_metrics(role.as_str(), m);
        }
        if let Some(s) = speed.get(&role) {
            println!(
                "  prediction: {:.1} texts/s one at a time, {:.1} texts/s in batches of 64",
                s.batch_1_texts_per_s, s.batch_64_texts_per_s
            );
        }
    }
    Ok(())
}

fn to_json(
    metrics: &std::collections::HashMap<Role, Metrics>,
    speed: &std::collections::HashMap<Role, PredictSpeed>,
) -> serde_json::Value {
    let by_role = |value: &dyn Fn(Role) -> Option<serde_json::Value>| {
        [Role::Teacher, Role::Student]
            .into_iter()
            .filter_map(|r| value(r).map(|v| (r.as_str().to_string(), v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut out = by_role(&|r| metrics.get(&r).and_then(|m| serde_json::to_value(m).ok()));
    if !speed.is_empty() {
        let speeds = by_role(&|r| speed.get(&r).and_then(|s| serde_json::to_value(s).ok()));
        out.insert("speed".into(), serde_json::Value::Object(speeds));
    }
    serde_json::Value::Object(out)
}

fn print_metrics(name: &str, m: &Metrics) {
    let agreement =
        m.agreement.map_or(String::new(), |a| format!(", agreement with teacher {a:.4}"));
    println!(
        "{name}: accuracy {:.4}, macro-F1 {:.4} on {} rows{agreement}",
        m.accuracy, m.macro_f1, m.rows
    );
    println!("  {:<20} {:>9} {:>9} {:>9} {:>8}", "label", "precision", "recall", "f1", "support");
    for c in &m.per_class {
        println!(
            "  {:<20} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.label, c.precision, c.recall, c.f1, c.support
        );
    }
    println!("  confusion (rows: true, columns: predicted): {:?}", m.confusion);
}
