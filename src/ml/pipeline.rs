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

use crate::ml::augment::augment_rows;
use crate::ml::checkpoint::{save_tensors, write_atomic, PhaseDir};
use crate::ml::config::{JobConfig, TeacherKind};
use crate::ml::data::Example;
use crate::ml::device::open_device;
use crate::ml::manifest::{
    Manifest, NetworkEntry, Role, TransformerEntry, FORMAT_VERSION, MANIFEST_FILE, TRANSFORMER_DIR,
};
use crate::ml::metrics::{agreement, Metrics};
use crate::ml::model::{argmax_rows, Classifier};
use crate::ml::progress::{CancelToken, Observer, Phase, StopReason, TrainEvent};
use crate::ml::rng::Rng;
use crate::ml::teacher::{self, ReusedTeacher, Teacher};
use crate::ml::tokenizer::Tokenizer;
use crate::ml::train::{evaluate, train_phase, JobProgress, PhaseData, PhaseOutcome, PhaseSpec};
use crate::ml::transfer::{RowKind, TransferSet};

/// The data of a job.
#[derive(Debug, Clone)]
pub struct JobInputs {
    /// Training rows; unlabelled rows feed only the distillation term.
    pub train: Vec<Example>,
    /// Validation rows; when absent, a stratified fraction of `train` is held out.
    pub valid: Option<Vec<Example>>,
    /// Folder of an earlier model whose teacher is reused (`teacher.model_id`).
    pub teacher_model: Option<PathBuf>,
    /// Folder of the model of an earlier job whose transfer set is reused (`teacher.job_id`).
    pub transfer_model: Option<PathBuf>,
    /// Folder of pretrained transformer folders (`teacher.kind: transformer`).
    pub pretrained_dir: Option<PathBuf>,
}

impl JobInputs {
    /// Inputs with training rows and, optionally, validation rows only.
    pub fn new(train: Vec<Example>, valid: Option<Vec<Example>>) -> Self {
        Self { train, valid, teacher_model: None, transfer_model: None, pretrained_dir: None }
    }
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
    let source = TeacherSource::resolve(config, &inputs, &device)?;
    let prepared = prepare(config, &inputs, &source)?;
    let seconds = clock.elapsed().as_secs_f64();
    observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Prepare, seconds });
    stop_if_asked(cancel)?;

    // 2. The teacher: trained here, reused, stored logits, or none.
    let trains = matches!(source, TeacherSource::Train);
    let shares = if trains { [0.65, 0.08, 0.25] } else { [0.0, 0.05, 0.93] };
    let progress = |start: f64, share: f64| JobProgress { observer, start, share, clock };
    let teacher = match source {
        TeacherSource::None => None,
        TeacherSource::Reused(r) => Some(Teacher::Recurrent { model: r.model, outcome: None }),
        TeacherSource::Stored(stored) => {
            return finish_from_stored(
                config,
                prepared,
                stored,
                work_dir,
                out_dir,
                &progress(0.05, 0.93),
                cancel,
            )
        }
        TeacherSource::Train => Some(match config.teacher.kind {
            TeacherKind::Transformer => {
                let root = inputs.pretrained_dir.as_deref();
                teacher::train_transformer(
                    config,
                    &prepared,
                    root,
                    &device,
                    &progress(0.0, shares[0]),
                    cancel,
                )?
            }
            _ => teacher::train_recurrent(
                config,
                &prepared,
                work_dir,
                &device,
                &progress(0.0, shares[0]),
                cancel,
            )?,
        }),
    };

    // 3. The transfer set (training rows and their augmentations), labelled once.
    let labeling = progress(shares[0], shares[1]);
    let transfer = match &teacher {
        Some(t) => Some(label_transfer_set(config, &prepared, t, &labeling, cancel)?),
        None => None,
    };

    // 4. The student, and 5. the model folder.
    let start = shares[0] + shares[1];
    let student = train_student(
        config,
        &prepared,
        transfer.as_ref(),
        work_dir,
        &device,
        &progress(start, shares[2]),
        cancel,
    )?;
    finalize(config, &prepared, teacher.as_ref(), &student, transfer.as_ref(), out_dir, observer)
}

fn stop_if_asked(cancel: &CancelToken) -> Result<(), TrainError> {
    cancel.reason().map_or(Ok(()), |reason| Err(TrainError::Stopped(reason)))
}

/// Where the job's teacher comes from, resolved before the data is prepared.
enum TeacherSource {
    /// Train one (recurrent or transformer).
    Train,
    /// The recurrent teacher of an earlier model.
    Reused(Box<ReusedTeacher>),
    /// The stored transfer set and logits of an earlier job.
    Stored(TransferSet),
    /// No teacher: the student learns from labels alone.
    None,
}

impl TeacherSource {
    fn resolve(
        config: &JobConfig,
        inputs: &JobInputs,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let missing = |what: &str| TrainError::Data(format!("the {what} was not provided"));
        if config.teacher.job_id.is_some() {
            let dir =
                inputs.transfer_model.as_deref().ok_or_else(|| missing("teacher job's model"))?;
            return Ok(Self::Stored(TransferSet::load(dir, device)?));
        }
        if config.teacher.model_id.is_some() {
            let dir = inputs.teacher_model.as_deref().ok_or_else(|| missing("teacher model"))?;
            return Ok(Self::Reused(Box::new(ReusedTeacher::load(dir, device)?)));
        }
        Ok(match config.teacher.kind {
            TeacherKind::None => Self::None,
            TeacherKind::Recurrent | TeacherKind::Transformer => Self::Train,
        })
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
        let version = manifest.format_version;
        return Err(TrainError::Data(format!("unsupported model format version {version}")));
    }
    Ok(manifest)
}

/// The data of a job in the form the trainers need.
#[derive(Clone)]
pub struct Prepared {
    /// Label names, by class index.
    pub labels: Vec<String>,
    /// The student's (and a recurrent teacher's) tokenizer.
    pub tokenizer: Tokenizer,
    /// Training texts, augmented rows appended after labelling.
    pub train_texts: Vec<String>,
    /// Token ids of the training texts.
    pub train_seqs: Vec<Vec<u32>>,
    /// Class of each training row, `None` when unlabelled.
    pub train_labels: Vec<Option<usize>>,
    /// Validation texts.
    pub valid_texts: Vec<String>,
    /// Token ids of the validation texts.
    pub valid_seqs: Vec<Vec<u32>>,
    /// Class of each validation row.
    pub valid_labels: Vec<usize>,
}

fn prepare(
    config: &JobConfig,
    inputs: &JobInputs,
    source: &TeacherSource,
) -> Result<Prepared, TrainError> {
    // A stored transfer set brings its own rows; the job's dataset is the one it was made of.
    let (train, valid) = match source {
        TeacherSource::Stored(stored) => {
            let valid = inputs.valid.clone().unwrap_or_else(|| stored.examples(RowKind::Valid));
            (stored.examples(RowKind::Train), valid)
        }
        _ => match &inputs.valid {
            Some(valid) => (inputs.train.clone(), valid.clone()),
            None => stratified_split(
                inputs.train.clone(),
                config.training.validation_fraction,
                config.seed,
            ),
        },
    };
    let labels: Vec<String> = match source {
        TeacherSource::Reused(r) => r.manifest.labels.clone(),
        TeacherSource::Stored(stored) => stored_labels(stored),
        _ => train
            .iter()
            .filter_map(|e| e.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    if labels.len() < 2 {
        let found = labels.len();
        return Err(TrainError::Data(format!(
            "need at least 2 labels in the training rows, found {found}"
        )));
    }
    let index: HashMap<&str, usize> =
        labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let class_of = |label: &str| {
        index.get(label).copied().ok_or_else(|| {
            TrainError::Data(format!("label `{label}` is not one of the model's labels {labels:?}"))
        })
    };

    let valid: Vec<&Example> = valid.iter().filter(|e| e.label.is_some()).collect();
    if valid.is_empty() {
        return Err(TrainError::Data("the validation rows hold no labelled row".into()));
    }
    if !train.iter().any(|e| e.label.is_some()) {
        return Err(TrainError::Data("the training rows hold no labelled row".into()));
    }
    let t = &config.training;
    let tokenizer = match source {
        TeacherSource::Reused(r) => r.manifest.tokenizer.clone(),
        _ => Tokenizer::fit(
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
        train_texts: train.into_iter().map(|e| e.text).collect(),
        valid_texts: valid.iter().map(|e| e.text.clone()).collect(),
        labels,
        tokenizer,
        train_labels,
        valid_labels,
    })
}

/// Label names of a stored transfer set, in the column order of its logits.
fn stored_labels(stored: &TransferSet) -> Vec<String> {
    stored.label_names.clone()
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

/// The transfer set in memory: augmented rows appended to the training rows, and the
/// teacher's logits for every training and validation row.
struct Transfer {
    prepared: Prepared,
    train_logits: Tensor,
    valid_logits: Tensor,
    valid_preds: Vec<usize>,
    augmented: usize,
}

/// Token for a masked word: the transformer's mask token, and an unknown word to the
/// student's tokenizer (see [`Tokenizer::encode`]).
const MASK_TOKEN: &str = crate::ml::tokenizer::MASK;

fn label_transfer_set(
    config: &JobConfig,
    prepared: &Prepared,
    teacher: &Teacher,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<Transfer, TrainError> {
    let observer = progress.observer;
    observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Labeling });
    let started = Instant::now();
    let mut prepared = prepared.clone();
    let originals: Vec<&str> = prepared.train_texts.iter().map(String::as_str).collect();
    let augmented: Vec<String> =
        augment_rows(&originals, &config.distillation.augment, config.seed, MASK_TOKEN)
            .into_iter()
            .map(|row| row.text)
            .collect();
    let added = augmented.len();
    for text in augmented {
        prepared.train_seqs.push(prepared.tokenizer.encode(&text));
        prepared.train_texts.push(text);
        prepared.train_labels.push(None);
    }

    let batch = config.training.eval_batch_size;
    let texts: Vec<&str> = prepared.train_texts.iter().map(String::as_str).collect();
    let valid_texts: Vec<&str> = prepared.valid_texts.iter().map(String::as_str).collect();
    let train_share = texts.len() as f64 / (texts.len() + valid_texts.len()).max(1) as f64;
    let (train_part, valid_part) =
        (progress.part(0.0, train_share), progress.part(train_share, 1.0 - train_share));
    let train_logits = teacher.logits(&texts, &prepared.train_seqs, batch, &train_part, cancel)?;
    let valid_logits =
        teacher.logits(&valid_texts, &prepared.valid_seqs, batch, &valid_part, cancel)?;
    let valid_preds = argmax_rows(&valid_logits)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        rows = texts.len() + valid_texts.len(),
        augmented = added,
        seconds,
        "transfer set labelled"
    );
    observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Labeling, seconds });
    Ok(Transfer { prepared, train_logits, valid_logits, valid_preds, augmented: added })
}

/// Trains a student from the stored transfer set of an earlier job and writes the model.
fn finish_from_stored(
    config: &JobConfig,
    prepared: Prepared,
    stored: TransferSet,
    work_dir: &Path,
    out_dir: &Path,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<Manifest, TrainError> {
    let mut prepared = prepared;
    let pick = |kind: RowKind| -> Vec<u32> {
        stored
            .rows
            .iter()
            .enumerate()
            .filter(|(_, (_, k))| *k == kind)
            .map(|(i, _)| i as u32)
            .collect()
    };
    let device = stored.logits.device().clone();
    let select = |rows: Vec<u32>| -> Result<Tensor, TrainError> {
        let n = rows.len();
        Ok(stored.logits.index_select(&Tensor::from_vec(rows, n, &device)?, 0)?)
    };
    let mut train_rows = pick(RowKind::Train);
    for (example, kind) in &stored.rows {
        if *kind == RowKind::Augmented {
            prepared.train_seqs.push(prepared.tokenizer.encode(&example.text));
            prepared.train_texts.push(example.text.clone());
            prepared.train_labels.push(None);
        }
    }
    train_rows.extend(pick(RowKind::Augmented));
    let train_logits = select(train_rows)?;
    // Agreement is only known when the validation rows are the stored ones.
    let valid_rows = pick(RowKind::Valid);
    let stored_valid = valid_rows.len() == prepared.valid_texts.len();
    let valid_logits = select(valid_rows)?;
    let valid_preds = if stored_valid { argmax_rows(&valid_logits)? } else { Vec::new() };
    let augmented = stored.rows.iter().filter(|(_, k)| *k == RowKind::Augmented).count();
    let transfer = Transfer { prepared, train_logits, valid_logits, valid_preds, augmented };
    let student = train_student(
        config,
        &transfer.prepared,
        Some(&transfer),
        work_dir,
        &device,
        progress,
        cancel,
    )?;
    finalize(
        config,
        &transfer.prepared,
        None,
        &student,
        Some(&transfer),
        out_dir,
        progress.observer,
    )
}

/// The student after its phase.
struct Student {
    model: Classifier,
    outcome: PhaseOutcome,
}

fn train_student(
    config: &JobConfig,
    prepared: &Prepared,
    transfer: Option<&Transfer>,
    work_dir: &Path,
    device: &Device,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<Student, TrainError> {
    // The transfer set replaces the plain rows when there is a teacher.
    let prepared = transfer.map_or(prepared, |t| &t.prepared);
    // A different stream from the teacher's, so that equal shapes do not start equal.
    let seed = config.seed.wrapping_add(1);
    let (vocab, classes) = (prepared.tokenizer.vocab_size(), prepared.labels.len());
    let model = Classifier::new(&config.student, vocab, classes, seed, DType::F32, device)?;
    progress.observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Student });
    // With a teacher every row teaches; without one only labelled rows can.
    let rows = (0..prepared.train_seqs.len())
        .filter(|&i| transfer.is_some() || prepared.train_labels[i].is_some())
        .collect();
    let valid_teacher = transfer.map(|t| t.valid_preds.as_slice()).filter(|p| !p.is_empty());
    let data = PhaseData {
        seqs: &prepared.train_seqs,
        labels: &prepared.train_labels,
        rows,
        soft_targets: transfer.map(|t| &t.train_logits),
        valid_seqs: &prepared.valid_seqs,
        valid_labels: &prepared.valid_labels,
        valid_teacher,
        label_names: &prepared.labels,
    };
    let spec = PhaseSpec {
        phase: Phase::Student,
        epochs: config.training.epochs,
        training: &config.training,
        distill: transfer.map(|_| &config.distillation),
        seed: config.seed,
    };
    let dir = PhaseDir::open(work_dir, "student")?;
    let outcome = train_phase(&model, &data, &spec, &dir, progress, cancel)?;
    let seconds = outcome.seconds;
    progress.observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Student, seconds });
    Ok(Student { model, outcome })
}

/// 5. Final metrics on the validation rows, the weight files, the transfer set and the
///    manifest (written last, so a folder with a manifest is complete).
fn finalize(
    config: &JobConfig,
    prepared: &Prepared,
    teacher: Option<&Teacher>,
    student: &Student,
    transfer: Option<&Transfer>,
    out_dir: &Path,
    observer: &dyn Observer,
) -> Result<Manifest, TrainError> {
    observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Finalize });
    let started = Instant::now();
    std::fs::create_dir_all(out_dir)
        .map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
    let batch = config.training.eval_batch_size;
    let names = &prepared.labels;
    let (mut student_metrics, student_preds) =
        evaluate(&student.model, &prepared.valid_seqs, &prepared.valid_labels, names, batch)?;
    if let Some(t) = transfer.filter(|t| !t.valid_preds.is_empty()) {
        student_metrics.agreement = Some(agreement(&student_preds, &t.valid_preds));
    }
    let student_entry = network_entry(
        &student.model,
        Some(&student.outcome),
        student_metrics,
        &out_dir.join(Role::Student.weights_file()),
    )?;

    let (mut teacher_entry, mut transformer_entry) = (None, None);
    match teacher {
        Some(Teacher::Recurrent { model, outcome }) => {
            let (metrics, _) =
                evaluate(model, &prepared.valid_seqs, &prepared.valid_labels, names, batch)?;
            let path = out_dir.join(Role::Teacher.weights_file());
            teacher_entry = Some(network_entry(model, outcome.as_ref(), metrics, &path)?);
        }
        Some(Teacher::Transformer { teacher, report }) => {
            let t = transfer.expect("a teacher always labels a transfer set");
            let preds = argmax_rows(&t.valid_logits)?;
            let metrics = Metrics::compute(names, &prepared.valid_labels, &preds);
            teacher
                .save(&out_dir.join(TRANSFORMER_DIR))
                .map_err(|e| TrainError::Data(e.to_string()))?;
            transformer_entry = Some(TransformerEntry {
                pretrained: teacher.pretrained().to_string(),
                fine_tuned: config.teacher.fine_tune,
                metrics: Some(metrics),
                best_epoch: report.best_epoch,
                train_seconds: report.load_seconds + report.embed_seconds + report.train_seconds,
            });
        }
        None => {}
    }
    if let Some(t) = transfer {
        transfer_set(&t.prepared, t).save(out_dir)?;
    }

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        labels: prepared.labels.clone(),
        tokenizer: prepared.tokenizer.clone(),
        teacher: teacher_entry,
        transformer_teacher: transformer_entry,
        student: student_entry,
        job: config.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out_dir.join(MANIFEST_FILE), &json)?;
    let seconds = started.elapsed().as_secs_f64();
    observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Finalize, seconds });
    Ok(manifest)
}

fn network_entry(
    model: &Classifier,
    outcome: Option<&PhaseOutcome>,
    metrics: Metrics,
    path: &Path,
) -> Result<NetworkEntry, TrainError> {
    let size_bytes = save_tensors(path, model.tensors())?;
    Ok(NetworkEntry {
        config: model.config().clone(),
        parameters: model.parameter_count(),
        size_bytes,
        metrics: Some(metrics),
        best_epoch: outcome.map_or(0, |o| o.best_epoch),
        train_seconds: outcome.map_or(0.0, |o| o.seconds),
    })
}

/// The rows and logits to store beside the model (original training rows, augmented rows,
/// validation rows, in that order).
fn transfer_set(prepared: &Prepared, transfer: &Transfer) -> TransferSet {
    let originals = prepared.train_texts.len() - transfer.augmented;
    let label = |c: Option<usize>| c.map(|c| prepared.labels[c].clone());
    let mut rows = Vec::with_capacity(prepared.train_texts.len() + prepared.valid_texts.len());
    for (i, text) in prepared.train_texts.iter().enumerate() {
        let kind = if i < originals { RowKind::Train } else { RowKind::Augmented };
        rows.push((Example { text: text.clone(), label: label(prepared.train_labels[i]) }, kind));
    }
    for (text, &c) in prepared.valid_texts.iter().zip(&prepared.valid_labels) {
        rows.push((Example { text: text.clone(), label: label(Some(c)) }, RowKind::Valid));
    }
    let logits = Tensor::cat(&[&transfer.train_logits, &transfer.valid_logits], 0)
        .unwrap_or_else(|_| transfer.train_logits.clone());
    TransferSet { rows, logits, label_names: prepared.labels.clone() }
}

#[cfg(test)]
#[path = "pipeline_test.rs"]
mod tests;
