//! `distillery train`: a job from files to a model folder, with a progress bar.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::ml::config::JobConfig;
use crate::ml::data::{read_file, ReadLimits};
use crate::ml::manifest::Manifest;
use crate::ml::pipeline::{run as run_job, JobInputs};
use crate::ml::progress::CancelToken;

use super::progress_bar::ProgressBar;

/// Arguments of `distillery train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training rows: JSON lines (`{"text", "label"?}`) or CSV with `text` and `label` columns.
    #[arg(long)]
    train: PathBuf,
    /// Validation rows (same formats); default: a stratified share of the training rows.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Job configuration as JSON; every field is optional.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of an earlier model whose teacher is reused instead of training one.
    #[arg(long)]
    teacher_model: Option<PathBuf>,
    /// Folder of an earlier model whose stored transfer set and teacher logits a new student
    /// learns from; no teacher runs (the `teacher.job_id` of the service).
    #[arg(long, conflicts_with = "teacher_model")]
    transfer_model: Option<PathBuf>,
    /// Folder of pretrained transformer folders, for `teacher.kind: transformer`.
    #[arg(long, env = "DISTILLERY_PRETRAINED_DIR")]
    pretrained_dir: Option<PathBuf>,
    /// Folder to write the model to.
    #[arg(long)]
    out: PathBuf,
    /// Folder for checkpoints; a run with the same folder resumes [default: OUT/checkpoints].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the final metrics as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `distillery train`.
///
/// # Errors
/// Bad files, a bad config, or a failed run.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            JobConfig::from_json(&text).with_context(|| format!("in config {}", path.display()))?
        }
        None => JobConfig::default(),
    };
    if args.teacher_model.is_some() && config.teacher.model_id.is_none() {
        config.teacher.model_id = Some("cli".to_string());
    }
    if args.transfer_model.is_some() && config.teacher.job_id.is_none() {
        config.teacher.job_id = Some("cli".to_string());
    }
    let limits = ReadLimits::default();
    let train =
        read_file(&args.train, &limits).with_context(|| format!("in {}", args.train.display()))?;
    let valid = match &args.valid {
        Some(path) => {
            Some(read_file(path, &limits).with_context(|| format!("in {}", path.display()))?)
        }
        None => None,
    };
    let work_dir = args.work_dir.clone().unwrap_or_else(|| args.out.join("checkpoints"));
    let inputs = JobInputs {
        teacher_model: args.teacher_model.clone(),
        transfer_model: args.transfer_model.clone(),
        pretrained_dir: args.pretrained_dir.clone(),
        ..JobInputs::new(train, valid)
    };

    let bar = ProgressBar::new(!args.json);
    let manifest = run_job(&config, inputs, &work_dir, &args.out, &bar, &CancelToken::new())?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string(&metrics_json(&manifest))?);
    } else {
        print_table(&manifest);
        eprintln!("model written to {}", args.out.display());
    }
    Ok(())
}

fn metrics_json(manifest: &Manifest) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(teacher) = &manifest.teacher {
        out.insert("teacher".into(), serde_json::to_value(&teacher.metrics).unwrap_or_default());
    }
    out.insert(
        "student".into(),
        serde_json::to_value(&manifest.student.metrics).unwrap_or_default(),
    );
    serde_json::Value::Object(out)
}

fn print_table(manifest: &Manifest) {
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}",
        "model", "accuracy", "macro_f1", "agreement", "params", "epoch", "train_s"
    );
    let rows = [("teacher", manifest.teacher.as_ref()), ("student", Some(&manifest.student))];
    for (name, entry) in rows {
        let Some(entry) = entry else { continue };
        let Some(m) = &entry.metrics else { continue };
        let agreement = m.agreement.map_or("-".to_string(), |a| format!("{a:.4}"));
        println!(
            "{name:<8} {:>9.4} {:>9.4} {agreement:>9} {:>10} {:>9} {:>10.1}",
            m.accuracy, m.macro_f1, entry.parameters, entry.best_epoch, entry.train_seconds
        );
    }
    println!("(metrics on the validation rows)");
}
