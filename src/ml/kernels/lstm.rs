//! The LSTM cell (gates in PyTorch order: input, forget, cell, output).
//!
//! With `a = xp + hh + b`: `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`,
//! `c = f * c_prev + i * g`, `h = o * tanh(c)`. Saved per row: `i`, `f`, `g`, `o`; the
//! backward pass recomputes `tanh(c)` from the saved cell state.

use super::activation::Real;
use super::cell::{blocks, blocks_mut, BackwardRow, Cell, ForwardRow};

/// Long short-term memory.
pub(crate) struct Lstm;

impl Cell for Lstm {
    const SAVED: usize = 4;
    const HAS_CELL_STATE: bool = true;
    const DIRECT_STATE_GRADIENT: bool = false;

    #[inline(always)]
    fn forward_row<T: Real>(row: ForwardRow<'_, T>, h: &mut [T], c: &mut [T], saved: &mut [T]) {
        let n = h.len();
        let [si, sf, sg, so] = blocks_mut(saved, n);
        forward_lanes(&row, h, c, si, sf, sg, so);
    }

    #[inline(always)]
    fn backward_row<T: Real>(
        row: BackwardRow<'_, T>,
        dh: &mut [T],
        dc: &mut [T],
        d_xp: &mut [T],
        d_hh: &mut [T],
    ) {
        let n = dh.len();
        let [di, df, dg, d_o] = blocks_mut(d_xp, n);
        backward_lanes(&row, dh, dc, di, df, dg, d_o);
        d_hh.copy_from_slice(d_xp);
    }
}

#[inline(always)]
fn forward_lanes<T: Real>(
    row: &ForwardRow<'_, T>,
    h: &mut [T],
    c: &mut [T],
    si: &mut [T],
    sf: &mut [T],
    sg: &mut [T],
    so: &mut [T],
) {
    let n = h.len();
    let [xi, xf, xg, xo] = blocks(row.xp, n);
    let [hi, hf, hg, ho] = blocks(row.hh, n);
    let [bi, bf, bg, bo] = blocks(row.bias, n);
    let c_prev = &row.c_prev[..n];
    let (c, si, sf, sg, so) = (&mut c[..n], &mut si[..n], &mut sf[..n], &mut sg[..n], &mut so[..n]);

    for j in 0..n {
        let i = (xi[j] + hi[j] + bi[j]).sigmoid();
        let f = (xf[j] + hf[j] + bf[j]).sigmoid();
        let g = (xg[j] + hg[j] + bg[j]).tanh();
        let o = (xo[j] + ho[j] + bo[j]).sigmoid();
        let c_j = f * c_prev[j] + i * g;
        c[j] = c_j;
        h[j] = o * c_j.tanh();
        si[j] = i;
        sf[j] = f;
        sg[j] = g;
        so[j] = o;
    }
}

#[inline(always)]
fn backward_lanes<T: Real>(
    row: &BackwardRow<'_, T>,
    dh: &mut [T],
    dc: &mut [T],
    di: &mut [T],
    df: &mut [T],
    dg: &mut [T],
    d_o: &mut [T],
) {
    let n = dh.len();
    let one = T::one();
    let [si, sf, sg, so] = blocks(row.saved, n);
    let (d_out, c, c_prev) = (&row.d_out[..n], &row.c[..n], &row.c_prev[..n]);
    let (dc, di, df, dg, d_o) =
        (&mut dc[..n], &mut di[..n], &mut df[..n], &mut dg[..n], &mut d_o[..n]);

    for j in 0..n {
        let (i, f, g, o) = (si[j], sf[j], sg[j], so[j]);
        let tc = c[j].tanh();
        let d_h = dh[j] + d_out[j];
        let d_c = dc[j] + d_h * o * (one - tc * tc);
        di[j] = d_c * g * i * (one - i);
        df[j] = d_c * c_prev[j] * f * (one - f);
        dg[j] = d_c * i * (one - g * g);
        d_o[j] = d_h * tc * o * (one - o);
        dc[j] = d_c * f;
    }
}
