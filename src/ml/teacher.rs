//! The teacher side of a job: training, reusing or loading the teacher, and its logits.
//!
//! A teacher is a recurrent classifier (trained here or taken from an earlier model), a
//! pretrained transformer with a trained head, or the stored logits of an earlier job. Once
//! ready it is frozen: its logits are computed once over the transfer set, in evaluation
//! mode, with no gradients.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::ml::checkpoint::load_tensors;
use crate::ml::checkpoint::PhaseDir;
use crate::ml::config::{JobConfig, ModelConfig};
use crate::ml::manifest::{Manifest, Role};
use crate::ml::model::Classifier;
use crate::ml::pipeline::{read_manifest, Prepared, TrainError};
use crate::ml::progress::{
    CancelToken, EpochReport, LossTerms, Phase, Progress, StopReason, TrainEvent,
};
use crate::ml::train::{
    predict_logits_until, train_phase, JobProgress, PhaseData, PhaseOutcome, PhaseSpec,
};
use crate::ml::transformer::{
    resolve_pretrained, EmbedHooks, TeacherData, TeacherMode, TrainCallbacks, TrainReport,
    TransformerError, TransformerTeacher, TransformerTrainConfig,
};

/// A ready, frozen teacher.
pub enum Teacher {
    /// A recurrent classifier, with its phase report when it was trained by this job.
    Recurrent {
        /// The frozen network.
        model: Classifier,
        /// The training phase, `None` when reused.
        outcome: Option<PhaseOutcome>,
    },
    /// A pretrained transformer with a trained classification head.
    Transformer {
        /// The teacher.
        teacher: Box<TransformerTeacher>,
        /// What its training reported.
        report: TrainReport,
    },
}

impl Teacher {
    /// Logits `(N, C)` of the given rows (token ids for a recurrent teacher, texts for a
    /// transformer), computed in batches.
    ///
    /// # Errors
    /// On tensor errors, or [`TrainError::Stopped`] when canceled.
    pub fn logits(
        &self,
        texts: &[&str],
        seqs: &[Vec<u32>],
        batch_size: usize,
        progress: &JobProgress<'_>,
        cancel: &CancelToken,
    ) -> Result<Tensor, TrainError> {
        match self {
            Teacher::Recurrent { model, .. } => {
                predict_logits_until(model, seqs, batch_size, cancel)
            }
            Teacher::Transformer { teacher, .. } => {
                let started = Instant::now();
                let progress = |done: usize, total: usize| {
                    let within = done as f64 / total.max(1) as f64;
                    let event =
                        pass_progress(progress, Phase::Labeling, within, (done, total), started);
                    progress.observer.on_event(&event);
                };
                let stop = || cancel.reason().is_some();
                let hooks = EmbedHooks { progress: &progress, should_stop: &stop };
                teacher
                    .logits_with_hooks(texts, batch_size.min(64), &hooks)
                    .map_err(|e| transformer_error(e, cancel))
            }
        }
    }
}

/// Progress of a pass over texts (embedding or labelling) that has done `done` of its
/// `total` texts and is `within` (0 to 1) of the way through its part of the job.
fn pass_progress(
    progress: &JobProgress<'_>,
    phase: Phase,
    within: f64,
    (done, total): (usize, usize),
    started: Instant,
) -> TrainEvent {
    let (fraction, eta_seconds) = progress.at(within);
    TrainEvent::Progress(Progress {
        phase,
        epoch: 1,
        epochs: 1,
        step: done,
        steps: total,
        loss: LossTerms::default(),
        examples_per_second: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
        eta_seconds,
        fraction,
    })
}

/// Maps a transformer error: a stop stays a stop, bad input is a data error.
fn transformer_error(error: TransformerError, cancel: &CancelToken) -> TrainError {
    match error {
        TransformerError::Canceled => {
            TrainError::Stopped(cancel.reason().unwrap_or(StopReason::Canceled))
        }
        TransformerError::Candle(e) => TrainError::Candle(e),
        other => TrainError::Data(other.to_string()),
    }
}

/// The teacher of an earlier model (`teacher.model_id`).
pub struct ReusedTeacher {
    /// The frozen network.
    pub model: Classifier,
    /// That model's manifest (labels and tokenizer are taken from it).
    pub manifest: Manifest,
}

impl ReusedTeacher {
    /// Loads the recurrent teacher of the model folder `dir`.
    ///
    /// # Errors
    /// [`TrainError::Data`] when the model holds no recurrent teacher.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let manifest = read_manifest(dir)?;
        let entry = manifest.teacher.clone().ok_or_else(|| {
            TrainError::Data("the teacher model holds no recurrent teacher".into())
        })?;
        let tensors = load_tensors(&dir.join(Role::Teacher.weights_file()), device)?;
        let (vocab, classes) = (manifest.tokenizer.vocab_size(), manifest.labels.len());
        let model = Classifier::from_tensors(&entry.config, vocab, classes, tensors, false)?;
        Ok(Self { model, manifest })
    }
}

/// Trains the recurrent teacher on the labelled training rows and freezes it.
///
/// # Errors
/// As [`train_phase`].
pub fn train_recurrent(
    config: &JobConfig,
    prepared: &Prepared,
    work_dir: &Path,
    device: &Device,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<Teacher, TrainError> {
    let model_config = config.teacher.model();
    let (vocab, classes) = (prepared.tokenizer.vocab_size(), prepared.labels.len());
    let model = Classifier::new(&model_config, vocab, classes, config.seed, DType::F32, device)?;
    progress.observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Teacher });
    let data = PhaseData {
        seqs: &prepared.train_seqs,
        labels: &prepared.train_labels,
        rows: (0..prepared.train_seqs.len())
            .filter(|&i| prepared.train_labels[i].is_some())
            .collect(),
        soft_targets: None,
        valid_seqs: &prepared.valid_seqs,
        valid_labels: &prepared.valid_labels,
        valid_teacher: None,
        label_names: &prepared.labels,
    };
    let spec = PhaseSpec {
        phase: Phase::Teacher,
        epochs: config.teacher_epochs(),
        training: &config.training,
        distill: None,
        seed: config.seed,
    };
    let dir = PhaseDir::open(work_dir, "teacher")?;
    let outcome = train_phase(&model, &data, &spec, &dir, progress, cancel)?;
    let seconds = outcome.seconds;
    progress.observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Teacher, seconds });
    Ok(Teacher::Recurrent {
        model: freeze(&model, &model_config, vocab, classes)?,
        outcome: Some(outcome),
    })
}

/// A copy of a trained model whose parameters are plain tensors: evaluation only, and no
/// gradient can reach it while the student trains.
fn freeze(
    model: &Classifier,
    config: &ModelConfig,
    vocab: usize,
    classes: usize,
) -> Result<Classifier, TrainError> {
    let tensors = model
        .tensors()
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.detach().copy()?)))
        .collect::<Result<_, candle_core::Error>>()?;
    Ok(Classifier::from_tensors(config, vocab, classes, tensors, false)?)
}

/// Trains a classification head on a pretrained transformer (frozen or fine-tuned).
///
/// # Errors
/// [`TrainError::Data`] when the pretrained folder is unknown, [`TrainError::Stopped`]
/// when canceled, tensor errors.
pub fn train_transformer(
    config: &JobConfig,
    prepared: &Prepared,
    pretrained_root: Option<&Path>,
    device: &Device,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<Teacher, TrainError> {
    let name = config.teacher.pretrained.as_deref().unwrap_or_default();
    let root = pretrained_root
        .ok_or_else(|| TrainError::Data("no folder of pretrained models is configured".into()))?;
    let dir = resolve_pretrained(root, name).map_err(|e| TrainError::Data(e.to_string()))?;
    progress.observer.on_event(&TrainEvent::PhaseStarted { phase: Phase::Teacher });

    let labelled: Vec<usize> =
        (0..prepared.train_texts.len()).filter(|&i| prepared.train_labels[i].is_some()).collect();
    let texts: Vec<&str> = labelled.iter().map(|&i| prepared.train_texts[i].as_str()).collect();
    let labels: Vec<u32> =
        labelled.iter().filter_map(|&i| prepared.train_labels[i]).map(|c| c as u32).collect();
    let valid_texts: Vec<&str> = prepared.valid_texts.iter().map(String::as_str).collect();
    let valid_labels: Vec<u32> = prepared.valid_labels.iter().map(|&c| c as u32).collect();
    let data = TeacherData {
        train_texts: &texts,
        train_labels: &labels,
        valid_texts: &valid_texts,
        valid_labels: &valid_labels,
        num_labels: prepared.labels.len(),
    };
    let mode = if config.teacher.fine_tune { TeacherMode::FineTune } else { TeacherMode::Frozen };
    let defaults = TransformerTrainConfig::default();
    let train_config = TransformerTrainConfig {
        mode,
        // A head on frozen features needs more passes than a recurrent network.
        epochs: config.teacher.epochs.unwrap_or(if config.teacher.fine_tune {
            config.training.epochs
        } else {
            defaults.epochs
        }),
        seed: config.seed,
        weight_decay: config.training.weight_decay.max(defaults.weight_decay),
        ..defaults
    };

    // A frozen teacher spends nearly all its time embedding the texts once (the first
    // nine tenths of its phase); the head's epochs are the rest. Fine-tuning is all epochs.
    let (embed_share, epochs) = match mode {
        TeacherMode::Frozen => (0.9, train_config.epochs),
        TeacherMode::FineTune => (0.0, train_config.epochs),
    };
    let steps_started = Instant::now();
    let step_progress = |epoch: usize, step: usize, steps: usize, loss: f64| {
        let within = ((epoch - 1) as f64 + step as f64 / steps.max(1) as f64) / epochs as f64;
        let (fraction, eta_seconds) = progress.at(embed_share + (1.0 - embed_share) * within);
        let done = ((epoch - 1) * steps + step) as f64;
        let batches_per_second = done / steps_started.elapsed().as_secs_f64().max(1e-9);
        progress.observer.on_event(&TrainEvent::Progress(Progress {
            phase: Phase::Teacher,
            epoch,
            epochs,
            step,
            steps,
            loss: LossTerms { total: loss, ce: loss, distill: 0.0 },
            examples_per_second: batches_per_second * train_config.batch_size as f64,
            eta_seconds,
            fraction,
        }));
    };
    let embed_started = Instant::now();
    let embed_progress = |done: usize, total: usize| {
        let within = embed_share * done as f64 / total.max(1) as f64;
        let event = pass_progress(progress, Phase::Teacher, within, (done, total), embed_started);
        progress.observer.on_event(&event);
    };
    let stop = || cancel.reason().is_some();
    let callbacks = TrainCallbacks {
        progress: &step_progress,
        should_stop: &stop,
        embed_progress: &embed_progress,
    };
    let (teacher, report) =
        TransformerTeacher::train(&dir, &data, &train_config, device, &callbacks)
            .map_err(|e| transformer_error(e, cancel))?;

    for epoch in &report.epochs {
        progress.observer.on_event(&TrainEvent::Epoch(EpochReport {
            phase: Phase::Teacher,
            epoch: epoch.epoch,
            loss: LossTerms { total: epoch.train_loss, ce: epoch.train_loss, distill: 0.0 },
            valid_accuracy: epoch.valid_accuracy.unwrap_or(0.0),
            valid_macro_f1: 0.0,
            agreement: None,
            seconds: epoch.seconds,
            examples_per_second: labels.len() as f64 / epoch.seconds.max(1e-9),
            best: epoch.epoch == report.best_epoch,
        }));
    }
    let seconds = report.load_seconds + report.embed_seconds + report.train_seconds;
    progress.observer.on_event(&TrainEvent::PhaseFinished { phase: Phase::Teacher, seconds });
    Ok(Teacher::Transformer { teacher: Box::new(teacher), report })
}
