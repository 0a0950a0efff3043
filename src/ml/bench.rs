//! The fixed micro-benchmark workload, run through the project's own model code.
//!
//! It mirrors the PyTorch reference (`shared/bench/torch_microbench.py`): random token ids
//! in `[0, 20000)`, batch 64, 32 tokens, 3 classes; student = embedding 64 + GRU 64,
//! teacher = embedding 128 + 2-layer bidirectional LSTM 256; Adam with learning rate 1e-3
//! and no clipping; 20 warm-up steps, then 200 timed steps; inference on 200 batches of 64
//! and 1000 single rows.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::ml::batch::Batch;
use crate::ml::config::{CellKind, ModelConfig, Pooling};
use crate::ml::loss::masked_cross_entropy;
use crate::ml::model::{argmax_rows, Classifier, Mode};
use crate::ml::optim::{AdamW, AdamWParams};
use crate::ml::rng::Rng;

/// Sizes of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Vocabulary size.
    pub vocab: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Classes.
    pub classes: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed training steps and batch-64 inference batches.
    pub steps: usize,
    /// Timed single-row predictions.
    pub single_steps: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self { vocab: 20000, batch: 64, seq_len: 32, classes: 3, warmup: 20, steps: 200, single_steps: 1000 }
    }
}

/// Figures of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    /// Parameters.
    pub params: usize,
    /// Training rows per second.
    pub train_examples_per_s: f64,
    /// Milliseconds per training step.
    pub train_ms_per_step: f64,
    /// Inference rows per second at batch 64.
    pub infer_b64_examples_per_s: f64,
    /// Inference rows per second at batch 1.
    pub infer_b1_examples_per_s: f64,
    /// Milliseconds per single-row prediction.
    pub infer_b1_ms_per_example: f64,
    /// Loss of the last training step (a sanity check that it trains).
    pub final_train_loss: f64,
}

/// The student of the reference workload.
pub fn student_config() -> ModelConfig {
    ModelConfig {
        cell: CellKind::Gru,
        embedding_dim: 64,
        hidden_size: 64,
        layers: 1,
        bidirectional: false,
        dropout: 0.0,
        pooling: Pooling::Last,
    }
}

/// The teacher of the reference workload.
pub fn teacher_config() -> ModelConfig {
    ModelConfig {
        cell: CellKind::Lstm,
        embedding_dim: 128,
        hidden_size: 256,
        layers: 2,
        bidirectional: true,
        dropout: 0.0,
        pooling: Pooling::Last,
    }
}

/// Runs the workload for one model.
///
/// # Errors
/// On tensor errors.
pub fn run_model(config: &ModelConfig, w: &Workload, seed: u64) -> candle_core::Result<ModelFigures> {
    let device = Device::Cpu;
    let mut rng = Rng::new(seed);
    let total = w.warmup + w.steps;
    let batches: Vec<(Batch, Tensor)> = (0..total)
        .map(|_| {
            let ids: Vec<u32> = (0..w.batch * w.seq_len).map(|_| rng.below(w.vocab) as u32).collect();
            let labels: Vec<u32> = (0..w.batch).map(|_| rng.below(w.classes) as u32).collect();
            let batch = Batch {
                ids: Tensor::from_vec(ids, (w.batch, w.seq_len), &device)?,
                lengths: Arc::new(vec![w.seq_len; w.batch]),
            };
            Ok((batch, Tensor::from_vec(labels, w.batch, &device)?))
        })
        .collect::<candle_core::Result<_>>()?;
    let model = Classifier::new(config, w.vocab, w.classes, seed, DType::F32, &device)?;
    let mut optimizer = AdamW::new(model.vars(), AdamWParams::default())?;
    let mask = Tensor::ones(w.batch, DType::F32, &device)?;
    let mut dropout = Rng::new(seed);

    let mut step = |i: usize| -> candle_core::Result<f64> {
        let (batch, labels) = &batches[i];
        let logits = model.forward(batch, Mode::Train(&mut dropout))?;
        let loss = masked_cross_entropy(&logits, labels, &mask)?;
        optimizer.step(&loss.backward()?, 0.0)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    };
    for i in 0..w.warmup {
        step(i)?;
    }
    let started = Instant::now();
    let mut last_loss = 0.0;
    for i in w.warmup..total {
        last_loss = step(i)?;
    }
    let train_s = started.elapsed().as_secs_f64();

    let infer = |batch: &Batch| -> candle_core::Result<Vec<usize>> { argmax_rows(&model.forward(batch, Mode::Eval)?) };
    for (batch, _) in &batches[..w.warmup] {
        infer(batch)?;
    }
    let started = Instant::now();
    for (batch, _) in &batches[w.warmup..] {
        infer(batch)?;
    }
    let infer64_s = started.elapsed().as_secs_f64();

    let singles: Vec<Batch> = batches
        .iter()
        .map(|(b, _)| {
            Ok(Batch { ids: b.ids.narrow(0, 0, 1)?.contiguous()?, lengths: Arc::new(vec![w.seq_len]) })
        })
        .collect::<candle_core::Result<_>>()?;
    for batch in singles.iter().take(w.warmup) {
        infer(batch)?;
    }
    let started = Instant::now();
    for i in 0..w.single_steps {
        infer(&singles[i % singles.len()])?;
    }
    let infer1_s = started.elapsed().as_secs_f64();

    Ok(ModelFigures {
        params: model.parameter_count(),
        train_examples_per_s: (w.steps * w.batch) as f64 / train_s,
        train_ms_per_step: 1000.0 * train_s / w.steps as f64,
        infer_b64_examples_per_s: (w.steps * w.batch) as f64 / infer64_s,
        infer_b1_examples_per_s: w.single_steps as f64 / infer1_s,
        infer_b1_ms_per_example: 1000.0 * infer1_s / w.single_steps as f64,
        final_train_loss: last_loss,
    })
}
