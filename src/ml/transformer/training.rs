//! The training loop of the transformer teacher: epochs of shuffled mini-batches over a
//! [`Trainee`] (the head alone on fixed embeddings, or encoder and head end to end), with a
//! stop check between batches and the weights of the best validation epoch kept.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::encoder::{EmbedHooks, PretrainedEncoder};
use super::head::LinearHead;
use super::teacher::{EpochReport, TrainCallbacks, TrainReport, TransformerTrainConfig};
use super::{Result, TransformerError};
use crate::ml::augment::SplitMix64;

/// One model being trained, as seen by [`run_epochs`].
pub(super) trait Trainee {
    /// One optimizer step on the training rows `batch`; returns the batch loss.
    fn step(&mut self, batch: &[usize]) -> Result<f64>;
    /// Accuracy on the validation rows, `None` when there are none.
    fn valid_accuracy(&self) -> Result<Option<f64>>;
    /// Copies of the trained weights.
    fn snapshot(&self) -> Result<Vec<Tensor>>;
    /// Sets the trained weights back to a snapshot.
    fn restore(&self, snapshot: &[Tensor]) -> Result<()>;
}

/// The head alone, on fixed embeddings.
pub(super) struct FrozenTrainee<'a> {
    pub(super) head: &'a LinearHead,
    pub(super) optimizer: AdamW,
    pub(super) train_x: Tensor,
    pub(super) train_y: Tensor,
    pub(super) valid_x: Tensor,
    pub(super) valid_labels: &'a [u32],
}

impl Trainee for FrozenTrainee<'_> {
    fn step(&mut self, batch: &[usize]) -> Result<f64> {
        let index = index_tensor(batch, self.train_x.device())?;
        let xs = self.train_x.index_select(&index, 0)?;
        let ys = self.train_y.index_select(&index, 0)?;
        let loss = candle_nn::loss::cross_entropy(&self.head.forward(&xs)?, &ys)?;
        self.optimizer.backward_step(&loss)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    }

    fn valid_accuracy(&self) -> Result<Option<f64>> {
        accuracy(&self.head.forward(&self.valid_x)?, self.valid_labels)
    }

    fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.head.snapshot()
    }

    fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        self.head.restore(snapshot)
    }
}

/// Encoder and head, end to end on token ids.
pub(super) struct FineTuneTrainee<'a> {
    pub(super) encoder: &'a PretrainedEncoder,
    pub(super) head: &'a LinearHead,
    pub(super) encoder_optimizer: AdamW,
    pub(super) head_optimizer: AdamW,
    pub(super) all_vars: Vec<Var>,
    pub(super) train_ids: Vec<Vec<u32>>,
    pub(super) train_labels: &'a [u32],
    pub(super) valid_ids: Vec<Vec<u32>>,
    pub(super) valid_labels: &'a [u32],
    pub(super) embed_batch_size: usize,
    pub(super) hooks: EmbedHooks<'a>,
}

impl Trainee for FineTuneTrainee<'_> {
    fn step(&mut self, batch: &[usize]) -> Result<f64> {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| self.train_ids[i].as_slice()).collect();
        let labels: Vec<u32> = batch.iter().map(|&i| self.train_labels[i]).collect();
        let ys = Tensor::new(labels.as_slice(), self.encoder.device())?;

        let logits = self.head.forward(&self.encoder.forward_pooled(&seqs)?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
        let grads = loss.backward()?;
        self.encoder_optimizer.step(&grads)?;
        self.head_optimizer.step(&grads)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    }

    fn valid_accuracy(&self) -> Result<Option<f64>> {
        let pooled =
            self.encoder.embed_tokens(&self.valid_ids, self.embed_batch_size, &self.hooks)?;
        accuracy(&self.head.forward(&pooled)?, self.valid_labels)
    }

    fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.all_vars.iter().map(|v| v.as_tensor().copy()).collect::<Result<_, _>>()?)
    }

    fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for (var, saved) in self.all_vars.iter().zip(snapshot) {
            var.set(saved)?;
        }
        Ok(())
    }
}

/// Runs the epochs, keeping the weights of the epoch with the best validation accuracy (the
/// last epoch when there is no validation set).
pub(super) fn run_epochs(
    trainee: &mut dyn Trainee,
    n_train: usize,
    config: &TransformerTrainConfig,
    callbacks: &TrainCallbacks<'_>,
) -> Result<TrainReport> {
    let start = Instant::now();
    let mut rng = SplitMix64::new(config.seed);
    let mut order: Vec<usize> = (0..n_train).collect();
    let steps = n_train.div_ceil(config.batch_size);
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut best: Option<(usize, f64, Vec<Tensor>)> = None;

    for epoch in 1..=config.epochs {
        let epoch_start = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (step, batch) in order.chunks(config.batch_size).enumerate() {
            if (callbacks.should_stop)() {
                return Err(TransformerError::Canceled);
            }
            let loss = trainee.step(batch)?;
            loss_sum += loss;
            (callbacks.progress)(epoch, step + 1, steps, loss);
        }

        let valid_accuracy = trainee.valid_accuracy()?;
        let train_loss = loss_sum / steps as f64;
        tracing::info!(epoch, train_loss, valid_accuracy, "teacher epoch done");
        if let Some(acc) = valid_accuracy {
            if best.as_ref().is_none_or(|(_, best_acc, _)| acc > *best_acc) {
                best = Some((epoch, acc, trainee.snapshot()?));
            }
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        epochs.push(EpochReport { epoch, train_loss, valid_accuracy, seconds });
    }

    let (best_epoch, best_valid_accuracy) = match best {
        Some((epoch, acc, snapshot)) => {
            trainee.restore(&snapshot)?;
            (epoch, Some(acc))
        }
        None => (config.epochs, None),
    };
    Ok(TrainReport {
        mode: config.mode,
        epochs,
        best_epoch,
        best_valid_accuracy,
        load_seconds: 0.0,
        embed_seconds: 0.0,
        embed_texts_per_s: 0.0,
        train_seconds: start.elapsed().as_secs_f64(),
    })
}

/// An AdamW optimizer over `vars`.
pub(super) fn adamw(vars: Vec<Var>, lr: f64, weight_decay: f64) -> Result<AdamW> {
    Ok(AdamW::new(vars, ParamsAdamW { lr, weight_decay, ..ParamsAdamW::default() })?)
}

/// Row indices as a u32 tensor.
fn index_tensor(rows: &[usize], device: &Device) -> Result<Tensor> {
    let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(Tensor::new(rows.as_slice(), device)?)
}

/// Share of rows whose arg-max logit is the label; `None` for no rows.
fn accuracy(logits: &Tensor, labels: &[u32]) -> Result<Option<f64>> {
    if labels.is_empty() {
        return Ok(None);
    }
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(Some(correct as f64 / labels.len() as f64))
}
