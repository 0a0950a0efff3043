//! The fused recurrent layer as a Candle custom op (CPU, `f32`/`f64`).
//!
//! [`SequenceOp`] runs the whole time loop of one layer direction inside `cpu_fwd` and its
//! whole backward pass inside `bwd`, so the autograd graph holds one node per layer instead
//! of a dozen per time step. What the backward pass needs is kept in the op itself.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::activation::Real;
use super::gru::Gru;
use super::lstm::Lstm;
use super::rnn::Rnn;
use super::schedule::Schedule;
use super::sequence::{backward, forward_infer, forward_train, Dims, Inputs, Saved};
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

    fn dims(&self, xs: &Layout, w_hh: &Layout) -> Dims {
        let (x, w) = (xs.dims(), w_hh.dims());
        Dims { batch: x[0], time: x[1], hidden: w[1], gates: self.cell.gates() }
    }
}

/// The contiguous elements of a CPU tensor of type `T`.
fn cpu_slice<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::wrap(KernelError::NotContiguous)),
    }
}

/// Runs `f` on the elements of a CPU tensor of type `T`, made contiguous first.
fn with_tensor_slice<T: Real, R>(
    tensor: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_slice::<T>(cpu, layout)?),
        _ => Err(candle_core::Error::wrap(KernelError::NotCpu)),
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
        let inp = Inputs { xs: cpu_slice(s1, l1)?, w_hh: cpu_slice(s2, l2)?, b_hh: cpu_slice(s3, l3)? };
        let dims = self.dims(l1, l2);
        let sched = Schedule::new(&self.lengths, self.reverse);

        let out = if self.keep {
            let (out, saved) = with_cell!(self.cell, C => forward_train::<T, C>(inp, dims, sched));
            *self.saved.lock().map_err(|_| candle_core::Error::wrap(KernelError::Poisoned))? =
                Some(saved);
            out
        } else {
            with_cell!(self.cell, C => forward_infer::<T, C>(inp, dims, &sched))
        };
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
        let guard = self.saved.lock().map_err(|_| candle_core::Error::wrap(KernelError::Poisoned))?;
        let saved = guard.as_ref().ok_or(candle_core::Error::wrap(KernelError::NoForwardState))?;

        let grads = with_tensor_slice::<T, _>(w_hh, |w| {
            with_tensor_slice::<T, _>(grad_res, |d_out| {
                Ok(with_cell!(self.cell, C => backward::<T, C>(saved, w, d_out)))
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
