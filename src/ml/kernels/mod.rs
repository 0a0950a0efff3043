//! Temporary stand-in for the recurrent kernels (replaced by the fused CPU op on merge).

use std::sync::Arc;

use candle_core::{Result, Tensor, D};

use crate::ml::config::CellKind;

/// Hidden states of one recurrent layer direction, `(B, T, H)`, zeros past each length.
pub fn recurrent_layer(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> Result<Tensor> {
    recurrent_layer_reference(xs_proj, w_hh, b_hh, cell, lengths, reverse)
}

/// Same as [`recurrent_layer`], for inference.
pub fn recurrent_layer_inference(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> Result<Tensor> {
    recurrent_layer_reference(xs_proj, w_hh, b_hh, cell, lengths, reverse)
}

/// Plain tensor-op version.
pub fn recurrent_layer_reference(
    xs_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
) -> Result<Tensor> {
    let (b, t, _) = xs_proj.dims3()?;
    let h_size = w_hh.dim(1)?;
    let dev = xs_proj.device();
    let mut h = Tensor::zeros((b, h_size), xs_proj.dtype(), dev)?;
    let mut c = h.clone();
    let mut outs = vec![None; t];
    let w_t = w_hh.t()?;
    for step in 0..t {
        let mask: Vec<f32> = lengths
            .iter()
            .map(|&len| {
                let active = if reverse { t - 1 - step < len } else { step < len };
                if active {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let pos = if reverse { t - 1 - step } else { step };
        // For the reverse direction, row b's step at position pos is active when pos < len.
        let mask = Tensor::from_vec(mask, (b, 1), dev)?.to_dtype(xs_proj.dtype())?;
        let xp = xs_proj.narrow(1, pos, 1)?.squeeze(1)?;
        let hh = h.matmul(&w_t)?.broadcast_add(b_hh)?;
        let (h_new, c_new) = match cell {
            CellKind::Rnn => ((xp + hh)?.tanh()?, c.clone()),
            CellKind::Lstm => {
                let g = (xp + hh)?.chunk(4, D::Minus1)?;
                let i = candle_nn::ops::sigmoid(&g[0])?;
                let f = candle_nn::ops::sigmoid(&g[1])?;
                let gg = g[2].tanh()?;
                let o = candle_nn::ops::sigmoid(&g[3])?;
                let c_new = ((f * &c)? + (i * gg)?)?;
                ((o * c_new.tanh()?)?, c_new)
            }
            CellKind::Gru => {
                let xg = xp.chunk(3, D::Minus1)?;
                let hg = hh.chunk(3, D::Minus1)?;
                let r = candle_nn::ops::sigmoid(&(&xg[0] + &hg[0])?)?;
                let z = candle_nn::ops::sigmoid(&(&xg[1] + &hg[1])?)?;
                let n = (&xg[2] + (r * &hg[2])?)?.tanh()?;
                let one_minus_z = z.affine(-1.0, 1.0)?;
                (((one_minus_z * n)? + (z * &h)?)?, c.clone())
            }
        };
        let keep = mask.affine(-1.0, 1.0)?;
        h = (h_new.broadcast_mul(&mask)? + h.broadcast_mul(&keep)?)?;
        c = (c_new.broadcast_mul(&mask)? + c.broadcast_mul(&keep)?)?;
        outs[pos] = Some(h.broadcast_mul(&mask)?);
    }
    let outs: Vec<Tensor> = outs.into_iter().map(|o| o.expect("every step visited")).collect();
    Tensor::stack(&outs, 1)
}
