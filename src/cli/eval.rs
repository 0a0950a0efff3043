//! `distillery eval`: metrics of a trained model on a labelled file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::ml::data::{read_file, ReadLimits};
use crate::ml::manifest::Role;
use crate::ml::metrics::Metrics;
use crate::ml::pipeline::evaluate_model;

/// Arguments of `distillery eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Model folder written by `distillery train`.
    #[arg(long)]
    model: PathBuf,
    /// Labelled rows (JSON lines or CSV).
    #[arg(long)]
    data: PathBuf,
    /// Print the metrics as one JSON object keyed `teacher` and `student`.
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
    let metrics = evaluate_model(&args.model, &rows, 256)?;
    if args.json {
        let out: serde_json::Map<String, serde_json::Value> = [Role::Teacher, Role::Student]
            .into_iter()
            .filter_map(|r| {
                metrics
                    .get(&r)
                    .map(|m| (r.as_str().to_string(), serde_json::to_value(m).unwrap_or_default()))
            })
            .collect();
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    for role in [Role::Teacher, Role::Student] {
        if let Some(m) = metrics.get(&role) {
            print_metrics(role.as_str(), m);
        }
    }
    Ok(())
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
