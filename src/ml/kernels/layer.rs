//! A whole recurrent layer for training as one op: the input projection of every
//! direction and their recurrences, forward and backward.
//!
//! Run as two ops (the projection, then the recurrence), the `(B, T, D*G*H)` projection
//! is a tensor of the autograd graph: its gradient (16 MB per layer of the default
//! teacher) gets a zero-filled buffer and an addition from Candle, and the op keeps the
//! projection alive until the backward pass although nothing there reads it. Here it is
//! a buffer of the forward pass, and its gradient one of the backward pass, each written
//! in place by the directions (on two threads when allowed).
//!
//! Parameters travel in two tensors, as Candle's ops take at most three inputs:
//! - `w_ih` `(D, G*H, in)`, the directions' input weights stacked;
//! - `rec` `(D, G*H*H + 2*G*H)`: per direction `W_hh` (row-major), then `b_ih`, then
//!   `b_hh` ([`pack_recurrent`] builds it). For the LSTM and tanh cells `b_ih` and `b_hh`
//!   add to the same pre-activation, so the kernel adds their sum and both get the same
//!   gradient; the GRU scales the candidate gate's `b_hh` by the reset gate, so `b_ih`
//!   is added to the projection rows instead.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::activation::Real;
use super::cpu_op::{backward_one, cpu_slice, forward_one, per_direction, store, with_slices};
use super::projection::Projection;
use super::schedule::Schedule;
use super::sequence::{column_sums, split_rows, Dims, Grads, Inputs, Rows, Saved};
use super::{check_lengths, KernelError};
use crate::ml::config::CellKind;

/// The `rec` tensor of [`layer_train`] for one layer's directions, each given as
/// `(w_hh (G*H, H), b_ih (G*H), b_hh (G*H))`: `(D, G*H*H + 2*G*H)`.
///
/// # Errors
/// When the tensors do not share a dtype and device.
pub fn pack_recurrent(directions: &[(&Tensor, &Tensor, &Tensor)]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(3 * directions.len());
    for (w_hh, b_ih, b_hh) in directions {
        parts.extend([w_hh.flatten_all()?, (*b_ih).clone(), (*b_hh).clone()]);
    }
    Tensor::cat(&parts, 0)?.reshape((directions.len(), ()))
}

/// Whether [`layer_train`] runs on tensors like `xs` (CPU, `f32` or `f64`).
pub fn trains_fused(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && matches!(xs.dtype(), DType::F32 | DType::F64)
}

/// One recurrent layer of `D` (1 or 2) directions over inputs `xs` `(B*T, in)`, with
/// gradients for `xs`, `w_ih` `(D, G*H, in)` and `rec` (see the module docs).
///
/// Returns `(B, T, D*H)`: at every real position each direction's state, forward
/// direction first; 0 at padded positions. Equal to [`super::project_directions`]
/// followed by [`super::recurrent_layer`] or [`super::bidirectional_layer`], and it runs
/// the two directions on two threads when Candle may use more than one.
///
/// # Errors
/// A [`KernelError`] (wrapped) when shapes, lengths or dtypes do not fit, or the tensors
/// are not on the CPU with `f32`/`f64` (see [`trains_fused`]).
pub fn layer_train(
    xs: &Tensor,
    w_ih: &Tensor,
    rec: &Tensor,
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    (b, t): (usize, usize),
) -> Result<Tensor> {
    let shape = LayerShape::check((xs, w_ih, rec), cell, (b, t))?;
    check_lengths(lengths, b, t)?;
    if !trains_fused(xs) {
        return Err(KernelError::NotCpu.into());
    }
    let threads = candle_core::utils::get_num_threads();
    let (xs, w_ih, rec) = (xs.contiguous()?, w_ih.contiguous()?, rec.contiguous()?);
    let lengths = Arc::clone(lengths);
    match xs.dtype() {
        DType::F64 => xs.apply_op3(&w_ih, &rec, LayerOp::<f64>::new(shape, cell, lengths, threads)),
        _ => xs.apply_op3(&w_ih, &rec, LayerOp::<f32>::new(shape, cell, lengths, threads)),
    }
}

/// Sizes of one layer call.
#[derive(Debug, Clone, Copy)]
struct LayerShape {
    dims: Dims,
    directions: usize,
    input: usize,
}

impl LayerShape {
    /// Checks `xs (B*T, in)`, `w_ih (D, G*H, in)` and `rec (D, G*H*H + 2*G*H)`.
    fn check(
        (xs, w_ih, rec): (&Tensor, &Tensor, &Tensor),
        cell: CellKind,
        (batch, time): (usize, usize),
    ) -> std::result::Result<Self, KernelError> {
        let gates = cell.gates();
        let (x, w, r) = (xs.dims(), w_ih.dims(), rec.dims());
        let fits = match (x, w, r) {
            ([rows, inp], [d, gw, w_in], [rd, rw]) => {
                let hidden = gw / gates;
                *rows == batch * time
                    && (1..=2).contains(d)
                    && rd == d
                    && w_in == inp
                    && gw % gates == 0
                    && *rw == gw * hidden + 2 * gw
            }
            _ => false,
        };
        if !fits {
            let (xs_proj, w_hh, b_hh) = (x.to_vec(), w.to_vec(), r.to_vec());
            let directions = w.first().copied().unwrap_or(0);
            return Err(KernelError::Shape { cell, gates, directions, xs_proj, w_hh, b_hh });
        }
        let (dx, dw, dr) = (xs.dtype(), w_ih.dtype(), rec.dtype());
        if dx != dw || dx != dr {
            return Err(KernelError::DType { xs_proj: dx, w_hh: dw, b_hh: dr });
        }
        let hidden = w[1] / gates;
        let dims = Dims { batch, time, hidden, gates };
        Ok(Self { dims, directions: w[0], input: x[1] })
    }
}

/// One direction's parts of the `rec` tensor.
struct Recurrent<'a, T> {
    w_hh: &'a [T],
    b_ih: &'a [T],
    b_hh: &'a [T],
}

/// The op, with what its backward pass needs from the forward pass.
struct LayerOp<T> {
    shape: LayerShape,
    cell: CellKind,
    lengths: Arc<Vec<usize>>,
    threads: usize,
    saved: Mutex<Option<Vec<Saved<T>>>>,
}

impl<T: Real> LayerOp<T> {
    fn new(shape: LayerShape, cell: CellKind, lengths: Arc<Vec<usize>>, threads: usize) -> Self {
        Self { shape, cell, lengths, threads, saved: Mutex::new(None) }
    }

    fn projection(&self) -> Projection {
        let dims = self.shape.dims;
        Projection { batch: dims.batch, time: dims.time, threads: self.threads }
    }

    /// Whether the directions run on two threads.
    fn parallel(&self) -> bool {
        self.threads > 1 && self.shape.directions == 2
    }

    /// Direction `d`'s input weight, `(G*H, in)`.
    fn w_ih<'a>(&self, w_ih: &'a [T], d: usize) -> &'a [T] {
        let len = self.shape.dims.gate_width() * self.shape.input;
        &w_ih[d * len..][..len]
    }

    /// Direction `d`'s parts of `rec`.
    fn recurrent<'a>(&self, rec: &'a [T], d: usize) -> Recurrent<'a, T> {
        let (gw, h) = (self.shape.dims.gate_width(), self.shape.dims.hidden);
        let part = &rec[d * (gw * h + 2 * gw)..][..gw * h + 2 * gw];
        Recurrent { w_hh: &part[..gw * h], b_ih: &part[gw * h..][..gw], b_hh: &part[gw * h + gw..] }
    }

    /// The bias the recurrence adds at every step: `b_hh`, plus `b_ih` where the cell
    /// allows (for the GRU, `b_ih` went into the projection rows instead).
    fn step_bias(&self, rec: &Recurrent<'_, T>) -> Vec<T> {
        if self.cell == CellKind::Gru {
            return rec.b_hh.to_vec();
        }
        rec.b_ih.iter().zip(rec.b_hh).map(|(&a, &b)| a + b).collect()
    }

    /// The forward pass over slices: the `(B*T, D*H)` output; saves the directions'
    /// states for the backward pass.
    fn forward(&self, xs: &[T], w_ih: &[T], rec: &[T]) -> Result<Vec<T>> {
        let (dims, dirs) = (self.shape.dims, self.shape.directions);
        let (gw, h) = (dims.gate_width(), dims.hidden);

        // 1. The input projections of all steps and directions, side by side.
        let weights: Vec<&[T]> = (0..dirs).map(|d| self.w_ih(w_ih, d)).collect();
        let mut proj = self.projection().forward(xs, &weights, (self.shape.input, gw));
        let recs: Vec<Recurrent<'_, T>> = (0..dirs).map(|d| self.recurrent(rec, d)).collect();
        if self.cell == CellKind::Gru {
            add_row_bias(&mut proj, &recs);
        }

        // 2. The recurrences, each direction writing its block of every output row.
        let biases: Vec<Vec<T>> = recs.iter().map(|r| self.step_bias(r)).collect();
        let mut out = vec![T::zero(); dims.batch * dims.time * dirs * h];
        let saved =
            per_direction(self.parallel(), split_rows(&mut out, h, dirs), |d, mut rows| {
                let xs = Rows { data: &proj, stride: dirs * gw, offset: d * gw };
                let inp = Inputs { xs, w_hh: recs[d].w_hh, b_hh: &biases[d] };
                let sched = Schedule::new(&self.lengths, d == 1);
                forward_one(self.cell, (inp, dims, sched), true, &mut rows)
            })?;
        let saved = saved.into_iter().collect::<Option<Vec<_>>>();
        store(&self.saved, saved.ok_or(KernelError::NoForwardState)?)?;
        Ok(out)
    }

    /// The backward pass over slices: gradients of `xs`, `w_ih` and `rec`.
    fn backward(&self, xs: &[T], w_ih: &[T], rec: &[T], grad: &[T]) -> Result<[Vec<T>; 3]> {
        let guard = self.saved.lock().map_err(|_| KernelError::Poisoned)?;
        let saved = guard.as_ref().ok_or(KernelError::NoForwardState)?;
        let (dims, dirs) = (self.shape.dims, self.shape.directions);
        let (gw, h) = (dims.gate_width(), dims.hidden);

        // 1. Through the recurrences: the projection gradient, side by side.
        let mut d_proj = vec![T::zero(); dims.batch * dims.time * dirs * gw];
        let parts = split_rows(&mut d_proj, gw, dirs);
        let grads: Vec<Grads<T>> = per_direction(self.parallel(), parts, |d, mut rows| {
            let d_out = Rows { data: grad, stride: dirs * h, offset: d * h };
            let w_hh = self.recurrent(rec, d).w_hh;
            backward_one(self.cell, &saved[d], w_hh, d_out, &mut rows)
        })?;

        // 2. Through the projection.
        let weights: Vec<&[T]> = (0..dirs).map(|d| self.w_ih(w_ih, d)).collect();
        let (d_xs, d_ws) =
            self.projection().backward(xs, &weights, &d_proj, (self.shape.input, gw));

        // 3. The recurrent parameters, packed as `rec` is.
        let row_sums = (self.cell == CellKind::Gru).then(|| column_sums(&d_proj, dirs * gw));
        let mut d_rec = Vec::with_capacity(rec.len());
        for (d, g) in grads.iter().enumerate() {
            d_rec.extend_from_slice(&g.d_w_hh);
            match &row_sums {
                Some(sums) => d_rec.extend_from_slice(&sums[d * gw..][..gw]),
                None => d_rec.extend_from_slice(&g.d_b_hh),
            }
            d_rec.extend_from_slice(&g.d_b_hh);
        }
        Ok([d_xs, d_ws.concat(), d_rec])
    }
}

/// Adds each direction's `b_ih` to its block of every projection row.
fn add_row_bias<T: Real>(proj: &mut [T], recs: &[Recurrent<'_, T>]) {
    let gw = recs[0].b_ih.len();
    for (i, block) in proj.chunks_exact_mut(gw).enumerate() {
        let bias = recs[i % recs.len()].b_ih;
        block.iter_mut().zip(bias).for_each(|(x, &b)| *x += b);
    }
}

impl<T: Real> CustomOp3 for LayerOp<T> {
    fn name(&self) -> &'static str {
        "fused-recurrent-layer-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if BackendStorage::dtype(s1) != T::DTYPE {
            return Err(candle_core::Error::UnsupportedDTypeForOp(s1.dtype(), "layer"));
        }
        let (xs, w_ih, rec) = (cpu_slice::<T>(s1, l1)?, cpu_slice(s2, l2)?, cpu_slice(s3, l3)?);
        let out = self.forward(xs, w_ih, rec)?;
        let dims = self.shape.dims;
        let shape = Shape::from((dims.batch, dims.time, self.shape.directions * dims.hidden));
        Ok((T::to_cpu_storage_owned(out), shape))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w_ih: &Tensor,
        rec: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [d_xs, d_w, d_rec] =
            with_slices::<T, _>(&[xs, w_ih, rec, grad], |s| self.backward(s[0], s[1], s[2], s[3]))?;
        let device = xs.device();
        Ok((
            Some(Tensor::from_vec(d_xs, xs.shape(), device)?),
            Some(Tensor::from_vec(d_w, w_ih.shape(), device)?),
            Some(Tensor::from_vec(d_rec, rec.shape(), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Shapes, lengths and dtypes that do not fit are errors, not panics.
    #[test]
    fn arguments_that_do_not_fit_are_errors() {
        let (b, t, inp, h) = (2, 3, 4, 5);
        let gw = CellKind::Lstm.gates() * h;
        let xs = tensor(&[b * t, inp]);
        let (w_ih, rec) = (tensor(&[2, gw, inp]), tensor(&[2, gw * h + 2 * gw]));
        let lengths = Arc::new(vec![3, 1]);
        let run = |xs: &Tensor, w: &Tensor, r: &Tensor, lengths: &Arc<Vec<usize>>| {
            layer_train(xs, w, r, CellKind::Lstm, lengths, (b, t))
        };

        let out = run(&xs, &w_ih, &rec, &lengths).unwrap();
        assert_eq!(out.dims(), [b, t, 2 * h]);
        assert!(run(&tensor(&[b * t + 1, inp]), &w_ih, &rec, &lengths).is_err(), "rows");
        assert!(run(&xs, &tensor(&[2, gw, inp + 1]), &rec, &lengths).is_err(), "input width");
        assert!(run(&xs, &w_ih, &tensor(&[2, gw * h]), &lengths).is_err(), "packed width");
        assert!(run(&xs, &w_ih, &tensor(&[1, gw * h + 2 * gw]), &lengths).is_err(), "directions");
        assert!(run(&xs, &w_ih, &rec, &Arc::new(vec![3, 4])).is_err(), "length past T");
        assert!(run(&xs, &w_ih, &rec, &Arc::new(vec![3])).is_err(), "one length missing");
        let f64_rec = rec.to_dtype(DType::F64).unwrap();
        assert!(run(&xs, &w_ih, &f64_rec, &lengths).is_err(), "mixed dtypes");
    }

    /// `pack_recurrent` lays each direction out as `W_hh`, `b_ih`, `b_hh`.
    #[test]
    fn packing_follows_the_documented_layout() {
        let (w, b_ih, b_hh) = (tensor(&[8, 2]), tensor(&[8]), tensor(&[8]).affine(2.0, 1.0));
        let b_hh = b_hh.unwrap();
        let packed = pack_recurrent(&[(&w, &b_ih, &b_hh), (&w, &b_hh, &b_ih)]).unwrap();
        assert_eq!(packed.dims(), [2, 32]);
        let row: Vec<f32> = packed.get(1).unwrap().to_vec1().unwrap();
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&row[..16], &w[..]);
        assert_eq!(&row[16..24], &b_hh.to_vec1::<f32>().unwrap()[..]);
        assert_eq!(&row[24..], &b_ih.to_vec1::<f32>().unwrap()[..]);
    }
}
