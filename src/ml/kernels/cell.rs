//! The per-row arithmetic of one recurrent step, shared interface of the three cells.
//!
//! A [`Cell`] turns the pre-computed gate inputs of one batch row into its new state
//! (forward) and turns the gradient of that state back into gate gradients (backward).
//! The time loop in `sequence.rs` calls these once per active row and step; the recurrent
//! matrix products are done there, for all rows of a step at once.

use super::activation::Real;

/// Read-only slices of one row at one forward step (`H` = hidden width, `G` = gate count).
pub(crate) struct ForwardRow<'a, T> {
    /// Input projection `x_t @ W_ih^T + b_ih` of this row and step, `G*H`.
    pub xp: &'a [T],
    /// Recurrent product `h_{t-1} @ W_hh^T` without bias, `G*H`.
    pub hh: &'a [T],
    /// Recurrent bias `b_hh`, `G*H`.
    pub bias: &'a [T],
    /// Previous hidden state, `H`.
    pub h_prev: &'a [T],
    /// Previous cell state, `H` (LSTM only, else empty).
    pub c_prev: &'a [T],
}

/// Read-only slices of one row at one backward step.
pub(crate) struct BackwardRow<'a, T> {
    /// Gradient of the layer output at this position, `H`.
    pub d_out: &'a [T],
    /// Activations saved by the forward pass, `Cell::SAVED * H`.
    pub saved: &'a [T],
    /// This step's hidden state, `H`.
    pub h: &'a [T],
    /// Previous hidden state, `H`.
    pub h_prev: &'a [T],
    /// This step's cell state, `H` (LSTM only, else empty).
    pub c: &'a [T],
    /// Previous cell state, `H` (LSTM only, else empty).
    pub c_prev: &'a [T],
}

/// One kind of recurrent cell.
///
/// Written slices are separate `&mut` parameters, down to each gate block in the inner
/// loops: only then does the compiler know that they alias nothing else. Blocks of one
/// buffer or slices inside a struct make it emit run-time overlap checks, which fail when
/// hoisted over the row loop, leaving the scalar loop to run.
pub(crate) trait Cell {
    /// Width of the saved activations, in multiples of `H`.
    const SAVED: usize;
    /// Whether the cell carries a cell state `c` (LSTM).
    const HAS_CELL_STATE: bool;
    /// Whether `dh` holds a direct gradient of `h_{t-1}` after [`Cell::backward_row`], to
    /// which the recurrent product is then added.
    const DIRECT_STATE_GRADIENT: bool;

    /// Computes the new state of one row: writes the hidden state `h` (`H`), the cell
    /// state `c` (`H`, LSTM only, else empty) and the activations `saved` that the
    /// backward pass needs (`SAVED * H`).
    fn forward_row<T: Real>(row: ForwardRow<'_, T>, h: &mut [T], c: &mut [T], saved: &mut [T]);

    /// Computes the gate gradients of one row.
    ///
    /// - `dh` (`H`): in, the gradient reaching `h_t` through later steps; out, the part of
    ///   the gradient of `h_{t-1}` that does not go through `W_hh` (GRU only);
    /// - `dc` (`H`, LSTM only): in, the gradient of `c_t`; out, that of `c_{t-1}`;
    /// - `d_xp` (`G*H`): written, the gradient of the input projection;
    /// - `d_hh` (`G*H`): written, the gradient of `h_{t-1} @ W_hh^T + b_hh`.
    fn backward_row<T: Real>(
        row: BackwardRow<'_, T>,
        dh: &mut [T],
        dc: &mut [T],
        d_xp: &mut [T],
        d_hh: &mut [T],
    );
}

/// The first `N` consecutive blocks of length `len` of a slice.
///
/// # Panics
/// When the slice is shorter than `N * len`.
#[inline(always)]
pub(crate) fn blocks<T, const N: usize>(data: &[T], len: usize) -> [&[T]; N] {
    std::array::from_fn(|k| &data[k * len..(k + 1) * len])
}

/// The first `N` consecutive blocks of length `len` of a mutable slice.
///
/// # Panics
/// When the slice is shorter than `N * len`.
#[inline(always)]
pub(crate) fn blocks_mut<T, const N: usize>(data: &mut [T], len: usize) -> [&mut [T]; N] {
    let mut chunks = data[..N * len].chunks_exact_mut(len);
    std::array::from_fn(|_| chunks.next().expect("slice holds N blocks, checked by the slicing"))
}
