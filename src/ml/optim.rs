//! AdamW with global gradient-norm clipping, updating parameters in place.
//!
//! The trainer calls [`AdamW::step`] once per batch with the gradients of the loss. On the
//! CPU with `f32`/`f64` parameters, each parameter is updated in one pass over its
//! elements by a Candle in-place op, with the first and second moments held in the
//! optimizer's own buffers: no temporary tensor is built per parameter (Candle's own
//! `AdamW` builds several, which was more than half of a student training step). Other
//! devices and dtypes (CUDA) use plain tensor ops and `Var::set`.
//!
//! The update follows PyTorch's `AdamW` (decoupled weight decay, bias-corrected moments)
//! and `clip_grad_norm_`. [`AdamW::state`] and [`AdamW::load_state`] carry the moments
//! and step count through checkpoints, so a resumed run continues bit for bit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};

use crate::ml::kernels::adam::{adam_update, sum_of_squares, AdamCoefficients};
use crate::ml::kernels::Real;

/// Errors of the optimizer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A checkpoint lacks the optimizer state of a parameter.
    #[error("optimizer state `{name}` is missing")]
    MissingState {
        /// Tensor name looked for.
        name: String,
    },
    /// A checkpoint's optimizer state has the wrong shape.
    #[error("optimizer state `{name}` has shape {found:?}, expected {expected:?}")]
    StateShape {
        /// Tensor name.
        name: String,
        /// Shape of the parameter.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// The saved step count is not a non-negative integer.
    #[error("optimizer step count {0} is not a non-negative integer")]
    StepCount(f64),
    /// A parameter or gradient is strided or of another dtype than the optimizer expects.
    #[error("parameter `{name}` or its gradient cannot be updated in place")]
    Layout {
        /// Parameter name.
        name: String,
    },
}

impl From<OptimError> for candle_core::Error {
    fn from(err: OptimError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// Hyper-parameters of [`AdamW`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Step size (default 1e-3).
    pub learning_rate: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay per unit of learning rate (default 0).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { learning_rate: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of one parameter.
enum Moments {
    /// In-place path: plain buffers, one element per parameter element.
    F32 { m: Vec<f32>, v: Vec<f32> },
    /// In-place path for `f64` parameters.
    F64 { m: Vec<f64>, v: Vec<f64> },
    /// Tensor path (any device and dtype).
    Tensors { m: Tensor, v: Tensor },
}

/// One parameter and its optimizer state.
struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// The constants of step number `step` (from 1), with clipping scale `scale`.
fn coefficients(p: &AdamWParams, step: usize, scale: f64) -> AdamCoefficients {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    AdamCoefficients {
        scale,
        beta1: p.beta1,
        beta2: p.beta2,
        decay: 1.0 - p.learning_rate * p.weight_decay,
        step_size: p.learning_rate / (1.0 - p.beta1.powi(t)),
        inv_sqrt_bc2: 1.0 / (1.0 - p.beta2.powi(t)).sqrt(),
        eps: p.eps,
    }
}

/// AdamW over a fixed list of named parameters.
pub struct AdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    steps: usize,
}

impl AdamW {
    /// An optimizer for these named variables, with zero moments and no steps taken.
    ///
    /// # Errors
    /// Candle errors when allocating the moment tensors of the tensor path.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> candle_core::Result<Self> {
        Self::with_path(vars, params, true)
    }

    /// As [`AdamW::new`]; `in_place` false forces the tensor path (for tests).
    fn with_path(
        vars: Vec<(String, Var)>,
        params: AdamWParams,
        in_place: bool,
    ) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = new_moments(&var, in_place)?;
                Ok(Slot { name, var, moments })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { slots, params, steps: 0 })
    }

    /// Clips the gradients by their global L2 norm when `max_norm > 0`, then takes one
    /// AdamW step; returns the global norm before clipping.
    ///
    /// Clipping follows PyTorch's `clip_grad_norm_`: gradients are multiplied by
    /// `min(1, max_norm / (norm + 1e-6))`. Variables without a gradient in `grads` are
    /// left alone (their moments do not decay), but the shared step count advances.
    ///
    /// # Errors
    /// Candle errors from reading gradients or updating parameters.
    pub fn step(&mut self, grads: &GradStore, max_norm: f64) -> candle_core::Result<f64> {
        let clip = max_norm > 0.0;
        let norm = if clip { self.grad_norm(grads)? } else { 0.0 };
        let scale = if clip { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };

        self.steps += 1;
        let coef = coefficients(&self.params, self.steps, scale);
        let mut sum_sq = 0.0;
        for slot in &mut self.slots {
            if let Some(grad) = grads.get(slot.var.as_tensor()) {
                sum_sq += slot.update(grad, &coef)?;
            }
        }
        Ok(if clip { norm } else { sum_sq.sqrt() })
    }

    /// Number of steps taken (restored by [`AdamW::load_state`]).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Changes the learning rate used by the following steps (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.learning_rate = lr;
    }

    /// The hyper-parameters in use.
    pub fn params(&self) -> &AdamWParams {
        &self.params
    }

    /// The optimizer state for a checkpoint: `adam.m.<name>` and `adam.v.<name>` per
    /// variable (its shape, dtype and device) and `adam.step`, an `f64` scalar on the CPU.
    ///
    /// # Errors
    /// Candle errors when building the tensors.
    pub fn state(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for slot in &self.slots {
            let (shape, device) = (slot.var.shape(), slot.var.device());
            let (m, v) = match &slot.moments {
                Moments::F32 { m, v } => {
                    (Tensor::from_slice(m, shape, device)?, Tensor::from_slice(v, shape, device)?)
                }
                Moments::F64 { m, v } => {
                    (Tensor::from_slice(m, shape, device)?, Tensor::from_slice(v, shape, device)?)
                }
                Moments::Tensors { m, v } => (m.copy()?, v.copy()?),
            };
            out.push((format!("adam.m.{}", slot.name), m));
            out.push((format!("adam.v.{}", slot.name), v));
        }
        out.push(("adam.step".to_string(), Tensor::new(self.steps as f64, &Device::Cpu)?));
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state`] exactly. Nothing changes on error.
    ///
    /// # Errors
    /// [`OptimError::MissingState`] or [`OptimError::StateShape`] when a variable's moments
    /// are absent or misshaped, [`OptimError::StepCount`] for a bad step; Candle errors.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        let steps = read_step(tensors)?;
        let loaded = self
            .slots
            .iter()
            .map(|slot| {
                let m = read_moment(tensors, &format!("adam.m.{}", slot.name), &slot.var)?;
                let v = read_moment(tensors, &format!("adam.v.{}", slot.name), &slot.var)?;
                moments_like(&slot.moments, m, v)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;

        for (slot, moments) in self.slots.iter_mut().zip(loaded) {
            slot.moments = moments;
        }
        self.steps = steps;
        Ok(())
    }

    /// Global L2 norm of all gradients of the optimizer's variables.
    fn grad_norm(&self, grads: &GradStore) -> candle_core::Result<f64> {
        let mut sum_sq = 0.0;
        for slot in &self.slots {
            if let Some(grad) = grads.get(slot.var.as_tensor()) {
                sum_sq += tensor_sum_of_squares(grad)?;
            }
        }
        Ok(sum_sq.sqrt())
    }
}

impl Slot {
    /// Updates this parameter; returns the sum of squares of its (unclipped) gradient.
    fn update(&mut self, grad: &Tensor, coef: &AdamCoefficients) -> candle_core::Result<f64> {
        match &mut self.moments {
            Moments::F32 { m, v } => update_in_place(&self.name, &self.var, grad, m, v, coef),
            Moments::F64 { m, v } => update_in_place(&self.name, &self.var, grad, m, v, coef),
            Moments::Tensors { m, v } => {
                let sum_sq = tensor_sum_of_squares(grad)?;
                let (new_m, new_v) = update_with_tensors(&self.var, grad, m, v, coef)?;
                (*m, *v) = (new_m, new_v);
                Ok(sum_sq)
            }
        }
    }
}

/// Zero moments for a variable: buffers for the in-place path, else tensors.
fn new_moments(var: &Var, in_place: bool) -> candle_core::Result<Moments> {
    let n = var.elem_count();
    Ok(match (var.device(), var.dtype(), in_place) {
        (Device::Cpu, DType::F32, true) => Moments::F32 { m: vec![0.0; n], v: vec![0.0; n] },
        (Device::Cpu, DType::F64, true) => Moments::F64 { m: vec![0.0; n], v: vec![0.0; n] },
        _ => Moments::Tensors { m: var.zeros_like()?, v: var.zeros_like()? },
    })
}

/// Moments of the same kind as `like` from loaded tensors.
fn moments_like(like: &Moments, m: Tensor, v: Tensor) -> candle_core::Result<Moments> {
    let flat = |t: &Tensor, dtype| t.to_dtype(dtype)?.flatten_all()?.to_device(&Device::Cpu);
    Ok(match like {
        Moments::F32 { .. } => Moments::F32 {
            m: flat(&m, DType::F32)?.to_vec1()?,
            v: flat(&v, DType::F32)?.to_vec1()?,
        },
        Moments::F64 { .. } => Moments::F64 {
            m: flat(&m, DType::F64)?.to_vec1()?,
            v: flat(&v, DType::F64)?.to_vec1()?,
        },
        Moments::Tensors { m: old, .. } => Moments::Tensors {
            m: m.to_dtype(old.dtype())?.to_device(old.device())?,
            v: v.to_dtype(old.dtype())?.to_device(old.device())?,
        },
    })
}

/// One saved moment tensor, checked against the variable's shape.
fn read_moment(
    tensors: &HashMap<String, Tensor>,
    name: &str,
    var: &Var,
) -> candle_core::Result<Tensor> {
    let tensor = tensors.get(name).ok_or_else(|| OptimError::MissingState { name: name.into() })?;
    if tensor.dims() != var.dims() {
        let (expected, found) = (var.dims().to_vec(), tensor.dims().to_vec());
        return Err(OptimError::StateShape { name: name.into(), expected, found }.into());
    }
    Ok(tensor.clone())
}

/// The saved step count.
fn read_step(tensors: &HashMap<String, Tensor>) -> candle_core::Result<usize> {
    let name = "adam.step";
    let tensor = tensors.get(name).ok_or_else(|| OptimError::MissingState { name: name.into() })?;
    let values: Vec<f64> = tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    match values.as_slice() {
        [step] if *step >= 0.0 && step.fract() == 0.0 && *step < 9e15 => Ok(*step as usize),
        [step] => Err(OptimError::StepCount(*step).into()),
        _ => Err(OptimError::StepCount(f64::NAN).into()),
    }
}

/// Sum of squares of a tensor's elements, in `f64`.
fn tensor_sum_of_squares(t: &Tensor) -> candle_core::Result<f64> {
    if matches!(t.device(), Device::Cpu) {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let range = layout.contiguous_offsets();
            match (cpu, range) {
                (CpuStorage::F32(d), Some((a, b))) => return Ok(sum_of_squares(&d[a..b])),
                (CpuStorage::F64(d), Some((a, b))) => return Ok(sum_of_squares(&d[a..b])),
                _ => {}
            }
        }
    }
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// The in-place AdamW update of one CPU parameter, as a Candle in-place op.
struct InPlaceUpdate<'a, T> {
    m: RefCell<&'a mut [T]>,
    v: RefCell<&'a mut [T]>,
    coef: AdamCoefficients,
    /// Sum of squares of the gradient, filled by `cpu_fwd`.
    sum_sq: Cell<f64>,
}

/// Updates `var` in place with its moment buffers; returns the gradient's sum of squares.
fn update_in_place<T: Real>(
    name: &str,
    var: &Var,
    grad: &Tensor,
    m: &mut [T],
    v: &mut [T],
    coef: &AdamCoefficients,
) -> candle_core::Result<f64> {
    let grad = grad.contiguous()?;
    let op = InPlaceUpdate {
        m: RefCell::new(m),
        v: RefCell::new(v),
        coef: *coef,
        sum_sq: Cell::new(0.0),
    };
    var.as_tensor()
        .inplace_op2(&grad, &op)
        .map_err(|_| candle_core::Error::from(OptimError::Layout { name: name.to_string() }))?;
    Ok(op.sum_sq.get())
}

impl<T: Real> InplaceOp2 for InPlaceUpdate<'_, T> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw-in-place needs contiguous tensors")
        };
        let param = T::cpu_storage_mut(s1).ok_or_else(|| candle_core::Error::msg("dtype"))?;
        let (param, grad) = (&mut param[p0..p1], &T::cpu_storage_as_slice(s2)?[g0..g1]);
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        if grad.len() != param.len() || m.len() != param.len() || v.len() != param.len() {
            candle_core::bail!("adamw-in-place: parameter, gradient and moments differ in size")
        }

        self.sum_sq.set(adam_update(param, grad, &mut m, &mut v, &self.coef));
        Ok(())
    }
}

/// The AdamW update in tensor ops; sets the variable and returns the new moments.
fn update_with_tensors(
    var: &Var,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: &AdamCoefficients,
) -> candle_core::Result<(Tensor, Tensor)> {
    let g = grad.affine(c.scale, 0.0)?;
    let m = (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
    let v = (v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
    let denom = v.sqrt()?.affine(c.inv_sqrt_bc2, c.eps)?;
    let p = (var.as_tensor().affine(c.decay, 0.0)? - (m.div(&denom)?.affine(c.step_size, 0.0))?)?;
    var.set(&p)?;
    Ok((m, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HP: AdamWParams =
        AdamWParams { learning_rate: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };

    /// PyTorch's AdamW written out element by element, with `clip_grad_norm_` scaling.
    fn scalar_step(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: i32, scale: f64) {
        let (bc1, bc2) = (1.0 - HP.beta1.powi(t), 1.0 - HP.beta2.powi(t));
        for i in 0..p.len() {
            let g = g[i] * scale;
            p[i] *= 1.0 - HP.learning_rate * HP.weight_decay;
            m[i] = HP.beta1 * m[i] + (1.0 - HP.beta1) * g;
            v[i] = HP.beta2 * v[i] + (1.0 - HP.beta2) * g * g;
            p[i] -= HP.learning_rate / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + HP.eps);
        }
    }

    fn start_values() -> (Vec<f64>, Vec<f64>) {
        let a = (0..12).map(|i| (i as f64 * 0.7).sin() * 2.0).collect();
        let b = (0..5).map(|i| (i as f64 * 1.3).cos()).collect();
        (a, b)
    }

    fn make_vars(dtype: DType) -> Vec<(String, Var)> {
        let (a, b) = start_values();
        let a = Tensor::from_vec(a, (3, 4), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let b = Tensor::from_vec(b, 5, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        vec![
            ("a".into(), Var::from_tensor(&a).unwrap()),
            ("b".into(), Var::from_tensor(&b).unwrap()),
        ]
    }

    /// Gradients of `sum((x - 0.3)^2) * 1.5` over the variables: `3 * (x - 0.3)`.
    fn grads(vars: &[(String, Var)]) -> GradStore {
        let loss = vars
            .iter()
            .map(|(_, v)| {
                v.as_tensor().affine(1.0, -0.3).unwrap().sqr().unwrap().sum_all().unwrap()
            })
            .reduce(|x, y| (x + y).unwrap())
            .unwrap();
        loss.affine(1.5, 0.0).unwrap().backward().unwrap()
    }

    fn values(vars: &[(String, Var)]) -> Vec<f64> {
        let flat =
            |v: &Var| v.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        vars.iter().flat_map(|(_, v)| flat(v)).collect::<Vec<f64>>()
    }

    /// Runs five steps with clipping at `max_norm` and compares with the scalar version.
    fn check_against_scalar(vars: Vec<(String, Var)>, in_place: bool, max_norm: f64, tol: f64) {
        let mut opt = AdamW::with_path(vars.clone(), HP, in_place).unwrap();
        let (a, b) = start_values();
        let mut p: Vec<f64> = a.into_iter().chain(b).collect();
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);

        for t in 1..=5 {
            let g: Vec<f64> = p.iter().map(|x| 3.0 * (x - 0.3)).collect();
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
            scalar_step(&mut p, &mut m, &mut v, &g, t, scale);

            let got_norm = opt.step(&grads(&vars), max_norm).unwrap();
            assert!((got_norm - norm).abs() < tol * norm, "step {t}: norm {got_norm} vs {norm}");
            let diff = values(&vars).iter().zip(&p).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(diff < tol, "step {t}: parameters differ by {diff}");
        }
        assert_eq!(opt.steps(), 5);
    }

    #[test]
    fn in_place_and_tensor_paths_match_scalar_adamw_with_clipping_and_decay() {
        check_against_scalar(make_vars(DType::F64), true, 0.5, 1e-12);
        check_against_scalar(make_vars(DType::F64), false, 0.5, 1e-12);
        check_against_scalar(make_vars(DType::F64), true, 0.0, 1e-12);
        check_against_scalar(make_vars(DType::F32), true, 0.5, 2e-6);
        check_against_scalar(make_vars(DType::F32), false, 0.0, 2e-6);
    }

    #[test]
    fn variables_without_gradient_are_left_alone() {
        let vars = make_vars(DType::F32);
        let mut opt = AdamW::new(vars.clone(), HP).unwrap();
        let before = values(&vars[1..]);
        opt.step(&grads(&vars[..1]), 1.0).unwrap();
        assert_eq!(values(&vars[1..]), before);
        assert_ne!(values(&vars[..1]), values(&make_vars(DType::F32)[..1]));
    }

    #[test]
    fn state_round_trip_resumes_bit_identically() {
        for in_place in [true, false] {
            let vars = make_vars(DType::F32);
            let mut opt = AdamW::with_path(vars.clone(), HP, in_place).unwrap();
            for _ in 0..3 {
                opt.step(&grads(&vars), 0.7).unwrap();
            }

            // A second optimizer over copies of the parameters, restored from the state.
            let state: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
            let copies: Vec<(String, Var)> = vars
                .iter()
                .map(|(n, v)| {
                    (n.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
                })
                .collect();
            let mut resumed = AdamW::with_path(copies.clone(), HP, in_place).unwrap();
            resumed.load_state(&state).unwrap();
            assert_eq!(resumed.steps(), 3);

            for _ in 0..2 {
                opt.step(&grads(&vars), 0.7).unwrap();
                resumed.step(&grads(&copies), 0.7).unwrap();
            }
            assert_eq!(values(&vars), values(&copies), "in_place={in_place}");
        }
    }

    #[test]
    fn load_state_rejects_missing_or_misshaped_state() {
        let vars = make_vars(DType::F32);
        let mut opt = AdamW::new(vars.clone(), HP).unwrap();
        let mut state: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
        state.remove("adam.v.b");
        let err = opt.load_state(&state).unwrap_err().to_string();
        assert!(err.contains("`adam.v.b` is missing"), "{err}");

        let wrong = Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap();
        state.insert("adam.v.b".into(), wrong);
        let err = opt.load_state(&state).unwrap_err().to_string();
        assert!(err.contains("has shape [7]"), "{err}");
    }

    /// Prints the step time for a 20000 x 64 embedding; run as the kernels' timing report
    /// (`cargo test --release --lib report_adamw -- --ignored --nocapture`).
    #[test]
    #[ignore = "timing report, not a test; see the doc comment for how to run it"]
    fn report_adamw_step_time() {
        let data: Vec<f32> = (0..20_000 * 64).map(|i| (i as f32 * 1e-3).sin()).collect();
        let var =
            Var::from_tensor(&Tensor::from_vec(data, (20_000, 64), &Device::Cpu).unwrap()).unwrap();
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let mut opt = AdamW::new(vec![("emb".into(), var)], AdamWParams::default()).unwrap();
        for max_norm in [0.0, 1.0] {
            let ms = crate::ml::kernels::tests::time_ms(20, || {
                opt.step(&store, max_norm).unwrap();
            });
            println!("AdamW step, 20000 x 64 f32, max_norm {max_norm}: {ms:.3} ms of CPU time");
        }
    }
}
