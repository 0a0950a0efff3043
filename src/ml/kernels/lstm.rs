//! The LSTM cell (gates in PyTorch order: input, forget, cell, output).
//!
//! With `a = xp + hh + b`: `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`,
//! `c = f * c_prev + i * g`, `h = o * tanh(c)`. Saved per row: `i`, `f`, `g`, `o`, `tanh(c)`.

use super::activation::Real;
use super::cell::{blocks, blocks_mut, BackwardRow, Cell, ForwardRow};

/// Long short-term memory.
pub(crate) struct Lstm;

impl Cell for Lstm {
    const SAVED: usize = 5;
    const HAS_CELL_STATE: bool = true;
    const DIRECT_STATE_GRADIENT: bool = false;

    #[inline(always)]
    fn forward_row<T: Real>(row: ForwardRow<'_, T>) {
        let n = row.h.len();
        let [xi, xf, xg, xo] = blocks(row.xp, n);
        let [hi, hf, hg, ho] = blocks(row.hh, n);
        let [bi, bf, bg, bo] = blocks(row.bias, n);
        let [si, sf, sg, so, stc] = blocks_mut(row.saved, n);
        let (c_prev, c, h) = (&row.c_prev[..n], &mut row.c[..n], &mut row.h[..n]);

        for j in 0..n {
            let i = (xi[j] + hi[j] + bi[j]).sigmoid();
            let f = (xf[j] + hf[j] + bf[j]).sigmoid();
            let g = (xg[j] + hg[j] + bg[j]).tanh();
            let o = (xo[j] + ho[j] + bo[j]).sigmoid();
            let c_j = f * c_prev[j] + i * g;
            let tc = c_j.tanh();
            c[j] = c_j;
            h[j] = o * tc;
            si[j] = i;
            sf[j] = f;
            sg[j] = g;
            so[j] = o;
            stc[j] = tc;
        }
    }

    #[inline(always)]
    fn backward_row<T: Real>(row: BackwardRow<'_, T>) {
        let n = row.dh.len();
        let one = T::one();
        let [si, sf, sg, so, stc] = blocks(row.saved, n);
        let [dxi, dxf, dxg, dxo] = blocks_mut(row.d_xp, n);
        let [dgi, dgf, dgg, dgo] = blocks_mut(row.d_hh, n);
        let (dh, d_out) = (&row.dh[..n], &row.d_out[..n]);
        let (dc, c_prev) = (&mut row.dc[..n], &row.c_prev[..n]);

        for j in 0..n {
            let (i, f, g, o, tc) = (si[j], sf[j], sg[j], so[j], stc[j]);
            let d_h = dh[j] + d_out[j];
            let d_c = dc[j] + d_h * o * (one - tc * tc);
            let d_i = d_c * g * i * (one - i);
            let d_f = d_c * c_prev[j] * f * (one - f);
            let d_g = d_c * i * (one - g * g);
            let d_o = d_h * tc * o * (one - o);
            dxi[j] = d_i;
            dgi[j] = d_i;
            dxf[j] = d_f;
            dgf[j] = d_f;
            dxg[j] = d_g;
            dgg[j] = d_g;
            dxo[j] = d_o;
            dgo[j] = d_o;
            dc[j] = d_c * f;
        }
    }
}
