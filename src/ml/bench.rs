//! The fixed micro-benchmark workload, run through the project's own model code.
//!
//! It mirrors the PyTorch reference (`shared/bench/torch_microbench.py`): random token ids
//! in `[0, 20000)`, batch 64, 32 tokens, 3 classes; student = embedding 64 + GRU 64,
//! teacher = embedding 128 + 2-layer bidirectional LSTM 256; Adam with learning rate 1e-3
//! and no clipping; 20 warm-up steps, then 200 timed steps; inference on 200 batches of 64
//! and 1000 single rows. Inference runs on a frozen copy of the trained weights, the way
//! the service and the evaluation load a model.
//!
//! Beside the speeds it counts the matrix-product work of one training step
//! ([`gemm_shapes`]) and can time Candle's matrix product on those shapes
//! ([`measure_gemm`]), so that a report can say what fraction of the machine's product
//! rate the training loop reaches.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
        Self {
            vocab: 20000,
            batch: 64,
            seq_len: 32,
            classes: 3,
            warmup: 20,
            steps: 200,
            single_steps: 1000,
        }
    }
}

/// Which parts of the workload run (a profile of training alone skips inference).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Training steps.
    pub train: bool,
    /// Inference at the full batch size.
    pub infer_batch: bool,
    /// Inference one row at a time.
    pub infer_single: bool,
}

impl Default for Phases {
    fn default() -> Self {
        Self { train: true, infer_batch: true, infer_single: true }
    }
}

/// Figures of one model; a phase that did not run leaves its figures out (`None`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    /// Parameters.
    pub params: usize,
    /// Training rows per second.
    pub train_examples_per_s: Option<f64>,
    /// Milliseconds per training step.
    pub train_ms_per_step: Option<f64>,
    /// Inference rows per second at batch 64.
    pub infer_b64_examples_per_s: Option<f64>,
    /// Inference rows per second at batch 1.
    pub infer_b1_examples_per_s: Option<f64>,
    /// Milliseconds per single-row prediction.
    pub infer_b1_ms_per_example: Option<f64>,
    /// Loss of the last training step (a sanity check that it trains).
    pub final_train_loss: Option<f64>,
    /// Matrix-product arithmetic of one training example, in GFLOP.
    pub train_gemm_gflop_per_example: f64,
    /// Matrix-product arithmetic of one inference example, in GFLOP.
    pub infer_gemm_gflop_per_example: f64,
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
pub fn run_model(
    config: &ModelConfig,
    w: &Workload,
    phases: Phases,
    seed: u64,
) -> candle_core::Result<ModelFigures> {
    let device = Device::Cpu;
    let batches = random_batches(w, seed, &device)?;
    let model = Classifier::new(config, w.vocab, w.classes, seed, DType::F32, &device)?;
    let mut figures = ModelFigures {
        params: model.parameter_count(),
        train_examples_per_s: None,
        train_ms_per_step: None,
        infer_b64_examples_per_s: None,
        infer_b1_examples_per_s: None,
        infer_b1_ms_per_example: None,
        final_train_loss: None,
        train_gemm_gflop_per_example: gflop_per_example(config, w, true),
        infer_gemm_gflop_per_example: gflop_per_example(config, w, false),
    };

    if phases.train {
        let (train_s, loss) = time_training(&model, &batches, w, seed)?;
        figures.train_examples_per_s = Some((w.steps * w.batch) as f64 / train_s);
        figures.train_ms_per_step = Some(1000.0 * train_s / w.steps as f64);
        figures.final_train_loss = Some(loss);
    }
    // Inference runs on a frozen copy of the weights, as served and as evaluated.
    let tensors = model.tensors().iter().map(|(n, t)| (n.clone(), t.detach())).collect();
    let model = Classifier::from_tensors(config, w.vocab, w.classes, tensors, false)?;
    if phases.infer_batch {
        let batch_refs: Vec<&Batch> = batches.iter().map(|(b, _)| b).collect();
        let infer64_s = time_inference(&model, &batch_refs, w.warmup, w.steps)?;
        figures.infer_b64_examples_per_s = Some((w.steps * w.batch) as f64 / infer64_s);
    }
    if phases.infer_single {
        let singles = first_rows(&batches, w.seq_len)?;
        let single_refs: Vec<&Batch> = singles.iter().collect();
        let infer1_s = time_inference(&model, &single_refs, w.warmup, w.single_steps)?;
        figures.infer_b1_examples_per_s = Some(w.single_steps as f64 / infer1_s);
        figures.infer_b1_ms_per_example = Some(1000.0 * infer1_s / w.single_steps as f64);
    }
    Ok(figures)
}

/// One distinct batch (and its labels) per warm-up and timed step, drawn from `seed`.
fn random_batches(
    w: &Workload,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Vec<(Batch, Tensor)>> {
    let mut rng = Rng::new(seed);
    (0..w.warmup + w.steps)
        .map(|_| {
            let n = w.batch * w.seq_len;
            let ids: Vec<u32> = (0..n).map(|_| rng.below(w.vocab) as u32).collect();
            let labels: Vec<u32> = (0..w.batch).map(|_| rng.below(w.classes) as u32).collect();
            let batch = Batch {
                ids: Tensor::from_vec(ids, (w.batch, w.seq_len), device)?,
                lengths: Arc::new(vec![w.seq_len; w.batch]),
            };
            Ok((batch, Tensor::from_vec(labels, w.batch, device)?))
        })
        .collect()
}

/// The first row of every batch, as batches of one.
fn first_rows(batches: &[(Batch, Tensor)], seq_len: usize) -> candle_core::Result<Vec<Batch>> {
    batches
        .iter()
        .map(|(b, _)| {
            let ids = b.ids.narrow(0, 0, 1)?.contiguous()?;
            Ok(Batch { ids, lengths: Arc::new(vec![seq_len]) })
        })
        .collect()
}

/// Seconds of the timed training steps after the warm-up, and the last loss.
fn time_training(
    model: &Classifier,
    batches: &[(Batch, Tensor)],
    w: &Workload,
    seed: u64,
) -> candle_core::Result<(f64, f64)> {
    let device = Device::Cpu;
    let mut optimizer = AdamW::new(model.vars(), AdamWParams::default())?;
    let mask = Tensor::ones(w.batch, DType::F32, &device)?;
    let mut dropout = Rng::new(seed);
    let mut step = |i: usize| -> candle_core::Result<f64> {
        let (batch, labels) = &batches[i];
        let lookup = model.lookup(batch)?;
        let logits = model.forward_looked_up(batch, &lookup, Mode::Train(&mut dropout))?;
        let loss = masked_cross_entropy(&logits, labels, &mask)?;
        lookup.step(&mut optimizer, &loss.backward()?, 0.0)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    };

    for i in 0..w.warmup {
        step(i)?;
    }
    let started = Instant::now();
    let mut last_loss = 0.0;
    for i in w.warmup..w.warmup + w.steps {
        last_loss = step(i)?;
    }
    Ok((started.elapsed().as_secs_f64(), last_loss))
}

/// Seconds of `timed` predictions (cycling through `batches`) after `warmup` untimed ones.
fn time_inference(
    model: &Classifier,
    batches: &[&Batch],
    warmup: usize,
    timed: usize,
) -> candle_core::Result<f64> {
    let infer = |i: usize| -> candle_core::Result<Vec<usize>> {
        argmax_rows(&model.forward(batches[i % batches.len()], Mode::Eval)?)
    };
    for i in 0..warmup {
        infer(i)?;
    }
    let started = Instant::now();
    for i in warmup..warmup + timed {
        infer(i)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One kind of matrix product in a step: `(m, k) @ (k, n)`, run `count` times.
#[derive(Debug, Clone, Serialize)]
pub struct GemmShape {
    /// What the product computes.
    pub label: String,
    /// Rows of the left operand and of the result.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the right operand and of the result.
    pub n: usize,
    /// Times per step.
    pub count: usize,
    /// Whether only training runs it (a backward product).
    pub backward: bool,
}

impl GemmShape {
    /// Floating-point operations of all `count` products (a multiply-add counts 2).
    pub fn flop(&self) -> f64 {
        2.0 * (self.m * self.k * self.n * self.count) as f64
    }
}

/// The matrix products of one training step of `config` on a full batch of `w`.
///
/// Forward: per layer and direction, the input projection of all steps `(B*T, in) @
/// (in, G*H)` and one recurrent product `(B, H) @ (H, G*H)` per step after the first
/// (whose state is zero); the head `(B, D) @ (D, C)`. Backward: the same products
/// transposed, for the input and the weight gradients (the recurrent weight gradient as
/// one product over all steps). Elementwise gate arithmetic is not counted.
pub fn gemm_shapes(config: &ModelConfig, w: &Workload) -> Vec<GemmShape> {
    let (b, t, h) = (w.batch, w.seq_len, config.hidden_size);
    let gh = config.cell.gates() * h;
    let dirs = if config.bidirectional { 2 } else { 1 };
    let shape = |label: &str, m, k, n, count, backward| GemmShape {
        label: label.to_string(),
        m,
        k,
        n,
        count,
        backward,
    };
    let mut shapes = Vec::new();
    for l in 0..config.layers {
        let input = if l == 0 { config.embedding_dim } else { h * dirs };
        let tag = |what: &str| format!("layer {l} {what}");
        shapes.extend([
            shape(&tag("input projection"), b * t, input, gh, dirs, false),
            shape(&tag("recurrent step"), b, h, gh, dirs * (t - 1), false),
            shape(&tag("input gradient"), b * t, gh, input, dirs, true),
            shape(&tag("input weight gradient"), gh, b * t, input, dirs, true),
            shape(&tag("recurrent step gradient"), b, gh, h, dirs * (t - 1), true),
            shape(&tag("recurrent weight gradient"), gh, b * (t - 1), h, dirs, true),
        ]);
    }
    let (d, c) = (config.output_dim(), w.classes);
    shapes.extend([
        shape("head", b, d, c, 1, false),
        shape("head input gradient", b, c, d, 1, true),
        shape("head weight gradient", c, b, d, 1, true),
    ]);
    shapes
}

/// Matrix-product GFLOP per example of a training step (`train`) or of inference.
pub fn gflop_per_example(config: &ModelConfig, w: &Workload, train: bool) -> f64 {
    let flop: f64 =
        gemm_shapes(config, w).iter().filter(|s| train || !s.backward).map(GemmShape::flop).sum();
    flop / w.batch as f64 / 1e9
}

/// GFLOP/s of Candle's `f32` matrix product `(m, k) @ (k, n)` on the CPU, with the
/// thread count Candle was started with, timed for at least `min_time` after a warm-up.
///
/// # Errors
/// On tensor errors.
pub fn measure_gemm(m: usize, k: usize, n: usize, min_time: Duration) -> candle_core::Result<f64> {
    let device = Device::Cpu;
    let lhs = Tensor::rand(-1f32, 1f32, (m, k), &device)?;
    let rhs = Tensor::rand(-1f32, 1f32, (k, n), &device)?;
    for _ in 0..3 {
        lhs.matmul(&rhs)?;
    }
    let started = Instant::now();
    let mut reps = 0usize;
    while reps < 5 || started.elapsed() < min_time {
        lhs.matmul(&rhs)?;
        reps += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(2.0 * (m * k * n * reps) as f64 / seconds / 1e9)
}

/// A shape with its measured rate.
#[derive(Debug, Clone, Serialize)]
pub struct GemmRate {
    /// The shape.
    #[serde(flatten)]
    pub shape: GemmShape,
    /// Measured GFLOP/s of one product of this shape.
    pub gflops: f64,
}

/// How close a model's steps come to the measured matrix-product rate.
#[derive(Debug, Clone, Serialize)]
pub struct GemmReport {
    /// Every product of a training step, with its rate.
    pub shapes: Vec<GemmRate>,
    /// Milliseconds the products of one training step take at the measured rates.
    pub ideal_train_ms_per_step: f64,
    /// Matrix-product GFLOP/s achieved by the training loop (work / wall time).
    pub train_gflops: Option<f64>,
    /// `ideal_train_ms_per_step` over the measured milliseconds per step.
    pub train_gemm_fraction: Option<f64>,
    /// Milliseconds the forward products of one batch take at the measured rates.
    pub ideal_infer_b64_ms_per_batch: f64,
    /// The same fraction for inference at the full batch size.
    pub infer_b64_gemm_fraction: Option<f64>,
}

/// Times every distinct product shape of `config` and sets the rates against `figures`.
///
/// # Errors
/// On tensor errors.
pub fn gemm_report(
    config: &ModelConfig,
    w: &Workload,
    figures: &ModelFigures,
    min_time: Duration,
) -> candle_core::Result<GemmReport> {
    let mut shapes: Vec<GemmRate> = Vec::new();
    for shape in gemm_shapes(config, w) {
        let known = shapes
            .iter()
            .find(|r| (r.shape.m, r.shape.k, r.shape.n) == (shape.m, shape.k, shape.n));
        let gflops = match known {
            Some(rate) => rate.gflops,
            None => measure_gemm(shape.m, shape.k, shape.n, min_time)?,
        };
        shapes.push(GemmRate { shape, gflops });
    }
    let ideal_ms = |train: bool| -> f64 {
        let seconds: f64 = shapes
            .iter()
            .filter(|r| train || !r.shape.backward)
            .map(|r| r.shape.flop() / (r.gflops * 1e9))
            .sum();
        1000.0 * seconds
    };
    let (ideal_train, ideal_infer) = (ideal_ms(true), ideal_ms(false));
    let train_gflops =
        figures.train_examples_per_s.map(|x| x * figures.train_gemm_gflop_per_example);
    let batch_ms = figures.infer_b64_examples_per_s.map(|x| 1000.0 * w.batch as f64 / x);
    Ok(GemmReport {
        shapes,
        ideal_train_ms_per_step: ideal_train,
        train_gflops,
        train_gemm_fraction: figures.train_ms_per_step.map(|ms| ideal_train / ms),
        ideal_infer_b64_ms_per_batch: ideal_infer,
        infer_b64_gemm_fraction: batch_ms.map(|ms| ideal_infer / ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Workload {
        Workload {
            vocab: 50,
            batch: 4,
            seq_len: 5,
            classes: 3,
            warmup: 1,
            steps: 3,
            single_steps: 3,
        }
    }

    /// Counted by hand for the reference student (T = 32, B = 64, E = H = 64, 3 gates):
    /// input projection 2*32*64*192 = 786432 per example, recurrent 31 steps of
    /// 2*64*192 = 761856, head 2*64*3 = 384.
    #[test]
    fn student_forward_flops_match_a_hand_count() {
        let per_example = gflop_per_example(&student_config(), &Workload::default(), false);
        let expected = (786_432.0 + 761_856.0 + 384.0) / 1e9;
        assert!((per_example - expected).abs() < 1e-12, "{per_example} vs {expected}");
        let train = gflop_per_example(&student_config(), &Workload::default(), true);
        assert!((train / per_example - 3.0).abs() < 0.05, "backward is about twice forward");
    }

    #[test]
    fn tiny_workload_reports_every_figure_and_a_finite_loss() {
        let config = ModelConfig { embedding_dim: 8, hidden_size: 6, ..student_config() };
        let figures = run_model(&config, &tiny(), Phases::default(), 3).unwrap();
        for value in [
            figures.train_examples_per_s,
            figures.infer_b64_examples_per_s,
            figures.infer_b1_examples_per_s,
            figures.final_train_loss,
        ] {
            assert!(value.is_some_and(|v| v.is_finite() && v > 0.0), "{figures:?}");
        }
    }

    #[test]
    fn skipped_phases_leave_their_figures_out() {
        let phases = Phases { train: false, infer_batch: true, infer_single: false };
        let config = ModelConfig { embedding_dim: 8, hidden_size: 6, ..teacher_config() };
        let figures = run_model(&config, &tiny(), phases, 3).unwrap();
        assert!(
            figures.train_examples_per_s.is_none() && figures.infer_b1_ms_per_example.is_none()
        );
        assert!(figures.infer_b64_examples_per_s.is_some());
    }

    #[test]
    fn gemm_rate_is_positive() {
        let rate = measure_gemm(16, 8, 12, Duration::from_millis(5)).unwrap();
        assert!(rate.is_finite() && rate > 0.0);
    }
}
