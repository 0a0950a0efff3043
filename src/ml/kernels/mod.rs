//! Speed-critical CPU kernels of the training core: recurrent layers as single ops, and
//! the element loops of the fused AdamW step (`adam.rs`, used by [`crate::ml::optim`]).
//!
//! For inference (and for training off the CPU) the model code projects the inputs of
//! every step with one matrix product (`xs_proj = x @ W_ih^T`, shape `(B, T, G*H)`, both
//! directions side by side through [`project_directions`]; `b_ih` joins `b_hh` where the
//! cell allows, else it is added there) and hands the recurrence to [`recurrent_layer`].
//! On the CPU with `f32`/`f64` that is a fused Candle custom op (`cpu_op.rs`) running the
//! time loop and a hand-written backward pass over the whole sequence; anywhere else
//! (CUDA, other dtypes) it is [`recurrent_layer_reference`], the same computation in
//! plain tensor ops stepped in time, which also serves as the test oracle.
//! [`recurrent_layer_inference`] skips everything only training needs.
//! [`bidirectional_layer`] runs both directions of a layer as one op, optionally on two
//! threads. [`layer_train`] is what training on the CPU uses: projection and recurrence
//! of a whole layer in one op, so the projection never becomes a tensor of the autograd
//! graph. [`add_bias`] is `broadcast_add` of a bias with a fast backward pass.
//!
//! Speed notes: rows are sorted by length so each step is one matrix product over the
//! rows still running (`schedule.rs`); products use the `gemm` crate on the calling
//! thread; element-wise loops use a fast `f32` sigmoid/tanh and run with AVX2 when the CPU
//! has it (`simd.rs`). Large buffers are allocated per call, so the binary should use a
//! caching allocator (mimalloc) rather than glibc's, which unmaps and re-faults them.
//!
//! Semantics shared by all of them (gate order as PyTorch: LSTM i, f, g, o; GRU r, z, n):
//! - every row starts from zero state; row `b` has `lengths[b]` real steps, `1..=T`;
//! - forward direction reads steps `0..len`, `reverse` reads `len-1` down to `0`, so a
//!   reverse layer starts at each row's own last real token;
//! - the output `(B, T, H)` holds the hidden state of every real step and exactly 0 at
//!   padded positions `t >= len`, from which no gradient flows.

mod activation;
pub(crate) mod adam;
pub(crate) mod adam_op;
mod bias;
mod bidirectional;
mod cell;
mod cpu_op;
mod gemm;
mod gru;
mod layer;
mod lstm;
mod projection;
mod reference;
mod rnn;
mod schedule;
mod sequence;
mod simd;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use bias::add_bias;
pub use bidirectional::{bidirectional_layer, bidirectional_layer_inference};
pub use layer::{layer_train, pack_recurrent, trains_fused};
pub use projection::project_directions;
pub use reference::recurrent_layer_reference;

use crate::ml::config::CellKind;
use cpu_op::SequenceOp;

/// Bad arguments to a recurrent kernel, or a broken internal state.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The tensor shapes do not fit one layer of this cell.
    #[error(
        "shapes do not fit a {cell:?} layer with {directions} direction(s): xs_proj \
         {xs_proj:?} (want B, T, D*G*H), w_hh {w_hh:?} (want [D,] G*H, H), b_hh {b_hh:?} \
         (want [D,] G*H), G = {gates}, D = {directions}"
    )]
    Shape {
        /// The cell asked for.
        cell: CellKind,
        /// Gate blocks of that cell.
        gates: usize,
        /// Directions of the layer (1 or 2).
        directions: usize,
        /// Shape of `xs_proj`.
        xs_proj: Vec<usize>,
        /// Shape of `w_hh`.
        w_hh: Vec<usize>,
        /// Shape of `b_hh`.
        b_hh: Vec<usize>,
    },
    /// There is not one length per batch row.
    #[error("{lengths} lengths given for a batch of {batch} rows")]
    LengthCount {
        /// Lengths given.
        lengths: usize,
        /// Batch rows.
        batch: usize,
    },
    /// A row length is 0 or longer than the padded time axis.
    #[error("row {row} has length {length}, outside 1..={steps}")]
    Length {
        /// Batch row.
        row: usize,
        /// Its length.
        length: usize,
        /// Padded time steps `T`.
        steps: usize,
    },
    /// The three tensors do not share one dtype.
    #[error("dtypes differ: xs_proj {xs_proj:?}, w_hh {w_hh:?}, b_hh {b_hh:?}")]
    DType {
        /// Dtype of `xs_proj`.
        xs_proj: DType,
        /// Dtype of `w_hh`.
        w_hh: DType,
        /// Dtype of `b_hh`.
        b_hh: DType,
    },
    /// A fused op received a strided tensor (a bug: callers make inputs contiguous).
    #[error("fused recurrent op got a non-contiguous tensor")]
    NotContiguous,
    /// A fused op received a tensor that is not on the CPU.
    #[error("fused recurrent op got a tensor that is not on the cpu")]
    NotCpu,
    /// The backward pass ran without a saved forward state.
    #[error("fused recurrent op has no saved forward state")]
    NoForwardState,
    /// A thread panicked while holding the saved forward state.
    #[error("saved forward state of a fused recurrent op is poisoned")]
    Poisoned,
    /// A bias does not fit the rows it is added to.
    #[error("bias of shape {bias:?} does not fit rows of shape {xs:?} (or dtypes differ)")]
    BiasShape {
        /// Shape of the rows.
        xs: Vec<usize>,
        /// Shape of the bias.
        bias: Vec<usize>,
    },
    /// The thread running one direction of a bidirectional layer panicked.
    #[error("the worker thread of a bidirectional layer panicked")]
    WorkerPanicked,
}

impl From<KernelError> for candle_core::Error {
    fn from(err: KernelError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// One direction of a recurrent layer over a padded batch, with gradients.
///
/// - `xs_proj`: `(B, T, G*H)`, `x_t @ W_ih^T + b_ih` for every step;
/// - `w_hh`: `(G*H, H)`; `b_hh`: `(G*H)`; `G = cell.gates()`;
/// - `lengths`: real length of each row, `1 <= len <= T`; `reverse` reads each row from
///   its last real token back to the first.
///
/// Returns `(B, T, H)`, the hidden state at every real step and 0 at padded ones. See the
/// module docs for the shared semantics. On the CPU with `f32`/`f64` this is the fused op
/// (when none of the inputs is tracked by autograd it also skips saving activations);
/// elsewhere it is [`recurrent_layer_reference`].
///
/// # Errors
/// A [`KernelError`] (wrapped) when shapes, lengths or dtypes do not fit; Candle errors.
pub fn recurrent_layer(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> candle_core::Result<Tensor> {
    check_args((xs_proj, w_hh, b_hh), cell, lengths, 1)?;
    if !is_fused(xs_proj) {
        return recurrent_layer_reference(xs_proj, w_hh, b_hh, cell, lengths, reverse);
    }
    let keep = xs_proj.track_op() || w_hh.track_op() || b_hh.track_op();
    run_fused(xs_proj, w_hh, b_hh, cell, lengths, reverse, keep)
}

/// [`recurrent_layer`] for inference: same arguments and output, but the result is a
/// plain tensor outside the autograd graph, and the fused op keeps no activations.
///
/// Use it whenever no gradient is wanted (evaluation, serving): Candle's custom ops cannot
/// tell on their own that a tracked weight (a `Var`) will never be differentiated.
///
/// # Errors
/// As [`recurrent_layer`].
pub fn recurrent_layer_inference(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> candle_core::Result<Tensor> {
    check_args((xs_proj, w_hh, b_hh), cell, lengths, 1)?;
    if !is_fused(xs_proj) {
        return recurrent_layer_reference(xs_proj, w_hh, b_hh, cell, lengths, reverse)
            .map(|out| out.detach());
    }
    run_fused(xs_proj, w_hh, b_hh, cell, lengths, reverse, false)
}

/// Whether the fused CPU ops handle this input (dtypes were checked to agree).
fn is_fused(xs_proj: &Tensor) -> bool {
    matches!(xs_proj.device(), Device::Cpu) && matches!(xs_proj.dtype(), DType::F32 | DType::F64)
}

/// Applies the fused op; `keep` saves activations and records the op for autograd.
fn run_fused(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
    keep: bool,
) -> candle_core::Result<Tensor> {
    let (xs, w, b) = (xs_proj.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    let lengths = Arc::clone(lengths);
    match (xs.dtype(), keep) {
        (DType::F64, true) => {
            xs.apply_op3(&w, &b, SequenceOp::<f64>::new(cell, lengths, reverse, true))
        }
        (DType::F64, false) => {
            xs.apply_op3_no_bwd(&w, &b, &SequenceOp::<f64>::new(cell, lengths, reverse, false))
        }
        (_, true) => xs.apply_op3(&w, &b, SequenceOp::<f32>::new(cell, lengths, reverse, true)),
        (_, false) => {
            xs.apply_op3_no_bwd(&w, &b, &SequenceOp::<f32>::new(cell, lengths, reverse, false))
        }
    }
}

/// Checks shapes, lengths and dtypes of a layer with 1 or 2 `directions`.
///
/// One direction: `xs_proj (B, T, G*H)`, `w_hh (G*H, H)`, `b_hh (G*H)`. Two:
/// `xs_proj (B, T, 2*G*H)`, `w_hh (2, G*H, H)`, `b_hh (2, G*H)`.
fn check_args(
    (xs_proj, w_hh, b_hh): (&Tensor, &Tensor, &Tensor),
    cell: CellKind,
    lengths: &[usize],
    directions: usize,
) -> Result<(), KernelError> {
    let gates = cell.gates();
    let (x, w, b) = (xs_proj.dims(), w_hh.dims(), b_hh.dims());
    let stacked = |d: &[usize], rank| d.len() == rank + usize::from(directions == 2);
    let fits = x.len() == 3
        && stacked(w, 2)
        && stacked(b, 1)
        && (directions == 1 || (w[0] == 2 && b[0] == 2))
        && {
            let (w, b) = (&w[directions - 1..], &b[directions - 1..]);
            w[0] == gates * w[1] && x[2] == directions * w[0] && b[0] == w[0]
        };
    if !fits {
        let (xs_proj, w_hh, b_hh) = (x.to_vec(), w.to_vec(), b.to_vec());
        return Err(KernelError::Shape { cell, gates, directions, xs_proj, w_hh, b_hh });
    }

    check_lengths(lengths, x[0], x[1])?;

    let (dx, dw, db) = (xs_proj.dtype(), w_hh.dtype(), b_hh.dtype());
    if dx != dw || dx != db {
        return Err(KernelError::DType { xs_proj: dx, w_hh: dw, b_hh: db });
    }
    Ok(())
}

/// One length per batch row, each in `1..=steps`.
fn check_lengths(lengths: &[usize], batch: usize, steps: usize) -> Result<(), KernelError> {
    if lengths.len() != batch {
        return Err(KernelError::LengthCount { lengths: lengths.len(), batch });
    }
    if let Some((row, &length)) = lengths.iter().enumerate().find(|(_, &l)| l == 0 || l > steps) {
        return Err(KernelError::Length { row, length, steps });
    }
    Ok(())
}
