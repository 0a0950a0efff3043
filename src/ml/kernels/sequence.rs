//! The time loops of the fused recurrent layer: forward (with or without saving what the
//! backward pass needs) and the backward pass over the whole sequence.
//!
//! Buffers are allocated once per call, never inside the time loop. Each step runs:
//! 1. one matrix product `h_{s-1} @ W_hh^T` over the active rows (skipped at step 0,
//!    where the state is zero);
//! 2. the cell's element-wise update of every active row, which also scatters the new
//!    hidden state into the `(B, T, H)` output.
//!
//! The backward pass walks the steps in reverse, turning output gradients into gate
//! gradients row by row and carrying `dL/dh` through one product with `W_hh` per step.
//! The weight gradient is then a single product over all steps.

use super::activation::Real;
use super::cell::{BackwardRow, Cell, ForwardRow};
use super::gemm::{matmul, MatRef};
use super::schedule::Schedule;
use super::simd::vectorized;

/// Sizes of one layer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Batch rows `B`.
    pub batch: usize,
    /// Padded time steps `T`.
    pub time: usize,
    /// Hidden width `H`.
    pub hidden: usize,
    /// Gate blocks `G` (1, 4 or 3).
    pub gates: usize,
}

impl Dims {
    /// Width of the stacked gates, `G*H`.
    pub(crate) fn gate_width(&self) -> usize {
        self.gates * self.hidden
    }
}

/// Read-only inputs of a layer call, all contiguous row-major.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a, T> {
    /// `(B, T, G*H)` input projections.
    pub xs: &'a [T],
    /// `(G*H, H)` recurrent weight.
    pub w_hh: &'a [T],
    /// `(G*H)` recurrent bias.
    pub b_hh: &'a [T],
}

/// What the forward pass keeps for the backward pass (compact, step-major rows).
pub(crate) struct Saved<T> {
    dims: Dims,
    schedule: Schedule,
    hs: Vec<T>,
    cs: Vec<T>,
    acts: Vec<T>,
}

/// Gradients of a layer call.
pub(crate) struct Grads<T> {
    /// `(B, T, G*H)`, zero at padded positions.
    pub d_xs: Vec<T>,
    /// `(G*H, H)`.
    pub d_w_hh: Vec<T>,
    /// `(G*H)`.
    pub d_b_hh: Vec<T>,
}

/// Where one forward step reads its previous state and writes its new one; every slice
/// holds at least as many rows as are active at the step.
struct StepState<'a, T> {
    h_prev: &'a [T],
    c_prev: &'a [T],
    h: &'a mut [T],
    c: &'a mut [T],
    saved: &'a mut [T],
}

/// Width of the cell state of cell `C` (0 when it has none).
fn cell_width<C: Cell>(hidden: usize) -> usize {
    if C::HAS_CELL_STATE {
        hidden
    } else {
        0
    }
}

/// Runs one forward step over the active rows of step `s`.
fn forward_step<T: Real, C: Cell>(
    s: usize,
    inp: Inputs<'_, T>,
    (dims, sched): (Dims, &Schedule),
    gates: &mut [T],
    st: StepState<'_, T>,
    out: &mut [T],
) {
    let (h, gw, cw, sw) = (dims.hidden, dims.gate_width(), cell_width::<C>(dims.hidden), C::SAVED * dims.hidden);
    let n = sched.active[s];
    let gates = &mut gates[..n * gw];

    // 1. The recurrent product of all active rows; zero state at step 0.
    if s == 0 {
        gates.fill(T::zero());
    } else {
        let w_t = MatRef::row_major(inp.w_hh, gw, h).t();
        matmul(gates, false, MatRef::row_major(st.h_prev, n, h), w_t);
    }

    // 2. Element-wise cell update, and the new state copied to its output position.
    vectorized(|| {
        for i in 0..n {
            let pos = sched.order[i] * dims.time + sched.time(i, s);
            C::forward_row(ForwardRow {
                xp: &inp.xs[pos * gw..][..gw],
                hh: &gates[i * gw..][..gw],
                bias: &inp.b_hh[..gw],
                h_prev: &st.h_prev[i * h..][..h],
                c_prev: &st.c_prev[i * cw..][..cw],
                h: &mut st.h[i * h..][..h],
                c: &mut st.c[i * cw..][..cw],
                saved: &mut st.saved[i * sw..][..sw],
            });
            out[pos * h..][..h].copy_from_slice(&st.h[i * h..][..h]);
        }
    });
}

/// Forward pass keeping every step's state and activations for [`backward`].
///
/// Returns the `(B, T, H)` output (zero at padded positions) and the saved state.
pub(crate) fn forward_train<T: Real, C: Cell>(
    inp: Inputs<'_, T>,
    dims: Dims,
    sched: Schedule,
) -> (Vec<T>, Saved<T>) {
    let (h, cw, sw) = (dims.hidden, cell_width::<C>(dims.hidden), C::SAVED * dims.hidden);
    let total = sched.total();
    let mut out = vec![T::zero(); dims.batch * dims.time * h];
    let mut hs = vec![T::zero(); total * h];
    let mut cs = vec![T::zero(); total * cw];
    let mut acts = vec![T::zero(); total * sw];
    let zeros = vec![T::zero(); dims.batch * h];
    let mut gates = vec![T::zero(); dims.batch * dims.gate_width()];

    for s in 0..sched.steps() {
        let (lo, hi) = (sched.offsets[s], sched.offsets[s + 1]);
        let prev = if s == 0 { None } else { Some(sched.offsets[s - 1]) };
        let (hs_done, hs_rest) = hs.split_at_mut(lo * h);
        let (cs_done, cs_rest) = cs.split_at_mut(lo * cw);
        let st = StepState {
            h_prev: prev.map_or(&zeros[..], |p| &hs_done[p * h..]),
            c_prev: prev.map_or(&zeros[..], |p| &cs_done[p * cw..]),
            h: &mut hs_rest[..(hi - lo) * h],
            c: &mut cs_rest[..(hi - lo) * cw],
            saved: &mut acts[lo * sw..hi * sw],
        };
        forward_step::<T, C>(s, inp, (dims, &sched), &mut gates, st, &mut out);
    }
    (out, Saved { dims, schedule: sched, hs, cs, acts })
}

/// Forward pass that keeps only the running state: the output alone, for inference.
pub(crate) fn forward_infer<T: Real, C: Cell>(
    inp: Inputs<'_, T>,
    dims: Dims,
    sched: &Schedule,
) -> Vec<T> {
    let (h, cw, sw) = (dims.hidden, cell_width::<C>(dims.hidden), C::SAVED * dims.hidden);
    let mut out = vec![T::zero(); dims.batch * dims.time * h];
    let (mut h_prev, mut h_next) = (vec![T::zero(); dims.batch * h], vec![T::zero(); dims.batch * h]);
    let (mut c_prev, mut c_next) =
        (vec![T::zero(); dims.batch * cw], vec![T::zero(); dims.batch * cw]);
    let mut scratch = vec![T::zero(); dims.batch * sw];
    let mut gates = vec![T::zero(); dims.batch * dims.gate_width()];

    for s in 0..sched.steps() {
        let st = StepState {
            h_prev: &h_prev,
            c_prev: &c_prev,
            h: &mut h_next,
            c: &mut c_next,
            saved: &mut scratch,
        };
        forward_step::<T, C>(s, inp, (dims, sched), &mut gates, st, &mut out);
        std::mem::swap(&mut h_prev, &mut h_next);
        std::mem::swap(&mut c_prev, &mut c_next);
    }
    out
}

/// Backward pass over the whole sequence.
///
/// `w_hh` is the `(G*H, H)` weight of the forward pass; `d_out` the `(B, T, H)` gradient
/// of the output (values at padded positions are ignored).
pub(crate) fn backward<T: Real, C: Cell>(saved: &Saved<T>, w_hh: &[T], d_out: &[T]) -> Grads<T> {
    let (dims, sched) = (saved.dims, &saved.schedule);
    let (h, gw) = (dims.hidden, dims.gate_width());
    let (cw, sw) = (cell_width::<C>(h), C::SAVED * h);
    let mut d_xs = vec![T::zero(); dims.batch * dims.time * gw];
    let mut d_hh = vec![T::zero(); sched.total() * gw];
    let mut dh = vec![T::zero(); dims.batch * h];
    let mut dc = vec![T::zero(); dims.batch * cw];
    let zeros = vec![T::zero(); dims.batch * h];

    for s in (0..sched.steps()).rev() {
        let (lo, hi, n) = (sched.offsets[s], sched.offsets[s + 1], sched.active[s]);
        let prev = if s == 0 { None } else { Some(sched.offsets[s - 1]) };
        let h_prev = prev.map_or(&zeros[..], |p| &saved.hs[p * h..]);
        let c_prev = prev.map_or(&zeros[..], |p| &saved.cs[p * cw..]);
        let d_hh_step = &mut d_hh[lo * gw..hi * gw];

        // 1. Gate gradients of every active row (and the direct part of dL/dh_{s-1}).
        vectorized(|| {
            for i in 0..n {
                let pos = sched.order[i] * dims.time + sched.time(i, s);
                C::backward_row(BackwardRow {
                    dh: &mut dh[i * h..][..h],
                    d_out: &d_out[pos * h..][..h],
                    dc: &mut dc[i * cw..][..cw],
                    saved: &saved.acts[(lo + i) * sw..][..sw],
                    h: &saved.hs[(lo + i) * h..][..h],
                    h_prev: &h_prev[i * h..][..h],
                    c_prev: &c_prev[i * cw..][..cw],
                    d_xp: &mut d_xs[pos * gw..][..gw],
                    d_hh: &mut d_hh_step[i * gw..][..gw],
                });
            }
        });

        // 2. dL/dh_{s-1} through the recurrent product (not needed before step 0).
        if s > 0 {
            let lhs = MatRef::row_major(&d_hh_step[..], n, gw);
            let accumulate = C::DIRECT_STATE_GRADIENT;
            matmul(&mut dh[..n * h], accumulate, lhs, MatRef::row_major(w_hh, gw, h));
        }
    }

    let d_w_hh = weight_gradient(saved, &d_hh);
    let d_b_hh = column_sums(&d_hh, gw);
    Grads { d_xs, d_w_hh, d_b_hh }
}

/// `dW_hh = sum_s d_hh_s^T @ h_{s-1}` as one product; step 0 (zero state) adds nothing.
fn weight_gradient<T: Real>(saved: &Saved<T>, d_hh: &[T]) -> Vec<T> {
    let (sched, h, gw) = (&saved.schedule, saved.dims.hidden, saved.dims.gate_width());
    let mut d_w = vec![T::zero(); gw * h];
    if sched.steps() < 2 {
        return d_w;
    }

    // Previous states of the rows active at each step s >= 1, stacked in compact order.
    let first = sched.offsets[1];
    let rows = sched.total() - first;
    let mut h_prev = vec![T::zero(); rows * h];
    for s in 1..sched.steps() {
        let (src, n) = (sched.offsets[s - 1] * h, sched.active[s] * h);
        let dst = (sched.offsets[s] - first) * h;
        h_prev[dst..dst + n].copy_from_slice(&saved.hs[src..src + n]);
    }

    let lhs = MatRef::row_major(&d_hh[first * gw..], rows, gw).t();
    matmul(&mut d_w, false, lhs, MatRef::row_major(&h_prev, rows, h));
    d_w
}

/// Sums of the columns of a row-major matrix with `width` columns.
fn column_sums<T: Real>(data: &[T], width: usize) -> Vec<T> {
    let mut sums = vec![T::zero(); width];
    vectorized(|| {
        for row in data.chunks_exact(width) {
            for (acc, &x) in sums.iter_mut().zip(row) {
                *acc += x;
            }
        }
    });
    sums
}
