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

use std::marker::PhantomData;

use super::activation::Real;
use super::cell::{BackwardRow, Cell, ForwardRow};
use super::gemm::{matmul, MatRef};
use super::schedule::Schedule;
use super::simd::{vectorized, VectorLoop};

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

/// Rows of a `(B, T, width)` array stored inside a wider one: the row of position
/// `p = b * T + t` starts at element `p * stride + offset` (for the two halves of a
/// bidirectional layer's `(B, T, 2 * width)` tensors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Elements from one position's row to the next.
    pub stride: usize,
    /// Start of the row of position 0.
    pub offset: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Rows stored back to back.
    pub(crate) fn dense(data: &'a [T], width: usize) -> Self {
        Self { data, stride: width, offset: 0 }
    }

    /// The `width` elements of position `pos`.
    #[inline(always)]
    fn row(&self, pos: usize, width: usize) -> &'a [T] {
        &self.data[pos * self.stride + self.offset..][..width]
    }
}

/// Output rows of a `(B, T, width)` array, one slice per position `p = b * T + t`: the
/// layout in which each direction of a layer writes its block of a wider output row.
pub(crate) type RowsMut<'a, 'b, T> = &'a mut [&'b mut [T]];

/// The rows of `data` (rows of `width * parts` elements) split into `parts` sets: set `d`
/// holds block `d` of every row, so that each direction can write its own block.
pub(crate) fn split_rows<T>(data: &mut [T], width: usize, parts: usize) -> Vec<Vec<&mut [T]>> {
    let mut sets: Vec<Vec<&mut [T]>> =
        (0..parts).map(|_| Vec::with_capacity(data.len() / (width * parts).max(1))).collect();
    for (i, block) in data.chunks_exact_mut(width).enumerate() {
        sets[i % parts].push(block);
    }
    sets
}

/// Read-only inputs of a layer call.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a, T> {
    /// `(B, T, G*H)` input projections.
    pub xs: Rows<'a, T>,
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

impl<T> Saved<T> {
    /// Sizes of the call that saved this.
    pub(crate) fn dims(&self) -> Dims {
        self.dims
    }
}

/// Weight gradients of a layer call (the input gradient goes to rows the caller gives).
pub(crate) struct Grads<T> {
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

/// `W_hh^T` for the step products, or nothing when every step has few rows.
fn weight_for_steps<T: Real>(w_hh: &[T], dims: Dims) -> Vec<T> {
    if dims.batch < FEW_ROWS {
        Vec::new()
    } else {
        transpose(w_hh, dims.gate_width(), dims.hidden)
    }
}

/// Below this many active rows the step product reads `W_hh` itself, not its transpose.
const FEW_ROWS: usize = 4;

/// Runs one forward step over the active rows of step `s`; `w_t` is `W_hh^T`, `(H, G*H)`.
fn forward_step<T: Real, C: Cell>(
    s: usize,
    (inp, w_t): (Inputs<'_, T>, &[T]),
    (dims, sched): (Dims, &Schedule),
    gates: &mut [T],
    st: StepState<'_, T>,
    out: RowsMut<'_, '_, T>,
) {
    let (h, gw) = (dims.hidden, dims.gate_width());
    let n = sched.active[s];
    let gates = &mut gates[..n * gw];

    // 1. The recurrent product of all active rows; zero state at step 0.
    if s == 0 {
        gates.fill(T::zero());
    } else {
        // Few rows make the product a matrix-vector one, where the row-major weight
        // (one dot product per gate unit) is the faster layout.
        let w_t = if n < FEW_ROWS {
            MatRef::row_major(inp.w_hh, gw, h).t()
        } else {
            MatRef::row_major(w_t, h, gw)
        };
        matmul(gates, false, MatRef::row_major(st.h_prev, n, h), w_t);
    }

    // 2. Element-wise cell update, and the new state copied to its output position.
    let rows = ForwardRows::<T, C> { s, inp, dims, sched, gates, st, out, cell: PhantomData };
    vectorized(rows);
}

/// The element-wise part of one forward step, over its active rows.
struct ForwardRows<'a, 'b, T, C> {
    s: usize,
    inp: Inputs<'a, T>,
    dims: Dims,
    sched: &'a Schedule,
    gates: &'a [T],
    st: StepState<'a, T>,
    out: RowsMut<'a, 'b, T>,
    cell: PhantomData<C>,
}

impl<T: Real, C: Cell> VectorLoop for ForwardRows<'_, '_, T, C> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let (dims, sched, st) = (self.dims, self.sched, self.st);
        let (h, gw, cw) = (dims.hidden, dims.gate_width(), cell_width::<C>(dims.hidden));
        let sw = C::SAVED * h;
        for i in 0..sched.active[self.s] {
            let pos = sched.order[i] * dims.time + sched.time(i, self.s);
            let row = ForwardRow {
                xp: self.inp.xs.row(pos, gw),
                hh: &self.gates[i * gw..][..gw],
                bias: &self.inp.b_hh[..gw],
                h_prev: &st.h_prev[i * h..][..h],
                c_prev: &st.c_prev[i * cw..][..cw],
            };
            let (h_i, c_i) = (&mut st.h[i * h..][..h], &mut st.c[i * cw..][..cw]);
            C::forward_row(row, h_i, c_i, &mut st.saved[i * sw..][..sw]);
            self.out[pos].copy_from_slice(&st.h[i * h..][..h]);
        }
    }
}

/// Forward pass keeping every step's state and activations for [`backward`].
///
/// Writes the hidden state of every real position into its row of `out` (`B*T` rows of
/// `H`; rows of padded positions are left as they are) and returns the saved state.
pub(crate) fn forward_train<T: Real, C: Cell>(
    inp: Inputs<'_, T>,
    dims: Dims,
    sched: Schedule,
    out: RowsMut<'_, '_, T>,
) -> Saved<T> {
    let (h, cw, sw) = (dims.hidden, cell_width::<C>(dims.hidden), C::SAVED * dims.hidden);
    let total = sched.total();
    let mut hs = vec![T::zero(); total * h];
    let mut cs = vec![T::zero(); total * cw];
    let mut acts = vec![T::zero(); total * sw];
    let zeros = vec![T::zero(); dims.batch * h];
    let mut gates = vec![T::zero(); dims.batch * dims.gate_width()];
    let w_t = weight_for_steps(inp.w_hh, dims);

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
        forward_step::<T, C>(s, (inp, &w_t), (dims, &sched), &mut gates, st, out);
    }
    Saved { dims, schedule: sched, hs, cs, acts }
}

/// Forward pass that keeps only the running state, for inference; writes `out` as
/// [`forward_train`] does.
pub(crate) fn forward_infer<T: Real, C: Cell>(
    inp: Inputs<'_, T>,
    dims: Dims,
    sched: &Schedule,
    out: RowsMut<'_, '_, T>,
) {
    let (h, cw, sw) = (dims.hidden, cell_width::<C>(dims.hidden), C::SAVED * dims.hidden);
    let (mut h_prev, mut h_next) =
        (vec![T::zero(); dims.batch * h], vec![T::zero(); dims.batch * h]);
    let (mut c_prev, mut c_next) =
        (vec![T::zero(); dims.batch * cw], vec![T::zero(); dims.batch * cw]);
    let mut scratch = vec![T::zero(); dims.batch * sw];
    let mut gates = vec![T::zero(); dims.batch * dims.gate_width()];
    let w_t = weight_for_steps(inp.w_hh, dims);

    for s in 0..sched.steps() {
        let st = StepState {
            h_prev: &h_prev,
            c_prev: &c_prev,
            h: &mut h_next,
            c: &mut c_next,
            saved: &mut scratch,
        };
        forward_step::<T, C>(s, (inp, &w_t), (dims, sched), &mut gates, st, out);
        std::mem::swap(&mut h_prev, &mut h_next);
        std::mem::swap(&mut c_prev, &mut c_next);
    }
}

/// The transpose of a row-major `rows x cols` matrix.
///
/// The step product reads `W_hh^T` with unit stride along the gate axis, the layout in
/// which the `gemm` crate uses the weight without re-packing it at every step.
fn transpose<T: Real>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    const STRIP: usize = 8;
    let mut out = vec![T::zero(); rows * cols];
    for c0 in (0..cols).step_by(STRIP) {
        let width = STRIP.min(cols - c0);
        for r in 0..rows {
            // One short contiguous read, scattered over `width` output rows.
            for (dc, &v) in data[r * cols + c0..][..width].iter().enumerate() {
                out[(c0 + dc) * rows + r] = v;
            }
        }
    }
    out
}

/// Backward pass over the whole sequence.
///
/// `w_hh` is the `(G*H, H)` weight of the forward pass; `d_out` the `(B, T, H)` gradient
/// of the output (values at padded positions are ignored). The input gradient of every
/// real position goes to its row of `d_xs` (`B*T` rows of `G*H`; rows of padded positions
/// are left as they are).
pub(crate) fn backward<T: Real, C: Cell>(
    saved: &Saved<T>,
    w_hh: &[T],
    d_out: Rows<'_, T>,
    d_xs: RowsMut<'_, '_, T>,
) -> Grads<T> {
    let (dims, sched) = (saved.dims, &saved.schedule);
    let (h, gw) = (dims.hidden, dims.gate_width());
    let (cw, sw) = (cell_width::<C>(h), C::SAVED * h);
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
        let state = StepSaved {
            h_prev,
            c_prev,
            h: &saved.hs[lo * h..],
            c: &saved.cs[lo * cw..],
            acts: &saved.acts[lo * sw..],
        };
        let grads = StepGrads { dh: &mut dh, dc: &mut dc, d_xs: &mut *d_xs, d_hh: d_hh_step };
        let rows = BackwardRows::<T, C> { s, dims, sched, state, d_out, grads, cell: PhantomData };
        vectorized(rows);

        // 2. dL/dh_{s-1} through the recurrent product (not needed before step 0).
        if s > 0 {
            let lhs = MatRef::row_major(&d_hh[lo * gw..hi * gw], n, gw);
            let accumulate = C::DIRECT_STATE_GRADIENT;
            matmul(&mut dh[..n * h], accumulate, lhs, MatRef::row_major(w_hh, gw, h));
        }
    }

    let d_w_hh = weight_gradient(saved, &d_hh);
    let d_b_hh = column_sums(&d_hh, gw);
    Grads { d_w_hh, d_b_hh }
}

/// Saved values read by one backward step, each starting at the step's first row.
struct StepSaved<'a, T> {
    h_prev: &'a [T],
    c_prev: &'a [T],
    h: &'a [T],
    c: &'a [T],
    acts: &'a [T],
}

/// Gradient buffers written by one backward step.
struct StepGrads<'a, 'b, T> {
    /// Carried `dL/dh`, one row per sorted position.
    dh: &'a mut [T],
    /// Carried `dL/dc` (LSTM), one row per sorted position.
    dc: &'a mut [T],
    /// Input-projection gradient, one `G*H` row per position.
    d_xs: RowsMut<'a, 'b, T>,
    /// Recurrent pre-activation gradients of this step's rows.
    d_hh: &'a mut [T],
}

/// The element-wise part of one backward step, over its active rows.
struct BackwardRows<'a, 'b, T, C> {
    s: usize,
    dims: Dims,
    sched: &'a Schedule,
    state: StepSaved<'a, T>,
    d_out: Rows<'a, T>,
    grads: StepGrads<'a, 'b, T>,
    cell: PhantomData<C>,
}

impl<T: Real, C: Cell> VectorLoop for BackwardRows<'_, '_, T, C> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let (dims, sched, st, g) = (self.dims, self.sched, self.state, self.grads);
        let (h, gw, cw) = (dims.hidden, dims.gate_width(), cell_width::<C>(dims.hidden));
        let sw = C::SAVED * h;
        for i in 0..sched.active[self.s] {
            let pos = sched.order[i] * dims.time + sched.time(i, self.s);
            let row = BackwardRow {
                d_out: self.d_out.row(pos, h),
                saved: &st.acts[i * sw..][..sw],
                h: &st.h[i * h..][..h],
                h_prev: &st.h_prev[i * h..][..h],
                c: &st.c[i * cw..][..cw],
                c_prev: &st.c_prev[i * cw..][..cw],
            };
            let (dh, dc) = (&mut g.dh[i * h..][..h], &mut g.dc[i * cw..][..cw]);
            let (d_xp, d_hh) = (&mut g.d_xs[pos][..gw], &mut g.d_hh[i * gw..][..gw]);
            C::backward_row(row, dh, dc, d_xp, d_hh);
        }
    }
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
pub(crate) fn column_sums<T: Real>(data: &[T], width: usize) -> Vec<T> {
    vectorized(ColumnSums { data, width })
}

/// The loop of [`column_sums`].
struct ColumnSums<'a, T> {
    data: &'a [T],
    width: usize,
}

impl<T: Real> VectorLoop for ColumnSums<'_, T> {
    type Output = Vec<T>;

    #[inline(always)]
    fn run(self) -> Vec<T> {
        let mut sums = vec![T::zero(); self.width];
        for row in self.data.chunks_exact(self.width) {
            for (acc, &x) in sums.iter_mut().zip(row) {
                *acc += x;
            }
        }
        sums
    }
}
