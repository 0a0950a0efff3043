//! The recurrent text classifier: embedding -> recurrent layers -> pooling -> dropout -> linear.
//!
//! Parameters are named as they are saved in safetensors files (renaming breaks old
//! checkpoints): `embedding` `(V, E)`; per layer `l` and direction `d` (`fwd`, `bwd`):
//! `layers.{l}.{d}.w_ih` `(G*H, in)`, `.b_ih` `(G*H)`, `.w_hh` `(G*H, H)`, `.b_hh` `(G*H)`;
//! `head.weight` `(C, D)` and `head.bias` `(C)`. Gates follow PyTorch's order, so weights
//! can be compared with a PyTorch model of the same shape.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Error, Result, Tensor, Var, D};

use crate::ml::batch::Batch;
use crate::ml::config::{CellKind, ModelConfig, Pooling};
use crate::ml::kernels;
use crate::ml::rng::Rng;

/// Whether a forward pass trains (dropout on, graph recorded) or only predicts.
pub enum Mode<'a> {
    /// Training: dropout masks come from this generator.
    Train(&'a mut Rng),
    /// Evaluation: no dropout, the fast inference kernels.
    Eval,
}

struct Direction {
    w_ih: Tensor,
    b_ih: Tensor,
    w_hh: Tensor,
    b_hh: Tensor,
}

/// A recurrent classifier with its weights.
pub struct Classifier {
    config: ModelConfig,
    vocab_size: usize,
    classes: usize,
    embedding: Tensor,
    layers: Vec<Vec<Direction>>,
    head_weight: Tensor,
    head_bias: Tensor,
    named: Vec<(String, Tensor)>,
    /// Frozen models only: per direction of layer 0, `embedding @ w_ih^T + b_ih` for every
    /// vocabulary entry `(V, G*H)`, so that inference gathers projected rows instead of
    /// embedding rows and skips the input product (see [`projection_tables`]).
    projected: Option<Vec<Tensor>>,
}

impl Classifier {
    /// A new classifier with PyTorch's initialisation, drawn from `seed`.
    ///
    /// Embeddings ~ N(0, 1); recurrent weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)); the
    /// output layer ~ U(-1/sqrt(D), 1/sqrt(D)). The parameters are trainable [`Var`]s.
    ///
    /// # Errors
    /// When a tensor cannot be created on `device`.
    pub fn new(
        config: &ModelConfig,
        vocab_size: usize,
        classes: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = Rng::derive(seed, "init", 0);
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(config, vocab_size, classes) {
            let n: usize = shape.iter().product();
            let bound = init_bound(&name, config, &shape);
            let values: Vec<f64> = (0..n)
                .map(|_| match bound {
                    None => rng.normal(),
                    Some(b) => (2.0 * rng.next_f64() - 1.0) * b,
                })
                .collect();
            let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            tensors.insert(name, Var::from_tensor(&t)?.as_tensor().clone());
        }
        Self::assemble(config, vocab_size, classes, tensors)
    }

    /// A classifier from saved tensors, checked against the shapes of `config`.
    ///
    /// With `trainable`, the parameters become [`Var`]s (copied); without, they are plain
    /// tensors and no gradient is ever computed for them (a frozen teacher, or serving).
    ///
    /// # Errors
    /// When a tensor is missing or has the wrong shape.
    pub fn from_tensors(
        config: &ModelConfig,
        vocab_size: usize,
        classes: usize,
        mut tensors: HashMap<String, Tensor>,
        trainable: bool,
    ) -> Result<Self> {
        let mut kept = HashMap::new();
        for (name, shape) in parameter_shapes(config, vocab_size, classes) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
            if t.dims() != shape.as_slice() {
                let msg = format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.dims());
                return Err(candle_core::Error::Msg(msg));
            }
            let t = if trainable { Var::from_tensor(&t)?.as_tensor().clone() } else { t.detach() };
            kept.insert(name, t);
        }
        let mut model = Self::assemble(config, vocab_size, classes, kept)?;
        if !trainable {
            model.projected = projection_tables(&model)?;
        }
        Ok(model)
    }

    fn assemble(
        config: &ModelConfig,
        vocab_size: usize,
        classes: usize,
        mut t: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> =
            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| candle_core::Error::Msg(format!("missing `{name}`")))
        };
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let mut dirs = Vec::new();
            for d in directions(config) {
                let p = format!("layers.{l}.{d}");
                dirs.push(Direction {
                    w_ih: take(&format!("{p}.w_ih"))?,
                    b_ih: take(&format!("{p}.b_ih"))?,
                    w_hh: take(&format!("{p}.w_hh"))?,
                    b_hh: take(&format!("{p}.b_hh"))?,
                });
            }
            layers.push(dirs);
        }
        Ok(Self {
            config: config.clone(),
            vocab_size,
            classes,
            embedding: take(EMBEDDING)?,
            layers,
            head_weight: take("head.weight")?,
            head_bias: take("head.bias")?,
            named,
            projected: None,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Vocabulary size the embedding was built for.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Parameters by saved name, sorted by name.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.named
    }

    /// The trainable parameters by name (empty for a frozen classifier).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.named
            .iter()
            .filter(|(_, t)| t.is_variable())
            .filter_map(|(n, t)| Var::from_tensor(t).ok().map(|v| (n.clone(), v)))
            .collect()
    }

    /// Number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.named.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Logits `(B, C)` of a batch.
    ///
    /// # Errors
    /// When a tensor operation fails (e.g. an id outside the vocabulary).
    pub fn forward(&self, batch: &Batch, mode: Mode<'_>) -> Result<Tensor> {
        self.forward_from(batch, None, mode)
    }

    /// The embedding rows of a batch as a leaf of their own, for training with
    /// [`Classifier::forward_looked_up`]: the gradient then arrives as rows (for
    /// [`crate::ml::optim::AdamW::step_with_rows`]) instead of as a dense
    /// `(V, E)` table that Candle builds, zero-fills and accumulates at every step.
    ///
    /// # Errors
    /// When an id is outside the vocabulary.
    pub fn lookup(&self, batch: &Batch) -> Result<Lookup> {
        let ids = batch.ids.flatten_all()?;
        let rows = Var::from_tensor(&self.embedding.index_select(&ids, 0)?.detach())?;
        Ok(Lookup { rows, ids: ids.to_vec1()? })
    }

    /// [`Classifier::forward`] on embedding rows from [`Classifier::lookup`] of the same
    /// batch; equal to it in value.
    ///
    /// # Errors
    /// When a tensor operation fails or `lookup` does not fit the batch.
    pub fn forward_looked_up(
        &self,
        batch: &Batch,
        lookup: &Lookup,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        if lookup.ids.len() != batch.ids.elem_count() {
            let msg = format!(
                "{} looked-up rows for a batch of {:?}",
                lookup.ids.len(),
                batch.ids.dims()
            );
            return Err(Error::Msg(msg));
        }
        self.forward_from(batch, Some(lookup.rows.as_tensor()), mode)
    }

    /// Logits, with the embedding rows of the batch given or looked up here.
    fn forward_from(
        &self,
        batch: &Batch,
        mut embedded: Option<&Tensor>,
        mut mode: Mode<'_>,
    ) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let ids = batch.ids.flatten_all()?;
        let mut xs: Option<Tensor> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = match (&self.projected, &mode) {
                (Some(tables), Mode::Eval) if l == 0 => {
                    let rows = tables
                        .iter()
                        .map(|table| table.index_select(&ids, 0))
                        .collect::<Result<Vec<_>>>()?;
                    let bias = join_directions(layer.iter().map(|dir| dir.b_hh.clone()), true)?;
                    let proj = match rows.as_slice() {
                        [one] => one.clone(),
                        _ => Tensor::cat(&rows, 1)?,
                    };
                    LayerInput { proj: proj.reshape((b, t, ()))?, bias }
                }
                _ => {
                    let input = match (xs.take(), embedded.take()) {
                        (Some(previous), _) => self.dropout(&previous, &mut mode)?,
                        (None, Some(rows)) => rows.clone(),
                        (None, None) => self.embedding.index_select(&ids, 0)?,
                    };
                    let flat = input.reshape((b * t, ()))?;
                    if matches!(mode, Mode::Train(_)) && kernels::trains_fused(&flat) {
                        xs = Some(self.train_layer(&flat, layer, &batch.lengths, (b, t))?);
                        continue;
                    }
                    self.project(&flat, layer, (b, t), &mode)?
                }
            };
            xs = Some(self.recurrent(layer, input, &batch.lengths, &mode)?);
        }

        let xs = xs.ok_or_else(|| candle_core::Error::Msg("a model without layers".into()))?;
        let pooled = self.pool(&xs, &batch.lengths)?;
        let pooled = self.dropout(&pooled, &mut mode)?;
        pooled.matmul(&self.head_weight.t()?)?.broadcast_add(&self.head_bias)
    }

    /// Runs one layer's directions over their input projections: `(B, T, D*H)`.
    ///
    /// The two directions of a bidirectional layer go through one op, which runs them on
    /// two threads when Candle may use more than one (the recurrence is sequential in
    /// time, so this is the parallelism the small per-step products leave).
    fn recurrent(
        &self,
        layer: &[Direction],
        input: LayerInput,
        lengths: &Arc<Vec<usize>>,
        mode: &Mode<'_>,
    ) -> Result<Tensor> {
        let cell = self.config.cell;
        let train = matches!(mode, Mode::Train(_));
        if let [fwd, rev] = layer {
            let w_hh = Tensor::stack(&[&fwd.w_hh, &rev.w_hh], 0)?;
            let parallel = candle_core::utils::get_num_threads() > 1;
            let run = if train {
                kernels::bidirectional_layer
            } else {
                kernels::bidirectional_layer_inference
            };
            return run(&input.proj, &w_hh, &input.bias, cell, lengths, parallel);
        }
        let run = if train { kernels::recurrent_layer } else { kernels::recurrent_layer_inference };
        run(&input.proj, &layer[0].w_hh, &input.bias, cell, lengths, false)
    }

    /// One layer for training on the CPU, over inputs `(B*T, in)`: `(B, T, D*H)`.
    ///
    /// Projection and recurrence run as one op ([`kernels::layer_train`]), which keeps
    /// the `(B, T, D*G*H)` projection out of the autograd graph.
    fn train_layer(
        &self,
        flat: &Tensor,
        layer: &[Direction],
        lengths: &Arc<Vec<usize>>,
        (b, t): (usize, usize),
    ) -> Result<Tensor> {
        let w_ih = Tensor::stack(&layer.iter().map(|dir| &dir.w_ih).collect::<Vec<_>>(), 0)?;
        let rec: Vec<_> = layer.iter().map(|dir| (&dir.w_hh, &dir.b_ih, &dir.b_hh)).collect();
        let rec = kernels::pack_recurrent(&rec)?;
        kernels::layer_train(flat, &w_ih, &rec, self.config.cell, lengths, (b, t))
    }

    /// The input projections of one layer's directions for inputs `(B*T, in)`, side by
    /// side, and the bias the recurrence adds at every step.
    ///
    /// For the LSTM and tanh cells `b_ih` and `b_hh` add to the same pre-activation, so
    /// `b_ih` joins `b_hh` in the kernel, and the products go through
    /// [`kernels::project_directions`], which writes the `(B, T, D*G*H)` layout the
    /// kernels read: no bias pass, no concatenation, and none of their gradient buffers
    /// (together 16% of a teacher training step). The GRU scales the candidate gate's
    /// `b_hh` by the reset gate, so its `b_ih` stays here, in one product for both
    /// directions with their weights stacked.
    fn project(
        &self,
        flat: &Tensor,
        layer: &[Direction],
        (b, t): (usize, usize),
        mode: &Mode<'_>,
    ) -> Result<LayerInput> {
        if self.config.cell != CellKind::Gru {
            let weights: Vec<&Tensor> = layer.iter().map(|dir| &dir.w_ih).collect();
            let biases =
                layer.iter().map(|dir| &dir.b_ih + &dir.b_hh).collect::<Result<Vec<_>>>()?;
            let proj = kernels::project_directions(flat, &weights, (b, t))?;
            return Ok(LayerInput { proj, bias: join_directions(biases.into_iter(), true)? });
        }

        let train = matches!(mode, Mode::Train(_));
        let w_ih = join_directions(layer.iter().map(|dir| dir.w_ih.clone()), false)?;
        let b_ih = join_directions(layer.iter().map(|dir| dir.b_ih.clone()), false)?;
        let proj = input_projection(flat, &w_ih, &b_ih, train)?.reshape((b, t, ()))?;
        Ok(LayerInput {
            proj,
            bias: join_directions(layer.iter().map(|dir| dir.b_hh.clone()), true)?,
        })
    }

    /// Pools `(B, T, D)` layer outputs into `(B, D)`; padded positions hold zeros.
    fn pool(&self, xs: &Tensor, lengths: &Arc<Vec<usize>>) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let device = xs.device();
        match self.config.pooling {
            Pooling::Last => {
                let flat = xs.reshape((b * t, d))?;
                let last: Vec<u32> =
                    lengths.iter().enumerate().map(|(i, &n)| (i * t + n - 1) as u32).collect();
                let last = flat.index_select(&Tensor::from_vec(last, b, device)?, 0)?;
                if !self.config.bidirectional {
                    return Ok(last);
                }
                // The backward direction ends at the first token.
                let h = self.config.hidden_size;
                let first: Vec<u32> = (0..b).map(|i| (i * t) as u32).collect();
                let first = flat.index_select(&Tensor::from_vec(first, b, device)?, 0)?;
                Tensor::cat(&[last.narrow(1, 0, h)?, first.narrow(1, h, h)?], 1)
            }
            Pooling::Mean => {
                let lens: Vec<f32> = lengths.iter().map(|&n| n as f32).collect();
                let lens = Tensor::from_vec(lens, (b, 1), device)?.to_dtype(xs.dtype())?;
                xs.sum(1)?.broadcast_div(&lens)
            }
            Pooling::Max => {
                let mask: Vec<f32> = lengths
                    .iter()
                    .flat_map(|&n| (0..t).map(move |i| if i < n { 0.0 } else { -1e30 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (b, t, 1), device)?.to_dtype(xs.dtype())?;
                xs.broadcast_add(&mask)?.max(1)
            }
        }
    }

    fn dropout(&self, xs: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        let p = self.config.dropout;
        let Mode::Train(rng) = mode else { return Ok(xs.clone()) };
        if p <= 0.0 {
            return Ok(xs.clone());
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> =
            (0..xs.elem_count()).map(|_| if rng.next_f64() < p { 0.0 } else { scale }).collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

/// A batch's embedding rows as a trainable leaf, from [`Classifier::lookup`].
pub struct Lookup {
    /// `(B*T, E)` rows, one per position of the batch.
    pub rows: Var,
    /// The table row of each, `B*T` ids.
    pub ids: Vec<u32>,
}

impl Lookup {
    /// The gradient of the rows in `grads`, as the optimizer takes it for the table
    /// named [`EMBEDDING`] (none when the loss did not reach them).
    pub fn row_gradient<'a>(
        &'a self,
        grads: &'a candle_core::backprop::GradStore,
    ) -> Option<crate::ml::optim::RowGradient<'a>> {
        let rows = grads.get(self.rows.as_tensor())?;
        Some(crate::ml::optim::RowGradient { name: EMBEDDING, ids: &self.ids, rows })
    }

    /// The optimizer step of a training step that looked its embeddings up with this:
    /// [`crate::ml::optim::AdamW::step_with_rows`] with the rows' gradient.
    ///
    /// # Errors
    /// As [`crate::ml::optim::AdamW::step_with_rows`].
    pub fn step(
        &self,
        optimizer: &mut crate::ml::optim::AdamW,
        grads: &candle_core::backprop::GradStore,
        max_norm: f64,
    ) -> Result<f64> {
        let rows: Vec<_> = self.row_gradient(grads).into_iter().collect();
        optimizer.step_with_rows(grads, &rows, max_norm)
    }
}

/// Saved name of the embedding table.
pub const EMBEDDING: &str = "embedding";

/// What one layer's recurrence runs on: the input projections of its directions side by
/// side `(B, T, D*G*H)` and the bias added at every step (`(G*H)`, or `(2, G*H)` for two
/// directions).
struct LayerInput {
    proj: Tensor,
    bias: Tensor,
}

/// One direction's tensor as it is, or two directions' joined: stacked on a new first axis
/// (`stack`), else concatenated along the first axis.
fn join_directions(mut parts: impl Iterator<Item = Tensor>, stack: bool) -> Result<Tensor> {
    let first = parts.next().ok_or_else(|| Error::Msg("a layer without directions".into()))?;
    let Some(second) = parts.next() else { return Ok(first) };
    if stack {
        Tensor::stack(&[first, second], 0)
    } else {
        Tensor::cat(&[first, second], 0)
    }
}

/// Projected embedding tables of a frozen model's first layer, when they are small.
///
/// Row `v` of a table is `embedding[v] @ w_ih^T + b_ih`, which is what inference would
/// compute for token `v` at any position; gathering it replaces the embedding gather, the
/// input product and the bias addition of layer 0 (a fifth of a single-text prediction of
/// the default student in a profile). Values agree with the plain path up to float
/// rounding of the product. Built only when the tables hold at most four times as many
/// numbers as the embedding (the default student: 3x; the teacher would need 16x).
fn projection_tables(model: &Classifier) -> Result<Option<Vec<Tensor>>> {
    let Some(first) = model.layers.first() else { return Ok(None) };
    let width: usize = first.iter().map(|dir| dir.w_ih.dim(0)).sum::<Result<usize>>()?;
    if width > 4 * model.config.embedding_dim {
        return Ok(None);
    }
    let tables = first
        .iter()
        .map(|dir| input_projection(&model.embedding, &dir.w_ih, &dir.b_ih, false))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(tables))
}

/// `xs @ w^T + bias` for `xs` `(N, in)`, `w` `(G*H, in)`, `bias` `(G*H)`: `(N, G*H)`.
///
/// For training, the bias enters as the product `ones(N, 1) @ bias(1, G*H)`, whose rows are
/// exactly `bias`, so the result is bit for bit that of `broadcast_add`. The point is the
/// backward pass: Candle's gradient of a broadcast sums the `(N, G*H)` gradient over its
/// rows with a slow strided reduction (about 8% of a student training step in a profile),
/// while the gradient of the product is one matrix product `ones^T @ grad`.
fn input_projection(xs: &Tensor, w: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
    let proj = xs.matmul(&w.t()?)?;
    if !train {
        return proj.broadcast_add(bias);
    }
    let ones = Tensor::ones((xs.dim(0)?, 1), xs.dtype(), xs.device())?;
    proj + ones.matmul(&bias.unsqueeze(0)?)?
}

fn directions(config: &ModelConfig) -> &'static [&'static str] {
    if config.bidirectional {
        &["fwd", "bwd"]
    } else {
        &["fwd"]
    }
}

/// Names and shapes of every parameter of a configuration.
pub fn parameter_shapes(
    config: &ModelConfig,
    vocab: usize,
    classes: usize,
) -> Vec<(String, Vec<usize>)> {
    let gh = config.cell.gates() * config.hidden_size;
    let mut shapes = vec![(EMBEDDING.to_string(), vec![vocab, config.embedding_dim])];
    let dirs = directions(config);
    for l in 0..config.layers {
        let input = if l == 0 { config.embedding_dim } else { config.hidden_size * dirs.len() };
        for d in dirs {
            let p = format!("layers.{l}.{d}");
            shapes.push((format!("{p}.w_ih"), vec![gh, input]));
            shapes.push((format!("{p}.b_ih"), vec![gh]));
            shapes.push((format!("{p}.w_hh"), vec![gh, config.hidden_size]));
            shapes.push((format!("{p}.b_hh"), vec![gh]));
        }
    }
    shapes.push(("head.weight".to_string(), vec![classes, config.output_dim()]));
    shapes.push(("head.bias".to_string(), vec![classes]));
    shapes
}

/// Half-width of the uniform initialisation, or `None` for the normal one (embeddings).
fn init_bound(name: &str, config: &ModelConfig, _shape: &[usize]) -> Option<f64> {
    if name == EMBEDDING {
        None
    } else if name.starts_with("head.") {
        Some(1.0 / (config.output_dim() as f64).sqrt())
    } else {
        Some(1.0 / (config.hidden_size as f64).sqrt())
    }
}

/// Class indices of the largest logit of each row.
///
/// # Errors
/// When the logits cannot be read back.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let idx = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(idx.into_iter().map(|i| i as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::config::CellKind;

    fn config(cell: CellKind, bidirectional: bool, pooling: Pooling) -> ModelConfig {
        ModelConfig {
            cell,
            embedding_dim: 6,
            hidden_size: 5,
            layers: 2,
            bidirectional,
            dropout: 0.0,
            pooling,
        }
    }

    /// A text's logits do not depend on the padding of its batch (every cell, direction
    /// and pooling).
    #[test]
    fn logits_are_padding_invariant() {
        for cell in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
            for bi in [false, true] {
                for pooling in [Pooling::Last, Pooling::Mean, Pooling::Max] {
                    let cfg = config(cell, bi, pooling);
                    let model = Classifier::new(&cfg, 20, 3, 1, DType::F32, &Device::Cpu).unwrap();
                    let short = [3u32, 4, 5];
                    let long = [7u32, 8, 9, 10, 11, 12, 13];
                    let alone = Batch::from_sequences(&[&short], &Device::Cpu).unwrap();
                    let padded = Batch::from_sequences(&[&long, &short], &Device::Cpu).unwrap();
                    let a = model.forward(&alone, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
                    let p = model.forward(&padded, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
                    for (x, y) in a[0].iter().zip(&p[1]) {
                        assert!((x - y).abs() < 1e-5, "{cell:?} bi={bi} {pooling:?}: {x} vs {y}");
                    }
                }
            }
        }
    }

    /// The logits of `model` on `batch` through plain tensor ops only: Candle products with
    /// both biases where PyTorch puts them, the reference recurrence stepped in time, and
    /// last-state pooling (the oracle for the fused path).
    fn plain_logits(model: &Classifier, batch: &Batch) -> Tensor {
        let (b, t) = batch.ids.dims2().unwrap();
        let h = model.config.hidden_size;
        let mut xs = model.embedding.index_select(&batch.ids.flatten_all().unwrap(), 0).unwrap();
        let mut out = None;
        for layer in &model.layers {
            let dirs: Vec<Tensor> = layer
                .iter()
                .enumerate()
                .map(|(d, dir)| {
                    let proj = xs.matmul(&dir.w_ih.t().unwrap()).unwrap();
                    let proj = proj.broadcast_add(&dir.b_ih).unwrap().reshape((b, t, ())).unwrap();
                    let (cell, lengths) = (model.config.cell, &batch.lengths);
                    kernels::recurrent_layer_reference(
                        &proj,
                        &dir.w_hh,
                        &dir.b_hh,
                        cell,
                        lengths,
                        d == 1,
                    )
                    .unwrap()
                })
                .collect();
            let layer_out = Tensor::cat(&dirs, 2).unwrap();
            xs = layer_out.reshape((b * t, ())).unwrap();
            out = Some(layer_out);
        }
        let out = out.unwrap();
        let rows: Vec<Tensor> = batch
            .lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let row = out.get(i).unwrap();
                let last = row.get(n - 1).unwrap().narrow(0, 0, h).unwrap();
                match model.config.bidirectional {
                    true => Tensor::cat(&[last, row.get(0).unwrap().narrow(0, h, h).unwrap()], 0),
                    false => Ok(last),
                }
                .unwrap()
            })
            .collect();
        let pooled = Tensor::stack(&rows, 0).unwrap();
        pooled
            .matmul(&model.head_weight.t().unwrap())
            .unwrap()
            .broadcast_add(&model.head_bias)
            .unwrap()
    }

    /// The fused training path (joined biases, the projection op, the fused recurrence)
    /// gives the logits and parameter gradients of plain tensor ops, for every cell and
    /// direction, on a padded batch.
    #[test]
    fn training_forward_matches_plain_ops_in_logits_and_gradients() {
        for cell in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
            for bi in [false, true] {
                let cfg = config(cell, bi, Pooling::Last);
                let model = Classifier::new(&cfg, 20, 3, 7, DType::F64, &Device::Cpu).unwrap();
                let seqs: [&[u32]; 3] = [&[1, 2, 3, 4, 5, 6], &[7, 8], &[9, 10, 11, 12]];
                let batch = Batch::from_sequences(&seqs, &Device::Cpu).unwrap();
                let weights = Tensor::arange(0.0, 9.0, &Device::Cpu).unwrap().reshape((3, 3));
                let weights = weights.unwrap().cos().unwrap();

                let mut rng = Rng::new(1);
                let fused = model.forward(&batch, Mode::Train(&mut rng)).unwrap();
                let plain = plain_logits(&model, &batch);
                let diff = |a: &Tensor, b: &Tensor| -> f64 {
                    (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar()
                        .unwrap()
                };
                assert!(diff(&fused, &plain) < 1e-10, "{cell:?} bi={bi}: logits differ");

                let grads = |logits: &Tensor| {
                    (logits * &weights).unwrap().sum_all().unwrap().backward().unwrap()
                };
                let (g_fused, g_plain) = (grads(&fused), grads(&plain));
                for (name, var) in model.vars() {
                    let (a, b) = (g_fused.get(var.as_tensor()), g_plain.get(var.as_tensor()));
                    let d = diff(a.expect("fused gradient"), b.expect("plain gradient"));
                    assert!(d < 1e-10, "{cell:?} bi={bi}: gradient of {name} differs by {d}");
                }
            }
        }
    }

    /// Training on looked-up rows gives the logits of the plain forward pass, and the
    /// rows' gradient, summed per id, is the dense gradient of the embedding table.
    #[test]
    fn looked_up_rows_carry_the_embedding_gradient() {
        let cfg = config(CellKind::Gru, true, Pooling::Mean);
        let model = Classifier::new(&cfg, 20, 3, 7, DType::F64, &Device::Cpu).unwrap();
        let seqs: [&[u32]; 3] = [&[1, 2, 3, 2], &[7, 8], &[9, 1, 11]];
        let batch = Batch::from_sequences(&seqs, &Device::Cpu).unwrap();
        let weights = Tensor::arange(0.0, 9.0, &Device::Cpu).unwrap().reshape((3, 3)).unwrap();
        let loss = |logits: &Tensor| (logits * &weights.cos().unwrap()).unwrap().sum_all();

        let plain = model.forward(&batch, Mode::Train(&mut Rng::new(1))).unwrap();
        let lookup = model.lookup(&batch).unwrap();
        let rows = model.forward_looked_up(&batch, &lookup, Mode::Train(&mut Rng::new(1)));
        let rows = rows.unwrap();
        let diff = (&plain - &rows).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "logits differ");

        let dense = loss(&plain).unwrap().backward().unwrap();
        let dense = dense.get(&model.embedding).unwrap().to_vec2::<f64>().unwrap();
        let grads = loss(&rows).unwrap().backward().unwrap();
        assert!(grads.get(&model.embedding).is_none(), "the table itself got a gradient");
        let got = lookup.row_gradient(&grads).unwrap();
        let mut scattered = vec![vec![0.0; cfg.embedding_dim]; 20];
        for (&id, row) in got.ids.iter().zip(got.rows.to_vec2::<f64>().unwrap()) {
            scattered[id as usize].iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
        for (d, s) in dense.iter().flatten().zip(scattered.iter().flatten()) {
            assert!((d - s).abs() < 1e-12, "dense {d} against rows {s}");
        }
    }

    /// The training form of the input projection gives the same values and the same
    /// gradients (within float rounding) as the plain `broadcast_add` form.
    #[test]
    fn input_projection_matches_broadcast_add_in_values_and_gradients() {
        let dev = Device::Cpu;
        let var = |shape: (usize, usize), seed: u64| {
            let mut rng = Rng::new(seed);
            let n = shape.0 * shape.1;
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let (xs, w, bias) = (var((37, 6), 1), var((12, 6), 2), var((1, 12), 3));
        let bias_t = bias.as_tensor().flatten_all().unwrap();
        let weights = var((37, 12), 4).as_tensor().detach();
        let run = |train: bool| {
            let proj = input_projection(xs.as_tensor(), w.as_tensor(), &bias_t, train).unwrap();
            let grads = (&proj * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            (proj.flatten_all().unwrap(), [grad(&xs), grad(&w), grad(&bias)])
        };
        let ((fast, fast_grads), (plain, plain_grads)) = (run(true), run(false));
        assert_eq!(fast.to_vec1::<f32>().unwrap(), plain.to_vec1::<f32>().unwrap());
        for (a, b) in fast_grads.iter().zip(&plain_grads) {
            let diff = (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "gradient differs by {diff}");
        }
    }

    /// A frozen model predicts through projected embedding tables; its logits match the
    /// trainable model's plain path (padded batch, both directions).
    #[test]
    fn projected_tables_give_the_logits_of_the_plain_path() {
        let cfg = ModelConfig {
            embedding_dim: 8,
            hidden_size: 4,
            ..config(CellKind::Gru, true, Pooling::Last)
        };
        let model = Classifier::new(&cfg, 30, 3, 5, DType::F32, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = model.tensors().iter().cloned().collect();
        let frozen = Classifier::from_tensors(&cfg, 30, 3, tensors, false).unwrap();
        assert!(frozen.projected.is_some() && model.projected.is_none());
        let seqs: [&[u32]; 3] = [&[1, 2, 3, 29, 7], &[4], &[9, 8, 0]];
        let batch = Batch::from_sequences(&seqs, &Device::Cpu).unwrap();
        let plain = model.forward(&batch, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
        let fast = frozen.forward(&batch, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
        for (p, f) in plain.iter().flatten().zip(fast.iter().flatten()) {
            assert!((p - f).abs() < 1e-5, "{p} vs {f}");
        }
        let wide = ModelConfig { hidden_size: 16, ..cfg };
        let model = Classifier::new(&wide, 30, 3, 5, DType::F32, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = model.tensors().iter().cloned().collect();
        let frozen = Classifier::from_tensors(&wide, 30, 3, tensors, false).unwrap();
        assert!(frozen.projected.is_none(), "tables over 4x the embedding are not built");
    }

    #[test]
    fn saved_tensors_rebuild_the_same_model() {
        let cfg = config(CellKind::Lstm, true, Pooling::Last);
        let model = Classifier::new(&cfg, 20, 3, 9, DType::F32, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = model.tensors().iter().cloned().collect();
        let back = Classifier::from_tensors(&cfg, 20, 3, tensors, false).unwrap();
        let batch = Batch::from_sequences(&[&[1u32, 2, 3][..], &[4u32][..]], &Device::Cpu).unwrap();
        let a = model.forward(&batch, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
        let b = back.forward(&batch, Mode::Eval).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        assert!(back.vars().is_empty(), "a frozen model has no trainable variables");
        assert_eq!(model.vars().len(), model.tensors().len());
    }
}
