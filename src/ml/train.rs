//! The training loop of one phase (teacher or student), resumable from checkpoints.
//!
//! Per epoch: 1. length-grouped batches in a seeded order, 2. per batch: forward, loss,
//! backward, clipped AdamW step, progress, cancellation check, 3. validation, best-epoch
//! bookkeeping and early stopping, 4. an atomic checkpoint. At the end, the best epoch's
//! weights are put back into the model.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::ml::batch::{length_grouped_batches, sorted_batches, Batch};
use crate::ml::checkpoint::{PhaseDir, PhaseState};
use crate::ml::config::{DistillConfig, TrainingConfig};
use crate::ml::loss::{distillation_loss, masked_cross_entropy};
use crate::ml::metrics::{agreement, Metrics};
use crate::ml::model::{argmax_rows, Classifier, Mode};
use crate::ml::optim::{AdamW, AdamWParams};
use crate::ml::pipeline::TrainError;
use crate::ml::progress::{
    CancelToken, EpochReport, LossTerms, Observer, Phase, Progress, TrainEvent,
};
use crate::ml::rng::Rng;

/// Tokenized rows of a phase.
pub struct PhaseData<'a> {
    /// Token ids of every training row.
    pub seqs: &'a [Vec<u32>],
    /// Class index of every training row, `None` when unlabelled.
    pub labels: &'a [Option<usize>],
    /// The rows this phase trains on.
    pub rows: Vec<usize>,
    /// The teacher's logits `(N, C)` for every training row, for the student phase.
    pub soft_targets: Option<&'a Tensor>,
    /// Token ids of the validation rows.
    pub valid_seqs: &'a [Vec<u32>],
    /// Class index of each validation row.
    pub valid_labels: &'a [usize],
    /// The teacher's predictions on the validation rows, for agreement.
    pub valid_teacher: Option<&'a [usize]>,
    /// Label names, by class index.
    pub label_names: &'a [String],
}

/// How a phase trains.
pub struct PhaseSpec<'a> {
    /// Which phase.
    pub phase: Phase,
    /// Number of epochs.
    pub epochs: usize,
    /// Optimizer and loop settings.
    pub training: &'a TrainingConfig,
    /// The student's loss; `None` trains on labels alone.
    pub distill: Option<&'a DistillConfig>,
    /// The job's seed.
    pub seed: u64,
}

/// Reports progress of the whole job: maps a phase's own progress to the job's.
pub struct JobProgress<'a> {
    /// Receives the events.
    pub observer: &'a dyn Observer,
    /// Fraction of the job done when this phase starts.
    pub start: f64,
    /// Fraction of the job this phase accounts for.
    pub share: f64,
    /// When the job (this run of it) started.
    pub clock: Instant,
}

impl JobProgress<'_> {
    /// The job's fraction done and its estimated seconds left, when this phase is
    /// `within` (0 to 1) done.
    pub fn at(&self, within: f64) -> (f64, f64) {
        let fraction = self.start + self.share * within.clamp(0.0, 1.0);
        let elapsed = self.clock.elapsed().as_secs_f64();
        let eta = if fraction > 0.0 { elapsed / fraction * (1.0 - fraction) } else { 0.0 };
        (fraction, eta)
    }

    /// The part of this phase from `start` to `start + share` (both within it), for a
    /// phase made of several passes.
    pub fn part(&self, start: f64, share: f64) -> Self {
        Self { start: self.start + self.share * start, share: self.share * share, ..*self }
    }
}

/// What a finished phase reports.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    /// The kept epoch.
    pub best_epoch: usize,
    /// Seconds spent training.
    pub seconds: f64,
    /// Per-epoch reports.
    pub history: Vec<EpochReport>,
}

/// Trains `model` for one phase, resuming from `dir` when it holds a checkpoint.
///
/// # Errors
/// [`TrainError::NonFinite`] when the loss is NaN or infinite, [`TrainError::Stopped`]
/// when `cancel` fires (the last epoch's checkpoint stays), I/O and tensor errors.
pub fn train_phase(
    model: &Classifier,
    data: &PhaseData<'_>,
    spec: &PhaseSpec<'_>,
    dir: &PhaseDir,
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<PhaseOutcome, TrainError> {
    let device = model.tensors()[0].1.device().clone();
    let vars = model.vars();
    let params = AdamWParams {
        learning_rate: spec.training.learning_rate,
        weight_decay: spec.training.weight_decay,
        ..Default::default()
    };
    let mut optimizer = AdamW::new(vars.clone(), params)?;
    let mut state = resume(model, &mut optimizer, dir, &device)?;
    let mut best = match &state.best_file {
        Some(file) => Some(named(&dir.load(file, &device)?)),
        None => None,
    };

    let lengths: Vec<usize> = data.seqs.iter().map(Vec::len).collect();
    while !state.finished && state.epoch < spec.epochs {
        let epoch = state.epoch + 1;
        let report =
            run_epoch(model, &mut optimizer, data, spec, epoch, &lengths, progress, cancel)?;
        state.seconds += report.seconds;
        state.epoch = epoch;
        let improved = report.valid_accuracy > state.best_accuracy;
        if improved {
            state.best_epoch = epoch;
            state.best_accuracy = report.valid_accuracy;
            state.stale_epochs = 0;
            best = Some(snapshot(model)?);
        } else {
            state.stale_epochs += 1;
        }
        let patience = spec.training.patience;
        state.finished = epoch == spec.epochs || (patience > 0 && state.stale_epochs >= patience);
        state.history.push(EpochReport { best: improved, ..report.clone() });
        progress.observer.on_event(&TrainEvent::Epoch(EpochReport { best: improved, ..report }));
        save_checkpoint(model, &optimizer, dir, &mut state, improved.then_some(&best))?;
        let event =
            TrainEvent::Checkpoint { phase: spec.phase, epoch, dir: dir.path().to_path_buf() };
        progress.observer.on_event(&event);
    }

    if let Some(best) = &best {
        restore(&vars, best)?;
    }
    Ok(PhaseOutcome {
        best_epoch: state.best_epoch,
        seconds: state.seconds,
        history: state.history,
    })
}

fn resume(
    model: &Classifier,
    optimizer: &mut AdamW,
    dir: &PhaseDir,
    device: &Device,
) -> Result<PhaseState, TrainError> {
    let Some(state) = dir.load_state()? else {
        return Ok(PhaseState { best_accuracy: -1.0, ..Default::default() });
    };
    if let Some(file) = &state.weights_file {
        let tensors = dir.load(file, device)?;
        restore(&model.vars(), &named(&tensors))?;
        optimizer.load_state(&tensors)?;
    }
    Ok(state)
}

fn save_checkpoint(
    model: &Classifier,
    optimizer: &AdamW,
    dir: &PhaseDir,
    state: &mut PhaseState,
    best: Option<&Option<Vec<(String, Tensor)>>>,
) -> Result<(), TrainError> {
    let mut tensors = model.tensors().to_vec();
    tensors.extend(optimizer.state()?);
    let file = format!("weights-{}.safetensors", state.epoch);
    dir.save(&file, &tensors)?;
    state.weights_file = Some(file);
    if let Some(Some(best)) = best {
        let file = format!("best-{}.safetensors", state.epoch);
        dir.save(&file, best)?;
        state.best_file = Some(file);
    }
    dir.commit(state)
}

fn named(tensors: &std::collections::HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("adam."))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn snapshot(model: &Classifier) -> Result<Vec<(String, Tensor)>, TrainError> {
    model.tensors().iter().map(|(n, t)| Ok((n.clone(), t.detach().copy()?))).collect()
}

fn restore(
    vars: &[(String, candle_core::Var)],
    tensors: &[(String, Tensor)],
) -> Result<(), TrainError> {
    for (name, var) in vars {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks `{name}`")))?;
        var.set(&t.1)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_epoch(
    model: &Classifier,
    optimizer: &mut AdamW,
    data: &PhaseData<'_>,
    spec: &PhaseSpec<'_>,
    epoch: usize,
    lengths: &[usize],
    progress: &JobProgress<'_>,
    cancel: &CancelToken,
) -> Result<EpochReport, TrainError> {
    let phase_name = format!("{:?}", spec.phase);
    let mut order_rng = Rng::derive(spec.seed, &phase_name, epoch as u64);
    let mut dropout_rng = Rng::derive(spec.seed, &format!("{phase_name}-dropout"), epoch as u64);
    let batches =
        length_grouped_batches(lengths, &data.rows, spec.training.batch_size, &mut order_rng);
    let device = model.tensors()[0].1.device().clone();
    let started = Instant::now();
    let mut sums = LossTerms::default();
    let mut rows_seen = 0usize;
    let mut last_report = Instant::now();

    for (step, rows) in batches.iter().enumerate() {
        if let Some(reason) = cancel.reason() {
            return Err(TrainError::Stopped(reason));
        }
        let terms = train_step(model, optimizer, data, spec, rows, &device, &mut dropout_rng)?;
        if !terms.total.is_finite() {
            return Err(TrainError::NonFinite {
                phase: spec.phase,
                epoch,
                step: step + 1,
                value: terms.total,
            });
        }
        let n = rows.len() as f64;
        sums.total += terms.total * n;
        sums.ce += terms.ce * n;
        sums.distill += terms.distill * n;
        rows_seen += rows.len();

        let last = step + 1 == batches.len();
        if last || last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            let seen = rows_seen as f64;
            let mean = LossTerms {
                total: sums.total / seen,
                ce: sums.ce / seen,
                distill: sums.distill / seen,
            };
            let within = ((epoch - 1) as f64 + (step + 1) as f64 / batches.len() as f64)
                / spec.epochs as f64;
            let (fraction, eta) = progress.at(within);
            progress.observer.on_event(&TrainEvent::Progress(Progress {
                phase: spec.phase,
                epoch,
                epochs: spec.epochs,
                step: step + 1,
                steps: batches.len(),
                loss: mean,
                examples_per_second: seen / started.elapsed().as_secs_f64().max(1e-9),
                eta_seconds: eta,
                fraction,
            }));
        }
    }

    let seconds = started.elapsed().as_secs_f64();
    let seen = rows_seen.max(1) as f64;
    let (valid, preds) = evaluate(
        model,
        data.valid_seqs,
        data.valid_labels,
        data.label_names,
        spec.training.eval_batch_size,
    )?;
    Ok(EpochReport {
        phase: spec.phase,
        epoch,
        loss: LossTerms {
            total: sums.total / seen,
            ce: sums.ce / seen,
            distill: sums.distill / seen,
        },
        valid_accuracy: valid.accuracy,
        valid_macro_f1: valid.macro_f1,
        agreement: data.valid_teacher.map(|t| agreement(&preds, t)),
        seconds,
        examples_per_second: seen / seconds.max(1e-9),
        best: false,
    })
}

struct StepTerms {
    total: f64,
    ce: f64,
    distill: f64,
}

fn train_step(
    model: &Classifier,
    optimizer: &mut AdamW,
    data: &PhaseData<'_>,
    spec: &PhaseSpec<'_>,
    rows: &[usize],
    device: &Device,
    dropout_rng: &mut Rng,
) -> Result<StepTerms, TrainError> {
    let seqs: Vec<&[u32]> = rows.iter().map(|&i| data.seqs[i].as_slice()).collect();
    let batch = Batch::from_sequences(&seqs, device)?;
    let labels: Vec<u32> = rows.iter().map(|&i| data.labels[i].unwrap_or(0) as u32).collect();
    let mask: Vec<f32> =
        rows.iter().map(|&i| if data.labels[i].is_some() { 1.0 } else { 0.0 }).collect();
    let dtype = model.tensors()[0].1.dtype();
    let labels = Tensor::from_vec(labels, rows.len(), device)?;
    let mask = Tensor::from_vec(mask, rows.len(), device)?.to_dtype(dtype)?;

    let lookup = model.lookup(&batch)?;
    let logits = model.forward_looked_up(&batch, &lookup, Mode::Train(dropout_rng))?;
    let (total, ce, distill) = match (spec.distill, data.soft_targets) {
        (Some(config), Some(soft)) => {
            let index: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
            let teacher = soft.index_select(&Tensor::from_vec(index, rows.len(), device)?, 0)?;
            let parts = distillation_loss(&logits, &teacher, &labels, &mask, config)?;
            (parts.total, Some(parts.ce), Some(parts.distill))
        }
        _ => (masked_cross_entropy(&logits, &labels, &mask)?, None, None),
    };

    let grads = total.backward()?;
    lookup.step(optimizer, &grads, spec.training.clip_norm)?;
    let read =
        |t: &Tensor| -> Result<f64, TrainError> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let total_value = read(&total)?;
    Ok(StepTerms {
        total: total_value,
        ce: ce.as_ref().map(read).transpose()?.unwrap_or(total_value),
        distill: distill.as_ref().map(read).transpose()?.unwrap_or(0.0),
    })
}

/// Logits `(N, C)` of every sequence, in order, computed in length-sorted batches.
///
/// # Errors
/// On tensor errors.
pub fn predict_logits(
    model: &Classifier,
    seqs: &[Vec<u32>],
    batch_size: usize,
) -> Result<Tensor, TrainError> {
    predict_logits_until(model, seqs, batch_size, &CancelToken::new())
}

/// [`predict_logits`] that checks `cancel` before each batch.
///
/// # Errors
/// On tensor errors, or [`TrainError::Stopped`] when `cancel` is stopped.
pub fn predict_logits_until(
    model: &Classifier,
    seqs: &[Vec<u32>],
    batch_size: usize,
    cancel: &CancelToken,
) -> Result<Tensor, TrainError> {
    let device = model.tensors()[0].1.device().clone();
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut parts = Vec::new();
    let mut order = Vec::with_capacity(seqs.len());
    for rows in sorted_batches(&lengths, batch_size) {
        if let Some(reason) = cancel.reason() {
            return Err(TrainError::Stopped(reason));
        }
        let batch_seqs: Vec<&[u32]> = rows.iter().map(|&i| seqs[i].as_slice()).collect();
        let batch = Batch::from_sequences(&batch_seqs, &device)?;
        parts.push(model.forward(&batch, Mode::Eval)?.detach());
        order.extend(rows);
    }
    if parts.is_empty() {
        return Ok(Tensor::zeros((0, model.classes()), DType::F32, &device)?);
    }
    let sorted = Tensor::cat(&parts, 0)?;
    // Put rows back in input order: position `order[k]` holds sorted row `k`.
    let mut inverse = vec![0u32; order.len()];
    for (k, &row) in order.iter().enumerate() {
        inverse[row] = k as u32;
    }
    let n = inverse.len();
    Ok(sorted.index_select(&Tensor::from_vec(inverse, n, &device)?, 0)?)
}

/// Metrics of `model` on labelled rows, and its predicted class of each row.
///
/// # Errors
/// On tensor errors.
pub fn evaluate(
    model: &Classifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    names: &[String],
    batch_size: usize,
) -> Result<(Metrics, Vec<usize>), TrainError> {
    let preds = argmax_rows(&predict_logits(model, seqs, batch_size)?)?;
    Ok((Metrics::compute(names, labels, &preds), preds))
}
