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
    fn forward_row<T: Real>(row: ForwardRow<'_, T>) {
        let n = row.h.len();
        let (xp, hh, bias, h) = (&row.xp[..n], &row.hh[..n], &row.bias[..n], &mut row.h[..n]);
        for j in 0..n {
            h[j] = (xp[j] + hh[j] + bias[j]).tanh();
        }
    }

    #[inline(always)]
    fn backward_row<T: Real>(row: BackwardRow<'_, T>) {
        let n = row.dh.len();
        let (dh, d_out, h) = (&row.dh[..n], &row.d_out[..n], &row.h[..n]);
        let (d_xp, d_hh) = (&mut row.d_xp[..n], &mut row.d_hh[..n]);
        for j in 0..n {
            let d = (dh[j] + d_out[j]) * (T::one() - h[j] * h[j]);
            d_xp[j] = d;
            d_hh[j] = d;
        }
    }
}
