//! The fused recurrent layers as Candle custom ops (CPU, `f32`/`f64`).
//!
//! [`SequenceOp`] runs the whole time loop of one layer direction inside `cpu_fwd` and its
//! whole backward pass inside `bwd`, so the autograd graph holds one node per layer instead
//! of a dozen per time step. [`BidirectionalOp`] does the same for both directions of a
//! layer, optionally on two threads (the directions are independent). What the backward
//! pass needs is kept in the op itself.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::activation::Real;
use super::gru::Gru;
use super::lstm::Lstm;
use super::rnn::Rnn;
use super::schedule::Schedule;
use super::sequence::{backward, forward_infer, forward_train, Dims, Grads, Inputs, Rows, Saved};
use super::KernelError;
use crate::ml::config::CellKind;

/// Runs `$body` with the type alias `$c` bound to the cell type of `$kind`.
macro_rules! with_cell {
    ($kind:expr, $c:ident => $body:expr) => {
        match $kind {
            CellKind::Rnn => {
                type $c = Rnn;
                $body
            }
            CellKind::Lstm => {
                type $c = Lstm;
                $body
            }
            CellKind::Gru => {
                type $c = Gru;
                $body
            }
        }
    };
}

/// Forward pass of one direction; the saved state only when `keep`.
fn forward_one<T: Real>(
    cell: CellKind,
    inp: Inputs<'_, T>,
    dims: Dims,
    sched: Schedule,
    keep: bool,
) -> (Vec<T>, Option<Saved<T>>) {
    if keep {
        let (out, saved) = with_cell!(cell, C => forward_train::<T, C>(inp, dims, sched));
        (out, Some(saved))
    } else {
        (with_cell!(cell, C => forward_infer::<T, C>(inp, dims, &sched)), None)
    }
}

/// Backward pass of one direction.
fn backward_one<T: Real>(
    cell: CellKind,
    saved: &Saved<T>,
    w: &[T],
    d_out: Rows<'_, T>,
) -> Grads<T> {
    with_cell!(cell, C => backward::<T, C>(saved, w, d_out))
}

/// Runs `f(0)` and `f(1)`, on two threads of rayon's pool when `parallel`.
///
/// The pool's threads live as long as the process. A thread spawned per call (as an
/// earlier version did) starts with an empty allocator heap, so every step of a teacher
/// faulted its large buffers in afresh: 310 page faults a step against none on one thread.
fn both<R: Send>(parallel: bool, f: impl Fn(usize) -> R + Sync) -> candle_core::Result<[R; 2]> {
    if !parallel {
        return Ok([f(0), f(1)]);
    }
    let run = std::panic::AssertUnwindSafe(|| rayon::join(|| f(0), || f(1)));
    let (first, second) = std::panic::catch_unwind(run).map_err(|_| KernelError::WorkerPanicked)?;
    Ok([first, second])
}

/// Row `r` of the result is row `r` of `parts[0]` followed by row `r` of `parts[1]`.
fn interleave<T: Copy>(parts: &[Vec<T>; 2], rows: usize, width: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows * 2 * width);
    for r in 0..rows {
        out.extend_from_slice(&parts[0][r * width..][..width]);
        out.extend_from_slice(&parts[1][r * width..][..width]);
    }
    out
}

/// The contiguous elements of a CPU tensor of type `T`.
pub(super) fn cpu_slice<'a, T: Real>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(KernelError::NotContiguous.into()),
    }
}

/// Runs `f` on the elements of a CPU tensor of type `T`, made contiguous first.
fn with_tensor_slice<T: Real, R>(
    tensor: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    with_slices(&[tensor], |slices| f(slices[0]))
}

/// Runs `f` on the elements of each CPU tensor of type `T` (made contiguous first), in
/// order.
pub(super) fn with_slices<T: Real, R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let tensors =
        tensors.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(cpu) => cpu_slice::<T>(cpu, layout),
            _ => Err(KernelError::NotCpu.into()),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    f(&slices)
}

/// Stores the saved state of a forward pass.
fn store<S>(slot: &Mutex<Option<S>>, value: S) -> candle_core::Result<()> {
    *slot.lock().map_err(|_| KernelError::Poisoned)? = Some(value);
    Ok(())
}

/// One direction of one recurrent layer over a whole batch of sequences.
pub(crate) struct SequenceOp<T> {
    cell: CellKind,
    lengths: Arc<Vec<usize>>,
    reverse: bool,
    /// Whether the forward pass keeps activations for `bwd`.
    keep: bool,
    saved: Mutex<Option<Saved<T>>>,
}

impl<T: Real> SequenceOp<T> {
    /// An op for rows of these lengths; `keep` saves activations for the backward pass.
    pub(crate) fn new(cell: CellKind, lengths: Arc<Vec<usize>>, reverse: bool, keep: bool) -> Self {
        Self { cell, lengths, reverse, keep, saved: Mutex::new(None) }
    }
}

impl<T: Real> CustomOp3 for SequenceOp<T> {
    fn name(&self) -> &'static str {
        "fused-recurrent-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (l1.dims(), l2.dims());
        let dims = Dims { batch: x[0], time: x[1], hidden: w[1], gates: self.cell.gates() };
        let xs = Rows::dense(cpu_slice(s1, l1)?, dims.gate_width());
        let inp = Inputs { xs, w_hh: cpu_slice(s2, l2)?, b_hh: cpu_slice(s3, l3)? };
        let sched = Schedule::new(&self.lengths, self.reverse);

        let (out, saved) = forward_one(self.cell, inp, dims, sched, self.keep);
        if let Some(saved) = saved {
            store(&self.saved, saved)?;
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((dims.batch, dims.time, dims.hidden))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| KernelError::Poisoned)?;
        let saved = guard.as_ref().ok_or(KernelError::NoForwardState)?;

        let grads = with_tensor_slice::<T, _>(w_hh, |w| {
            with_tensor_slice::<T, _>(grad_res, |d_out| {
                let d_out = Rows::dense(d_out, saved.dims().hidden);
                Ok(backward_one(self.cell, saved, w, d_out))
            })
        })?;

        let device = xs.device();
        Ok((
            Some(Tensor::from_vec(grads.d_xs, xs.shape(), device)?),
            Some(Tensor::from_vec(grads.d_w_hh, w_hh.shape(), device)?),
            Some(Tensor::from_vec(grads.d_b_hh, b_hh.shape(), device)?),
        ))
    }
}

/// Both directions of one bidirectional layer: `xs (B, T, 2*G*H)`, `w_hh (2, G*H, H)`,
/// `b_hh (2, G*H)`, output `(B, T, 2*H)`; forward direction first in every pair.
pub(crate) struct BidirectionalOp<T> {
    cell: CellKind,
    lengths: Arc<Vec<usize>>,
    keep: bool,
    /// Whether the two directions run on two threads.
    parallel: bool,
    saved: Mutex<Option<[Saved<T>; 2]>>,
}

impl<T: Real> BidirectionalOp<T> {
    /// An op for rows of these lengths; `keep` saves activations for the backward pass,
    /// `parallel` runs the directions on two threads.
    pub(crate) fn new(
        cell: CellKind,
        lengths: Arc<Vec<usize>>,
        keep: bool,
        parallel: bool,
    ) -> Self {
        Self { cell, lengths, keep, parallel, saved: Mutex::new(None) }
    }
}

impl<T: Real> CustomOp3 for BidirectionalOp<T> {
    fn name(&self) -> &'static str {
        "fused-bidirectional-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (l1.dims(), l2.dims());
        let dims = Dims { batch: x[0], time: x[1], hidden: w[2], gates: self.cell.gates() };
        let (gw, h) = (dims.gate_width(), dims.hidden);
        let (xs, w, b) =
            (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?, cpu_slice::<T>(s3, l3)?);

        let [(out0, saved0), (out1, saved1)] = both(self.parallel, |d| {
            let xs = Rows { data: xs, stride: 2 * gw, offset: d * gw };
            let inp = Inputs { xs, w_hh: &w[d * gw * h..][..gw * h], b_hh: &b[d * gw..][..gw] };
            forward_one(self.cell, inp, dims, Schedule::new(&self.lengths, d == 1), self.keep)
        })?;
        if let (Some(s0), Some(s1)) = (saved0, saved1) {
            store(&self.saved, [s0, s1])?;
        }

        let out = interleave(&[out0, out1], dims.batch * dims.time, h);
        Ok((T::to_cpu_storage_owned(out), Shape::from((dims.batch, dims.time, 2 * h))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| KernelError::Poisoned)?;
        let saved = guard.as_ref().ok_or(KernelError::NoForwardState)?;
        let dims = saved[0].dims();
        let (gw, h) = (dims.gate_width(), dims.hidden);

        let [g0, g1] = with_tensor_slice::<T, _>(w_hh, |w| {
            with_tensor_slice::<T, _>(grad_res, |d_out| {
                both(self.parallel, |d| {
                    let d_out = Rows { data: d_out, stride: 2 * h, offset: d * h };
                    backward_one(self.cell, &saved[d], &w[d * gw * h..][..gw * h], d_out)
                })
            })
        })?;

        let device = xs.device();
        let d_xs = interleave(&[g0.d_xs, g1.d_xs], dims.batch * dims.time, gw);
        let d_w = [g0.d_w_hh, g1.d_w_hh].concat();
        let d_b = [g0.d_b_hh, g1.d_b_hh].concat();
        Ok((
            Some(Tensor::from_vec(d_xs, xs.shape(), device)?),
            Some(Tensor::from_vec(d_w, w_hh.shape(), device)?),
            Some(Tensor::from_vec(d_b, b_hh.shape(), device)?),
        ))
    }
}
