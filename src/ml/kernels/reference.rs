//! The recurrent layer in plain Candle tensor ops, stepped in time.
//!
//! Slow but device- and dtype-agnostic, with gradients from Candle's autograd. It is what
//! [`super::recurrent_layer`] runs off the CPU and the oracle the fused op is tested
//! against. Padding is handled by masks: at `t >= len` the state is multiplied by 0, which
//! zeroes the output there and stops any gradient from it. A reverse layer flips the real
//! tokens of every row, runs forward, and flips the outputs back.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::check_args;
use crate::ml::config::CellKind;

/// Same contract as [`super::recurrent_layer`], in plain tensor ops on any device.
///
/// # Errors
/// A [`super::KernelError`] (wrapped) when shapes, lengths or dtypes do not fit; Candle
/// errors.
pub fn recurrent_layer_reference(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> candle_core::Result<Tensor> {
    check_args(xs_proj, w_hh, b_hh, cell, lengths)?;
    if !reverse {
        return run_forward(xs_proj, w_hh, b_hh, cell, lengths);
    }
    let flipped = flip_real_steps(xs_proj, lengths)?;
    let out = run_forward(&flipped, w_hh, b_hh, cell, lengths)?;
    flip_real_steps(&out, lengths)
}

/// Reverses the first `len` steps of every row of a `(B, T, F)` tensor (padding stays).
fn flip_real_steps(xs: &Tensor, lengths: &[usize]) -> candle_core::Result<Tensor> {
    let (batch, steps, width) = xs.dims3()?;
    let index: Vec<u32> = (0..batch)
        .flat_map(|b| {
            let len = lengths[b];
            (0..steps).map(move |t| (b * steps + if t < len { len - 1 - t } else { t }) as u32)
        })
        .collect();
    let index = Tensor::from_vec(index, batch * steps, xs.device())?;
    xs.reshape((batch * steps, width))?.index_select(&index, 0)?.reshape((batch, steps, width))
}

/// The forward direction with masked padding; returns `(B, T, H)`.
fn run_forward(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &[usize],
) -> candle_core::Result<Tensor> {
    let (batch, steps, _) = xs_proj.dims3()?;
    let hidden = w_hh.dim(1)?;
    let w_t = w_hh.t()?;
    let mut h = Tensor::zeros((batch, hidden), xs_proj.dtype(), xs_proj.device())?;
    let mut c = h.clone();
    let mut outs = Vec::with_capacity(steps);

    for t in 0..steps {
        let mask: Vec<u8> = lengths.iter().map(|&len| u8::from(t < len)).collect();
        let mask = Tensor::from_vec(mask, (batch, 1), xs_proj.device())?.to_dtype(xs_proj.dtype())?;
        let xp = xs_proj.narrow(1, t, 1)?.squeeze(1)?;
        let hh = h.matmul(&w_t)?.broadcast_add(b_hh)?;
        let (h_new, c_new) = step(cell, &xp, &hh, &h, &c)?;
        h = h_new.broadcast_mul(&mask)?;
        c = c_new.broadcast_mul(&mask)?;
        outs.push(h.clone());
    }
    Tensor::stack(&outs, 1)
}

/// One cell step from the input part `xp` and recurrent part `hh` (bias included).
fn step(
    cell: CellKind,
    xp: &Tensor,
    hh: &Tensor,
    h: &Tensor,
    c: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let sigmoid = candle_nn::ops::sigmoid;
    match cell {
        CellKind::Rnn => Ok(((xp + hh)?.tanh()?, c.clone())),
        CellKind::Lstm => {
            let g = (xp + hh)?.chunk(4, D::Minus1)?;
            let (i, f, o) = (sigmoid(&g[0])?, sigmoid(&g[1])?, sigmoid(&g[3])?);
            let c = ((f * c)? + (i * g[2].tanh()?)?)?;
            Ok(((o * c.tanh()?)?, c))
        }
        CellKind::Gru => {
            let x = xp.chunk(3, D::Minus1)?;
            let r_h = hh.chunk(3, D::Minus1)?;
            let r = sigmoid(&(&x[0] + &r_h[0])?)?;
            let z = sigmoid(&(&x[1] + &r_h[1])?)?;
            let n = (&x[2] + (r * &r_h[2])?)?.tanh()?;
            let h = (&n + (z * (h - &n)?)?)?;
            Ok((h, c.clone()))
        }
    }
}
