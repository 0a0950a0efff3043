//! Both directions of a bidirectional recurrent layer as one op.
//!
//! The directions of a layer are independent until their outputs are concatenated, so
//! the fused op runs them on two threads (forward and backward pass alike) when asked.
//! Inputs and output use the stacked layout of one matrix product for both directions:
//! `xs_proj = x @ [W_ih_fwd; W_ih_rev]^T + [b_ih_fwd; b_ih_rev]`, and the output row of
//! each position is the forward state followed by the reverse state, as in PyTorch.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::cpu_op::BidirectionalOp;
use super::{check_args, is_fused, recurrent_layer_reference};
use crate::ml::config::CellKind;

/// Both directions of a recurrent layer over a padded batch, with gradients.
///
/// - `xs_proj`: `(B, T, 2*G*H)`, the forward direction's input projections in the first
///   `G*H` columns and the reverse direction's in the last;
/// - `w_hh`: `(2, G*H, H)` and `b_hh`: `(2, G*H)`, forward direction first;
/// - `lengths`: real length of each row, `1 <= len <= T`;
/// - `parallel`: run the two directions on two threads (leave false when every core is
///   already busy with other work).
///
/// Returns `(B, T, 2*H)`: at every real position the forward state, then the reverse
/// state (which started at the row's last real token); 0 at padded positions. Equal to
/// two [`super::recurrent_layer`] calls concatenated on the last axis.
///
/// # Errors
/// A [`super::KernelError`] (wrapped) when shapes, lengths or dtypes do not fit; Candle
/// errors.
pub fn bidirectional_layer(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    parallel: bool,
) -> candle_core::Result<Tensor> {
    check_args((xs_proj, w_hh, b_hh), cell, lengths, 2)?;
    if !is_fused(xs_proj) {
        return reference((xs_proj, w_hh, b_hh), cell, lengths);
    }
    let keep = xs_proj.track_op() || w_hh.track_op() || b_hh.track_op();
    run_fused((xs_proj, w_hh, b_hh), cell, lengths, keep, parallel)
}

/// [`bidirectional_layer`] for inference: a plain tensor outside the autograd graph, and
/// no activations kept (see [`super::recurrent_layer_inference`]).
///
/// # Errors
/// As [`bidirectional_layer`].
pub fn bidirectional_layer_inference(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    parallel: bool,
) -> candle_core::Result<Tensor> {
    check_args((xs_proj, w_hh, b_hh), cell, lengths, 2)?;
    if !is_fused(xs_proj) {
        return reference((xs_proj, w_hh, b_hh), cell, lengths).map(|out| out.detach());
    }
    run_fused((xs_proj, w_hh, b_hh), cell, lengths, false, parallel)
}

/// The two directions through [`recurrent_layer_reference`], concatenated.
fn reference(
    (xs_proj, w_hh, b_hh): (&Tensor, &Tensor, &Tensor),
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
) -> candle_core::Result<Tensor> {
    let gw = w_hh.dim(1)?;
    let outs = (0..2)
        .map(|d| {
            let xs = xs_proj.narrow(2, d * gw, gw)?;
            recurrent_layer_reference(&xs, &w_hh.get(d)?, &b_hh.get(d)?, cell, lengths, d == 1)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outs, 2)
}

/// Applies the fused op; `keep` saves activations and records the op for autograd.
fn run_fused(
    (xs_proj, w_hh, b_hh): (&Tensor, &Tensor, &Tensor),
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    keep: bool,
    parallel: bool,
) -> candle_core::Result<Tensor> {
    let (xs, w, b) = (xs_proj.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    let lengths = Arc::clone(lengths);
    match (xs.dtype(), keep) {
        (DType::F64, true) => {
            xs.apply_op3(&w, &b, BidirectionalOp::<f64>::new(cell, lengths, true, parallel))
        }
        (DType::F64, false) => {
            let op = BidirectionalOp::<f64>::new(cell, lengths, false, parallel);
            xs.apply_op3_no_bwd(&w, &b, &op)
        }
        (_, true) => {
            xs.apply_op3(&w, &b, BidirectionalOp::<f32>::new(cell, lengths, true, parallel))
        }
        (_, false) => {
            let op = BidirectionalOp::<f32>::new(cell, lengths, false, parallel);
            xs.apply_op3_no_bwd(&w, &b, &op)
        }
    }
}
