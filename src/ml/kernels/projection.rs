//! The input projection of a recurrent layer, `x @ W_ih^T` for each direction, written
//! side by side into the `(B, T, D*G*H)` tensor the recurrent kernels read.
//!
//! With Candle's ops this took two products, a concatenation (or one product with the
//! weights concatenated), a reshape and a transpose, and every one of those nodes adds a
//! zero-filled gradient buffer and an addition in the backward pass: for the default
//! teacher, two extra passes over a 16 MB gradient per layer and step. This op does the
//! products straight into and out of the final layouts, with a hand-written backward pass:
//! `dx = Σ_d dY_d @ W_d` and `dW_d = dY_d^T @ x`, where `dY_d` is direction `d`'s block
//! of columns of the output gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::activation::Real;
use super::cpu_op::{cpu_slice, with_slices};
use super::gemm::{matmul_strided, MatRef};

/// `(B, T, D*N)` projections of inputs `xs` `(B*T, in)` by the `D` (1 or 2) weights
/// `(N, in)` in `weights`: direction `d` fills columns `d*N..(d+1)*N`.
///
/// On the CPU with `f32`/`f64` one op with a fused backward pass (products on Candle's
/// thread count); elsewhere Candle's `matmul` with the weights concatenated.
///
/// # Errors
/// When there are not one or two weights, the shapes do not fit, or a product fails.
pub fn project_directions(
    xs: &Tensor,
    weights: &[&Tensor],
    (b, t): (usize, usize),
) -> Result<Tensor> {
    let fused = matches!(xs.device(), Device::Cpu) && matches!(xs.dtype(), DType::F32 | DType::F64);
    if !fused {
        let w = Tensor::cat(weights, 0)?;
        return xs.matmul(&w.t()?)?.reshape((b, t, ()));
    }

    let op = Projection { batch: b, time: t, threads: candle_core::utils::get_num_threads() };
    let xs = xs.contiguous()?;
    let track = xs.track_op() || weights.iter().any(|w| w.track_op());
    match weights {
        [w] => {
            let w = w.contiguous()?;
            if track {
                xs.apply_op2(&w, op)
            } else {
                xs.apply_op2_no_bwd(&w, &op)
            }
        }
        [w0, w1] => {
            let (w0, w1) = (w0.contiguous()?, w1.contiguous()?);
            if track {
                xs.apply_op3(&w0, &w1, op)
            } else {
                xs.apply_op3_no_bwd(&w0, &w1, &op)
            }
        }
        _ => Err(candle_core::Error::Msg(format!("{} directions to project", weights.len()))),
    }
}

/// The op: the batch and time sizes of the output, and the threads of the products.
#[derive(Debug, Clone, Copy)]
pub(super) struct Projection {
    /// Batch rows `B`.
    pub batch: usize,
    /// Time steps `T`.
    pub time: usize,
    /// Threads of rayon's pool the products may use.
    pub threads: usize,
}

impl Projection {
    /// Checks the shapes: `xs` `(B*T, in)`, each weight `(N, in)` with one `N`; returns
    /// `(in, N)`.
    fn check(&self, xs: &[usize], weights: &[&[usize]]) -> Result<(usize, usize)> {
        let bad = || candle_core::Error::Msg(format!("projection of {xs:?} by {weights:?}"));
        let [rows, inp] = *xs else { return Err(bad()) };
        let [n, w_in] = *weights[0] else { return Err(bad()) };
        let fits =
            rows == self.batch * self.time && w_in == inp && weights.iter().all(|w| *w == [n, inp]);
        if fits {
            Ok((inp, n))
        } else {
            Err(bad())
        }
    }

    /// The forward pass over slices: `(B*T, D*N)` row-major.
    pub(super) fn forward<T: Real>(
        &self,
        xs: &[T],
        weights: &[&[T]],
        (inp, n): (usize, usize),
    ) -> Vec<T> {
        let rows = self.batch * self.time;
        let width = weights.len() * n;
        let mut out = vec![T::zero(); rows * width];
        let x = MatRef::row_major(xs, rows, inp);
        for (d, w) in weights.iter().enumerate() {
            let w = MatRef::row_major(w, n, inp).t();
            matmul_strided(&mut out[d * n..], width, false, x, w, self.threads);
        }
        out
    }

    /// The backward pass over slices: the input gradient `(B*T, in)`, then each weight's.
    pub(super) fn backward<T: Real>(
        &self,
        xs: &[T],
        weights: &[&[T]],
        grad: &[T],
        (inp, n): (usize, usize),
    ) -> (Vec<T>, Vec<Vec<T>>) {
        let rows = self.batch * self.time;
        let width = weights.len() * n;
        let x = MatRef::row_major(xs, rows, inp);
        let mut d_xs = vec![T::zero(); rows * inp];
        let mut d_ws = Vec::with_capacity(weights.len());
        for (d, w) in weights.iter().enumerate() {
            let d_out = MatRef::strided(&grad[d * n..], rows, n, width);
            let w = MatRef::row_major(w, n, inp);
            matmul_strided(&mut d_xs, inp, d > 0, d_out, w, self.threads);

            let mut d_w = vec![T::zero(); n * inp];
            matmul_strided(&mut d_w, inp, false, d_out.t(), x, self.threads);
            d_ws.push(d_w);
        }
        (d_xs, d_ws)
    }

    /// The forward pass of one dtype on Candle storages.
    fn cpu_forward<T: Real>(
        &self,
        xs: (&CpuStorage, &Layout),
        weights: &[(&CpuStorage, &Layout)],
    ) -> Result<(CpuStorage, Shape)> {
        let shapes: Vec<&[usize]> = weights.iter().map(|(_, l)| l.dims()).collect();
        let sizes = self.check(xs.1.dims(), &shapes)?;
        let x = cpu_slice::<T>(xs.0, xs.1)?;
        let ws = weights.iter().map(|&(s, l)| cpu_slice::<T>(s, l)).collect::<Result<Vec<_>>>()?;
        let out = self.forward(x, &ws, sizes);
        let shape = Shape::from((self.batch, self.time, weights.len() * sizes.1));
        Ok((T::to_cpu_storage_owned(out), shape))
    }

    /// The backward pass of one dtype: gradients of `xs` and of each weight.
    fn tensor_backward<T: Real>(
        &self,
        xs: &Tensor,
        weights: &[&Tensor],
        grad: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let shapes: Vec<&[usize]> = weights.iter().map(|w| w.dims()).collect();
        let sizes = self.check(xs.dims(), &shapes)?;
        let mut all = vec![xs, grad];
        all.extend_from_slice(weights);
        let (d_xs, d_ws) =
            with_slices::<T, _>(&all, |s| Ok(self.backward(s[0], &s[2..], s[1], sizes)))?;

        let device = xs.device();
        let d_ws = d_ws
            .into_iter()
            .zip(weights)
            .map(|(d_w, w)| Tensor::from_vec(d_w, w.shape(), device))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::from_vec(d_xs, xs.shape(), device)?, d_ws))
    }

    /// Dispatches on the dtype of `xs`.
    fn cpu_dispatch(
        &self,
        xs: (&CpuStorage, &Layout),
        weights: &[(&CpuStorage, &Layout)],
    ) -> Result<(CpuStorage, Shape)> {
        match BackendStorage::dtype(xs.0) {
            DType::F32 => self.cpu_forward::<f32>(xs, weights),
            DType::F64 => self.cpu_forward::<f64>(xs, weights),
            other => Err(candle_core::Error::UnsupportedDTypeForOp(other, "projection")),
        }
    }

    /// Dispatches the backward pass on the dtype of `xs`.
    fn backward_dispatch(
        &self,
        xs: &Tensor,
        weights: &[&Tensor],
        grad: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        match xs.dtype() {
            DType::F32 => self.tensor_backward::<f32>(xs, weights, grad),
            DType::F64 => self.tensor_backward::<f64>(xs, weights, grad),
            other => Err(candle_core::Error::UnsupportedDTypeForOp(other, "projection")),
        }
    }
}

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "input-projection"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_dispatch((s1, l1), &[(s2, l2)])
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_xs, mut d_ws) = self.backward_dispatch(xs, &[w], grad)?;
        Ok((Some(d_xs), d_ws.pop()))
    }
}

impl CustomOp3 for Projection {
    fn name(&self) -> &'static str {
        "input-projection-bidirectional"
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
        self.cpu_dispatch((s1, l1), &[(s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w0: &Tensor,
        w1: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d_xs, d_ws) = self.backward_dispatch(xs, &[w0, w1], grad)?;
        let mut d_ws = d_ws.into_iter();
        Ok((Some(d_xs), d_ws.next(), d_ws.next()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    fn var(shape: (usize, usize), seed: u64) -> Var {
        let n = shape.0 * shape.1;
        let v: Vec<f64> =
            (0..n).map(|i| ((i as u64 * 7919 + seed * 104_729) as f64 * 0.013).sin()).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Values and gradients of the fused op against Candle's plain ops, for one and two
    /// directions.
    #[test]
    fn fused_projection_matches_plain_ops_in_values_and_gradients() {
        let (b, t, inp, n) = (3, 5, 7, 8);
        let xs = var((b * t, inp), 1);
        let ws = [var((n, inp), 2), var((n, inp), 3)];
        let weights = var((b * t, 2 * n), 4).as_tensor().reshape((b, t, 2 * n)).unwrap();
        for dirs in [1, 2] {
            let w: Vec<&Tensor> = ws[..dirs].iter().map(|w| w.as_tensor()).collect();
            let plain = {
                let cat = Tensor::cat(&w, 0).unwrap();
                xs.as_tensor().matmul(&cat.t().unwrap()).unwrap().reshape((b, t, ())).unwrap()
            };
            let fused = project_directions(xs.as_tensor(), &w, (b, t)).unwrap();
            assert_eq!(fused.dims(), plain.dims());

            let grads = |out: &Tensor| {
                let loss = (out * weights.narrow(2, 0, dirs * n).unwrap()).unwrap();
                let store = loss.sum_all().unwrap().backward().unwrap();
                let mut all = vec![store.get(xs.as_tensor()).unwrap().flatten_all().unwrap()];
                all.extend(w.iter().map(|w| store.get(w).unwrap().flatten_all().unwrap()));
                all
            };
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap()
            };
            let value_diff: f64 = diff(&fused, &plain).to_scalar().unwrap();
            assert!(value_diff < 1e-12, "{dirs} direction(s): values differ by {value_diff}");
            for (g_fused, g_plain) in grads(&fused).iter().zip(grads(&plain).iter()) {
                let d: f64 = diff(g_fused, g_plain).to_scalar().unwrap();
                assert!(d < 1e-12, "{dirs} direction(s): gradients differ by {d}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let xs = var((6, 4), 1);
        let (w, short) = (var((5, 4), 2), var((5, 3), 3));
        let err = project_directions(xs.as_tensor(), &[w.as_tensor()], (2, 2));
        assert!(err.is_err(), "rows are not B*T");
        let err = project_directions(xs.as_tensor(), &[w.as_tensor(), short.as_tensor()], (2, 3));
        assert!(err.is_err(), "weights of different widths");
    }
}
