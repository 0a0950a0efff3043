//! The plain tanh cell: `h = tanh(xp + hh + b)`. Nothing is saved besides `h` itself.

use super::activation::Real;
use super::cell::{BackwardRow, Cell, ForwardRow};

/// The Elman RNN with tanh.
pub(crate) struct Rnn;

impl Cell for Rnn {
    const SAVED: usize = 0;
    const HAS_CELL_STATE: bool = false;
    const DIRECT_STATE_GRADIENT: bool = false;

    #[inline(always)]
    fn forward_row<T: Real>(row: ForwardRow<'_, T>, h: &mut [T], _c: &mut [T], _saved: &mut [T]) {
        let n = h.len();
        let (xp, hh, bias, h) = (&row.xp[..n], &row.hh[..n], &row.bias[..n], &mut h[..n]);
        for j in 0..n {
            h[j] = (xp[j] + hh[j] + bias[j]).tanh();
        }
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
        let (dh, d_out, h, d_xp) = (&dh[..n], &row.d_out[..n], &row.h[..n], &mut d_xp[..n]);
        for j in 0..n {
            d_xp[j] = (dh[j] + d_out[j]) * (T::one() - h[j] * h[j]);
        }
        d_hh.copy_from_slice(d_xp);
    }
}
