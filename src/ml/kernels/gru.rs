//! The GRU cell (gates in PyTorch order: reset, update, new).
//!
//! `r = σ(xp_r + hh_r + b_r)`, `z = σ(xp_z + hh_z + b_z)`,
//! `n = tanh(xp_n + r * (hh_n + b_n))`, `h = (1 - z) * n + z * h_prev`.
//! Saved per row: `r`, `z`, `n` and `hh_n + b_n`.

use super::activation::Real;
use super::cell::{blocks, blocks_mut, BackwardRow, Cell, ForwardRow};

/// The gated recurrent unit.
pub(crate) struct Gru;

impl Cell for Gru {
    const SAVED: usize = 4;
    const HAS_CELL_STATE: bool = false;
    const DIRECT_STATE_GRADIENT: bool = true;

    #[inline(always)]
    fn forward_row<T: Real>(row: ForwardRow<'_, T>, h: &mut [T], _c: &mut [T], saved: &mut [T]) {
        let n = h.len();
        let [sr, sz, sn, shn] = blocks_mut(saved, n);
        forward_lanes(&row, h, sr, sz, sn, shn);
    }

    #[inline(always)]
    fn backward_row<T: Real>(
        row: BackwardRow<'_, T>,
        dh: &mut [T],
        _dc: &mut [T],
        d_xp: &mut [T],
        d_hh: &mut [T],
    ) {
        let n = dh.len();
        let [dxr, dxz, dxn] = blocks_mut(d_xp, n);
        let [dgr, dgz, dgn] = blocks_mut(d_hh, n);
        backward_lanes(&row, dh, dxr, dxz, dxn, dgn);

        // The reset and update gates enter both sums alike.
        dgr.copy_from_slice(dxr);
        dgz.copy_from_slice(dxz);
    }
}

#[inline(always)]
fn forward_lanes<T: Real>(
    row: &ForwardRow<'_, T>,
    h: &mut [T],
    sr: &mut [T],
    sz: &mut [T],
    sn: &mut [T],
    shn: &mut [T],
) {
    let n = h.len();
    let [xr, xz, xn] = blocks(row.xp, n);
    let [hr, hz, hn] = blocks(row.hh, n);
    let [br, bz, bn] = blocks(row.bias, n);
    let h_prev = &row.h_prev[..n];
    let (sr, sz, sn, shn) = (&mut sr[..n], &mut sz[..n], &mut sn[..n], &mut shn[..n]);

    for j in 0..n {
        let r = (xr[j] + hr[j] + br[j]).sigmoid();
        let z = (xz[j] + hz[j] + bz[j]).sigmoid();
        let hn_j = hn[j] + bn[j];
        let cand = (xn[j] + r * hn_j).tanh();
        h[j] = cand + z * (h_prev[j] - cand);
        sr[j] = r;
        sz[j] = z;
        sn[j] = cand;
        shn[j] = hn_j;
    }
}

#[inline(always)]
fn backward_lanes<T: Real>(
    row: &BackwardRow<'_, T>,
    dh: &mut [T],
    dxr: &mut [T],
    dxz: &mut [T],
    dxn: &mut [T],
    dgn: &mut [T],
) {
    let n = dh.len();
    let one = T::one();
    let [sr, sz, sn, shn] = blocks(row.saved, n);
    let (d_out, h_prev) = (&row.d_out[..n], &row.h_prev[..n]);
    let (dxr, dxz, dxn, dgn) = (&mut dxr[..n], &mut dxz[..n], &mut dxn[..n], &mut dgn[..n]);

    for j in 0..n {
        let (r, z, cand) = (sr[j], sz[j], sn[j]);
        let g = dh[j] + d_out[j];
        let d_cand = g * (one - z) * (one - cand * cand);
        dxr[j] = d_cand * shn[j] * r * (one - r);
        dxz[j] = g * (h_prev[j] - cand) * z * (one - z);
        dxn[j] = d_cand;
        dgn[j] = d_cand * r;
        dh[j] = g * z;
    }
}
