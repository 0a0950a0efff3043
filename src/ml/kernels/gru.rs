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
    fn forward_row<T: Real>(row: ForwardRow<'_, T>) {
        let n = row.h.len();
        let [xr, xz, xn] = blocks(row.xp, n);
        let [hr, hz, hn] = blocks(row.hh, n);
        let [br, bz, bn] = blocks(row.bias, n);
        let [sr, sz, sn, shn] = blocks_mut(row.saved, n);
        let (h_prev, h) = (&row.h_prev[..n], &mut row.h[..n]);

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
    fn backward_row<T: Real>(row: BackwardRow<'_, T>) {
        let n = row.dh.len();
        let one = T::one();
        let [sr, sz, sn, shn] = blocks(row.saved, n);
        let [dxr, dxz, dxn] = blocks_mut(row.d_xp, n);
        let [dgr, dgz, dgn] = blocks_mut(row.d_hh, n);
        let (dh, d_out, h_prev) = (&mut row.dh[..n], &row.d_out[..n], &row.h_prev[..n]);

        for j in 0..n {
            let (r, z, cand) = (sr[j], sz[j], sn[j]);
            let g = dh[j] + d_out[j];
            let d_cand = g * (one - z) * (one - cand * cand);
            let d_r = d_cand * shn[j] * r * (one - r);
            let d_z = g * (h_prev[j] - cand) * z * (one - z);
            dxr[j] = d_r;
            dgr[j] = d_r;
            dxz[j] = d_z;
            dgz[j] = d_z;
            dxn[j] = d_cand;
            dgn[j] = d_cand * r;
            dh[j] = g * z;
        }
    }
}
