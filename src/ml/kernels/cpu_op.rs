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
use super::sequence::{
    backward, forward_infer, forward_train, split_rows, Dims, Grads, Inputs, Rows, RowsMut, Saved,
};
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

/// Forward pass of one direction into its output rows; the saved state only when `keep`.
pub(super) fn forward_one<T: Real>(
    cell: CellKind,
    (inp, dims, sched): (Inputs<'_, T>, Dims, Schedule),
    keep: bool,
    out: RowsMut<'_, '_, T>,
) -> Option<Saved<T>> {
    if keep {
        Some(with_cell!(cell, C => forward_train::<T, C>(inp, dims, sched, out)))
    } else {
        with_cell!(cell, C => forward_infer::<T, C>(inp, dims, &sched, out));
        None
    }
}

/// Backward pass of one direction; its input gradient goes to the rows `d_xs`.
pub(super) fn backward_one<T: Real>(
    cell: CellKind,
    saved: &Saved<T>,
    w: &[T],
    d_out: Rows<'_, T>,
    d_xs: RowsMut<'_, '_, T>,
) -> Grads<T> {
    with_cell!(cell, C => backward::<T, C>(saved, w, d_out, d_xs))
}

/// Runs `f(d, part)` for each direction `d` and its part, on one thread of rayon's pool
/// per direction when `parallel` (and there are two).
///
/// The pool's threads live as long as the process. A thread spawned per call (as an
/// earlier version did) starts with an empty allocator heap, so every step of a teacher
/// faulted its large buffers in afresh: 310 page faults a step against none on one thread.
pub(super) fn per_direction<P: Send, R: Send>(
    parallel: bool,
    parts: Vec<P>,
    f: impl Fn(usize, P) -> R + Sync,
) -> candle_core::Result<Vec<R>> {
    if !parallel || parts.len() != 2 {
        return Ok(parts.into_iter().enumerate().map(|(d, p)| f(d, p)).collect());
    }
    let mut parts = parts.into_iter();
    let (p0, p1) = (parts.next(), parts.next());
    let (Some(p0), Some(p1)) = (p0, p1) else { unreachable!("two parts were checked") };
    let run = std::panic::AssertUnwindSafe(|| rayon::join(|| f(0, p0), || f(1, p1)));
    let (first, second) = std::panic::catch_unwind(run).map_err(|_| KernelError::WorkerPanicked)?;
    Ok(vec![first, second])
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
pub(super) fn store<S>(slot: &Mutex<Option<S>>, value: S) -> candle_core::Result<()> {
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

        let mut out = vec![T::zero(); dims.batch * dims.time * dims.hidden];
        let mut rows = split_rows(&mut out, dims.hidden, 1).remove(0);
        let saved = forward_one(self.cell, (inp, dims, sched), self.keep, &mut rows);
        drop(rows);
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

        let dims = saved.dims();
        let mut d_xs = vec![T::zero(); dims.batch * dims.time * dims.gate_width()];
        let mut rows = split_rows(&mut d_xs, dims.gate_width(), 1).remove(0);
        let grads = with_tensor_slice::<T, _>(w_hh, |w| {
            with_tensor_slice::<T, _>(grad_res, |d_out| {
                let d_out = Rows::dense(d_out, dims.hidden);
                Ok(backward_one(self.cell, saved, w, d_out, &mut rows))
            })
        })?;
        drop(rows);

        let device = xs.device();
        Ok((
            Some(Tensor::from_vec(d_xs, xs.shape(), device)?),
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

        let mut out = vec![T::zero(); dims.batch * dims.time * 2 * h];
        let saved = per_direction(self.parallel, split_rows(&mut out, h, 2), |d, mut rows| {
            let xs = Rows { data: xs, stride: 2 * gw, offset: d * gw };
            let inp = Inputs { xs, w_hh: &w[d * gw * h..][..gw * h], b_hh: &b[d * gw..][..gw] };
            let sched = Schedule::new(&self.lengths, d == 1);
            forward_one(self.cell, (inp, dims, sched), self.keep, &mut rows)
        })?;
        if let [Some(s0), Some(s1)] = <[_; 2]>::try_from(saved).unwrap_or([None, None]) {
            store(&self.saved, [s0, s1])?;
        }
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

        let mut d_xs = vec![T::zero(); dims.batch * dims.time * 2 * gw];
        let grads = with_tensor_slice::<T, _>(w_hh, |w| {
            with_tensor_slice::<T, _>(grad_res, |d_out| {
                per_direction(self.parallel, split_rows(&mut d_xs, gw, 2), |d, mut rows| {
                    let d_out = Rows { data: d_out, stride: 2 * h, offset: d * h };
                    let w = &w[d * gw * h..][..gw * h];
                    backward_one(self.cell, &saved[d], w, d_out, &mut rows)
                })
            })
        })?;

        let device = xs.device();
        let d_w: Vec<T> = grads.iter().flat_map(|g| g.d_w_hh.iter().copied()).collect();
        let d_b: Vec<T> = grads.iter().flat_map(|g| g.d_b_hh.iter().copied()).collect();
        Ok((
            Some(Tensor::from_vec(d_xs, xs.shape(), device)?),
            Some(Tensor::from_vec(d_w, w_hh.shape(), device)?),
            Some(Tensor::from_vec(d_b, b_hh.shape(), device)?),
        ))
    }
}
