//! A training job from rows to a finished model folder.
//!
//! Phases: 1. prepare (labels, tokenizer, validation split), 2. train or load the teacher,
//! 3. label the transfer set with the frozen teacher, 4. train the student, 5. write the
//! model. Each epoch ends with a checkpoint in the work folder, from which an interrupted
//! run resumes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::ml::checkpoint::{load_tensors, save_tensors, write_atomic, PhaseDir};
use crate::ml::config::{JobConfig, ModelConfig, TeacherKind};
use crate::ml::data::Example;
use crate::ml::device::open_device;
use crate::ml::manifest::{Manifest, NetworkEntry, Role, FORMAT_VERSION, MANIFEST_FILE};
use crate::ml::metrics::{agreement, Metrics};
use crate::ml::model::{argmax_rows, Classifier};
use crate::ml::progress::{CancelToken, Observer, Phase, StopReason, TrainEvent};
use crate::ml::rng::Rng;
use crate::ml::tokenizer::Tokenizer;
use crate::ml::train::{
    evaluate, predict_logits, train_phase, JobProgress, PhaseData, PhaseOutcome, PhaseSpec,
};

/// The data of a job.
#[derive(Debug, Clone)]
pub struct JobInputs {
    /// Training rows; unlabelled rows feed only the distillation term.
    pub train: Vec<Example>,
    /// Validation rows; when absent, a stratified fraction of `train` is held out.
    pub valid: Option<Vec<Example>>,
    /// Folder of an earlier model whose teacher is reused (`teacher.model_id`).
    pub teacher_model: Option<PathBuf>,
}

/// Why a run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::ml::config::ConfigError),
    /// The data cannot be trained on (too few labels, a label unknown to the teacher, ...).
    #[error("invalid data: {0}")]
    Data(String),
    /// The device cannot be opened.
    #[error(transparent)]
    Device(#[from] crate::ml::device::DeviceError),
    /// The loss became NaN or infinite.
    #[error("loss became {value} in phase {phase:?}, epoch {epoch}, step {step}")]
    NonFinite {
        /// Phase where it happened.
        phase: Phase,
        /// Epoch where it happened.
        epoch: usize,
        /// Step where it happened.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// The run was stopped through its [`CancelToken`].
    #[error("training stopped: {0:?}")]
    Stopped(StopReason),
    /// Reading or writing checkpoints or the model failed.
    #[error("i/o error at {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Runs a job: trains (or resumes) everything and writes the model to `out_dir`.
///
/// `work_dir` holds the checkpoints; if it already holds some from an earlier run of the
/// same job, training resumes from the last one and ends as an uninterrupted run would.
///
/// # Errors
/// A [`TrainError`]; on [`TrainError::Stopped`] the last checkpoint stays in `work_dir`.
pub fn run(
    config: &JobConfig,
    inputs: JobInputs,
    work_dir: &Path,
    out_dir: &Path,
    observer: &dyn Observer,
    cancel: &CancelToken,
) -> Result<Manifest, TrainError> {
    config.validate()?;
    let device = open_device(&config.device)?;
    let clock = Instant::now();

    // 1. Prepare: labels, validation split, tokenizer, token ids.
    observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Prepare });
    let reused = match (&config.teacher.model_id, &inputs.teacher_model) {
        (Some(_), Some(dir)) => Some(ReusedTeacher::load(dir, &device)?),
        (Some(id), None) => {
            return Err(TrainError::Data(format!("teacher model `{id}` was not provided")))
        }
        _ => None,
    };
    let prepared = prepare(config, inputs, reused.as_ref())?;
    observer.on_event(&TrainEvent::PhaseFinished {
        phase: Phase::Prepare,
        seconds: clock.elapsed().as_secs_f64(),
    });
    if let Some(reason) = cancel.reason() {
        return Err(TrainError::Stopped(reason));
    }

    // 2. The teacher: trained here, reused, or none.
    let trains_teacher = config.teacher.trains_recurrent();
    let shares = if trains_teacher { [0.70, 0.03, 0.25] } else { [0.0, 0.03, 0.95] };
    let progress = |start: f64, share: f64| JobProgress { observer, start, share, clock };
    let teacher = match reused {
        Some(r) => Some(TrainedNetwork { model: r.model, outcome: None }),
        None if trains_teacher => Some(train_teacher(
            config,
            &prepared,
            work_dir,
            &device,
            &progress(0.0, shares[0]),
            cancel,
        )?),
        None => None,
    };
    if config.teacher.kind == TeacherKind::Transformer {
        return Err(TrainError::Data(
            "transformer teachers are not supported by this build".into(),
        ));
    }

    // 3. Label the transfer set once with the frozen teacher.
    let soft = match &teacher {
        Some(t) => Some(label_transfer_set(t, &prepared, config, observer)?),
        None => None,
    };

    // 4. The student.
    let student = train_student(
        config,
        &prepared,
        soft.as_ref(),
        work_dir,
        &device,
        &progress(shares[0] + shares[1], shares[2]),
        cancel,
    )?;

    // 5. Final metrics and the model folder.
    observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Finalize });
    let finalize_start = Instant::now();
    let manifest =
        write_model(config, &prepared, teacher.as_ref(), &student, soft.as_ref(), out_dir)?;
    observer.on_event(&TrainEvent::PhaseFinished {
        phase: Phase::Finalize,
        seconds: finalize_start.elapsed().as_secs_f64(),
    });
    Ok(manifest)
}

/// A teacher taken from an earlier model.
struct ReusedTeacher {
    model: Classifier,
    manifest: Manifest,
}

impl ReusedTeacher {
    fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let manifest = read_manifest(dir)?;
        let entry = manifest.teacher.clone().ok_or_else(|| {
            TrainError::Data("the teacher model holds no recurrent teacher".into())
        })?;
        let tensors = load_tensors(&dir.join(Role::Teacher.weights_file()), device)?;
        let model = Classifier::from_tensors(
            &entry.config,
            manifest.tokenizer.vocab_size(),
            manifest.labels.len(),
            tensors,
            false,
        )?;
        Ok(Self { model, manifest })
    }
}

/// Reads and checks the manifest of a model folder.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Data`] for an unknown format.
pub fn read_manifest(dir: &Path) -> Result<Manifest, TrainError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| TrainError::Io { path: path.clone(), source })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| TrainError::Data(format!("invalid manifest {}: {e}", path.display())))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(TrainError::Data(format!(
            "unsupported model format version {}",
            manifest.format_version
        )));
    }
    Ok(manifest)
}

/// The data of a job in the form the trainer needs.
struct Prepared {
    labels: Vec<String>,
    tokenizer: Tokenizer,
    train_seqs: Vec<Vec<u32>>,
    train_labels: Vec<Option<usize>>,
    valid_seqs: Vec<Vec<u32>>,
    valid_labels: Vec<usize>,
}

fn prepare(
    config: &JobConfig,
    inputs: JobInputs,
    reused: Option<&ReusedTeacher>,
) -> Result<Prepared, TrainError> {
    let train_labels: BTreeSet<&str> =
        inputs.train.iter().filter_map(|e| e.label.as_deref()).collect();
    let labels: Vec<String> = match reused {
        Some(r) => r.manifest.labels.clone(),
        None => train_labels.iter().map(|l| l.to_string()).collect(),
    };
    if labels.len() < 2 {
        return Err(TrainError::Data(format!(
            "need at least 2 labels in the training rows, found {}",
            labels.len()
        )));
    }
    let index: HashMap<&str, usize> =
        labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let class_of = |label: &str| {
        index.get(label).copied().ok_or_else(|| {
            TrainError::Data(format!("label `{label}` is not one of the model's labels {labels:?}"))
        })
    };

    let (train, valid) = match inputs.valid {
        Some(valid) => (inputs.train, valid),
        None => stratified_split(inputs.train, config.training.validation_fraction, config.seed),
    };
    let valid: Vec<&Example> = valid.iter().filter(|e| e.label.is_some()).collect();
    if valid.is_empty() {
        return Err(TrainError::Data("the validation rows hold no labelled row".into()));
    }
    if !train.iter().any(|e| e.label.is_some()) {
        return Err(TrainError::Data("the training rows hold no labelled row".into()));
    }

    let t = &config.training;
    let tokenizer = match reused {
        Some(r) => r.manifest.tokenizer.clone(),
        None => Tokenizer::fit(
            train.iter().map(|e| e.text.as_str()),
            t.max_vocab,
            t.min_count,
            t.max_len,
        ),
    };
    let train_labels = train
        .iter()
        .map(|e| e.label.as_deref().map(class_of).transpose())
        .collect::<Result<_, _>>()?;
    let valid_labels = valid
        .iter()
        .map(|e| class_of(e.label.as_deref().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        train_seqs: train.iter().map(|e| tokenizer.encode(&e.text)).collect(),
        valid_seqs: valid.iter().map(|e| tokenizer.encode(&e.text)).collect(),
        labels,
        tokenizer,
        train_labels,
        valid_labels,
    })
}

/// Holds out `fraction` of each label's rows (at least one of any label with two or more
/// rows); unlabelled rows all stay in training.
fn stratified_split(rows: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut by_label: std::collections::BTreeMap<Option<String>, Vec<usize>> = Default::default();
    for (i, row) in rows.iter().enumerate() {
        by_label.entry(row.label.clone()).or_default().push(i);
    }
    let mut rng = Rng::derive(seed, "validation-split", 0);
    let mut held = vec![false; rows.len()];
    for (label, mut idx) in by_label {
        if label.is_none() || idx.len() < 2 {
            continue;
        }
        rng.shuffle(&mut idx);
        let take = ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1);
        for &i in &idx[..take] {
            held[i] = true;
        }
    }
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (row, h) in rows.into_iter().zip(held) {
        if h {
            valid.push(row)
        } else {
            train.push(row)
        }
    }
    (train, valid)
}

/// A network after its phase, with what the phase reported.
struct TrainedNetwork {
    model: Classifier,
    outcome: Option<PhaseOutcome>,
}

fn train_teacher(
    config: &JobConfig,
    prepared: &Prepared,
    work_dir: &Path,
    device: &Device,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<TrainedNetwork, TrainError> {
    let model_config = config.teacher.model();
    let model = Classifier::new(
        &model_config,
        prepared.tokenizer.vocab_size(),
        prepared.labels.len(),
        config.seed,
        DType::F32,
        device,
    )?;
    let rows =
        (0..prepared.train_seqs.len()).filter(|&i| prepared.train_labels[i].is_some()).collect();
    let outcome = run_phase(
        Phase::Teacher,
        &model,
        prepared,
        rows,
        None,
        None,
        config,
        config.teacher_epochs(),
        work_dir,
        progress,
        cancel,
    )?;
    Ok(TrainedNetwork { model: freeze(&model, &model_config, prepared)?, outcome: Some(outcome) })
}

/// A copy of a trained model whose parameters are plain tensors: evaluation only, and no
/// gradient can reach it while the student trains.
fn freeze(
    model: &Classifier,
    config: &ModelConfig,
    prepared: &Prepared,
) -> Result<Classifier, TrainError> {
    let tensors = model
        .tensors()
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.detach().copy()?)))
        .collect::<Result<_, candle_core::Error>>()?;
    Ok(Classifier::from_tensors(
        config,
        prepared.tokenizer.vocab_size(),
        prepared.labels.len(),
        tensors,
        false,
    )?)
}

/// The teacher's logits for every training row, and its predictions on validation rows.
struct SoftTargets {
    train: Tensor,
    valid_preds: Vec<usize>,
}

fn label_transfer_set(
    teacher: &TrainedNetwork,
    prepared: &Prepared,
    config: &JobConfig,
    observer: &dyn Observer,
) -> Result<SoftTargets, TrainError> {
    observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Labeling });
    let started = Instant::now();
    let batch = config.training.eval_batch_size;
    let train = predict_logits(&teacher.model, &prepared.train_seqs, batch)?;
    let valid_preds = argmax_rows(&predict_logits(&teacher.model, &prepared.valid_seqs, batch)?)?;
    observer.on_event(&TrainEvent::PhaseFinished {
        phase: Phase::Labeling,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(SoftTargets { train, valid_preds })
}

fn train_student(
    config: &JobConfig,
    prepared: &Prepared,
    soft: Option<&SoftTargets>,
    work_dir: &Path,
    device: &Device,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<TrainedNetwork, TrainError> {
    // A different stream from the teacher's, so that equal shapes do not start equal.
    let seed = config.seed.wrapping_add(1);
    let model = Classifier::new(
        &config.student,
        prepared.tokenizer.vocab_size(),
        prepared.labels.len(),
        seed,
        DType::F32,
        device,
    )?;
    // With a teacher every row teaches; without one only labelled rows can.
    let rows = (0..prepared.train_seqs.len())
        .filter(|&i| soft.is_some() || prepared.train_labels[i].is_some())
        .collect();
    let outcome = run_phase(
        Phase::Student,
        &model,
        prepared,
        rows,
        soft.map(|s| &s.train),
        soft.map(|s| s.valid_preds.as_slice()),
        config,
        config.training.epochs,
        work_dir,
        progress,
        cancel,
    )?;
    Ok(TrainedNetwork { model, outcome: Some(outcome) })
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    phase: Phase,
    model: &Classifier,
    prepared: &Prepared,
    rows: Vec<usize>,
    soft_targets: Option<&Tensor>,
    valid_teacher: Option<&[usize]>,
    config: &JobConfig,
    epochs: usize,
    work_dir: &Path,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<PhaseOutcome, TrainError> {
    progress.observer.on_event(&TrainEvent::PhaseStarted { phase });
    let data = PhaseData {
        seqs: &prepared.train_seqs,
        labels: &prepared.train_labels,
        rows,
        soft_targets,
        valid_seqs: &prepared.valid_seqs,
        valid_labels: &prepared.valid_labels,
        valid_teacher,
        label_names: &prepared.labels,
    };
    let distill = soft_targets.map(|_| &config.distillation);
    let spec = PhaseSpec { phase, epochs, training: &config.training, distill, seed: config.seed };
    let name = match phase {
        Phase::Teacher => "teacher",
        _ => "student",
    };
    let dir = PhaseDir::open(work_dir, name)?;
    let outcome = train_phase(model, &data, &spec, &dir, progress, cancel)?;
    progress.observer.on_event(&TrainEvent::PhaseFinished { phase, seconds: outcome.seconds });
    Ok(outcome)
}

fn write_model(
    config: &JobConfig,
    prepared: &Prepared,
    teacher: Option<&TrainedNetwork>,
    student: &TrainedNetwork,
    soft: Option<&SoftTargets>,
    out_dir: &Path,
) -> Result<Manifest, TrainError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
    let batch = config.training.eval_batch_size;
    let entry = |network: &TrainedNetwork, role: Role| -> Result<NetworkEntry, TrainError> {
        let (mut metrics, preds) = evaluate(
            &network.model,
            &prepared.valid_seqs,
            &prepared.valid_labels,
            &prepared.labels,
            batch,
        )?;
        if role == Role::Student {
            metrics.agreement = soft.map(|s| agreement(&preds, &s.valid_preds));
        }
        let size_bytes = save_tensors(&out_dir.join(role.weights_file()), network.model.tensors())?;
        let outcome = network.outcome.as_ref();
        Ok(NetworkEntry {
            config: network.model.config().clone(),
            parameters: network.model.parameter_count(),
            size_bytes,
            metrics: Some(metrics),
            best_epoch: outcome.map_or(0, |o| o.best_epoch),
            train_seconds: outcome.map_or(0.0, |o| o.seconds),
        })
    };
    let teacher_entry = teacher.map(|t| entry(t, Role::Teacher)).transpose()?;
    let student_entry = entry(student, Role::Student)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        labels: prepared.labels.clone(),
        tokenizer: prepared.tokenizer.clone(),
        teacher: teacher_entry,
        student: student_entry,
        job: config.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out_dir.join(MANIFEST_FILE), &json)?;
    Ok(manifest)
}

/// Evaluates a finished model folder on labelled rows: metrics of the student and, when
/// present, the teacher (with the student's agreement with it).
///
/// # Errors
/// When the model cannot be read or the rows hold an unknown label.
pub fn evaluate_model(
    dir: &Path,
    rows: &[Example],
    batch_size: usize,
) -> Result<HashMap<Role, Metrics>, TrainError> {
    let manifest = read_manifest(dir)?;
    let device = Device::Cpu;
    let index: HashMap<&str, usize> =
        manifest.labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let labelled: Vec<&Example> = rows.iter().filter(|e| e.label.is_some()).collect();
    let truth = labelled
        .iter()
        .map(|e| {
            let label = e.label.as_deref().unwrap_or_default();
            index.get(label).copied().ok_or_else(|| {
                TrainError::Data(format!("label `{label}` is not one of the model's labels"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let seqs: Vec<Vec<u32>> = labelled.iter().map(|e| manifest.tokenizer.encode(&e.text)).collect();
    let mut out = HashMap::new();
    let mut teacher_preds = None;
    for role in [Role::Teacher, Role::Student] {
        let Some(entry) = manifest.network(role) else { continue };
        let tensors = load_tensors(&dir.join(role.weights_file()), &device)?;
        let model = Classifier::from_tensors(
            &entry.config,
            manifest.tokenizer.vocab_size(),
            manifest.labels.len(),
            tensors,
            false,
        )?;
        let (mut metrics, preds) = evaluate(&model, &seqs, &truth, &manifest.labels, batch_size)?;
        if role == Role::Student {
            metrics.agreement = teacher_preds.as_ref().map(|t: &Vec<usize>| agreement(&preds, t));
        } else {
            teacher_preds = Some(preds);
        }
        out.insert(role, metrics);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "pipeline_test.rs"]
mod tests;
