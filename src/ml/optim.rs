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

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::ml::kernels::adam::AdamCoefficients;
use crate::ml::kernels::adam_op::{tensor_sum_of_squares, update_dense, update_rows, CompactRows};

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
        /// Candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// Gradient rows name a variable the optimizer does not hold.
    #[error("no optimized variable is named `{name}`")]
    UnknownVar {
        /// The name given.
        name: String,
    },
}

/// The gradient of an embedding table given as rows, for [`AdamW::step_with_rows`]:
/// table row `ids[i]` receives gradient row `i` (repeated ids are summed).
///
/// This lets the model look embeddings up outside autograd (a detached lookup fed
/// through a fresh `Var`, whose gradient are these rows), which spares Candle building,
/// zero-filling and accumulating a dense gradient as large as the table at every step.
#[derive(Debug, Clone, Copy)]
pub struct RowGradient<'a> {
    /// Name of the table variable, as given to [`AdamW::new`].
    pub name: &'a str,
    /// Table row of each gradient row.
    pub ids: &'a [u32],
    /// `(ids.len(), width)` gradient rows, same dtype as the table.
    pub rows: &'a Tensor,
}

/// Gradient rows prepared for one table.
enum PreparedRows {
    F32(CompactRows<f32>),
    F64(CompactRows<f64>),
    /// Scattered into a dense gradient (tensor path).
    Dense(Tensor),
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
        self.step_with_rows(grads, &[], max_norm)
    }

    /// [`AdamW::step`] where the gradients of some tables come as rows ([`RowGradient`])
    /// instead of from `grads` (a gradient for such a table in `grads` is ignored).
    ///
    /// The result is exactly that of [`AdamW::step`] with the dense gradient that the
    /// rows scatter to: every row of the table is updated (rows without gradient see a
    /// zero gradient, so their moments decay and their momentum still moves them). Only
    /// the dense gradient is never built. Repeated ids are summed in input order.
    ///
    /// # Errors
    /// [`OptimError::UnknownVar`] for a name the optimizer does not hold; Candle errors
    /// when rows do not fit their table or when reading gradients and updating fail.
    pub fn step_with_rows(
        &mut self,
        grads: &GradStore,
        rows: &[RowGradient<'_>],
        max_norm: f64,
    ) -> candle_core::Result<f64> {
        let prepared = self.prepare_rows(rows)?;
        let rows_sq: f64 = prepared.iter().map(|(_, sq)| sq).sum();
        let clip = max_norm > 0.0;
        let norm = if clip { (self.dense_sum_sq(grads, &prepared)? + rows_sq).sqrt() } else { 0.0 };
        let scale = if clip { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };

        self.steps += 1;
        let coef = coefficients(&self.params, self.steps, scale);
        let mut sum_sq = rows_sq;
        for (slot, (rows, _)) in self.slots.iter_mut().zip(&prepared) {
            match (rows, grads.get(slot.var.as_tensor())) {
                (Some(rows), _) => slot.update_rows(rows, &coef)?,
                (None, Some(grad)) => sum_sq += slot.update(grad, &coef)?,
                (None, None) => {}
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

    /// Per slot, in slot order: its prepared gradient rows if any, and their sum of
    /// squares (0 without rows).
    fn prepare_rows(
        &self,
        rows: &[RowGradient<'_>],
    ) -> candle_core::Result<Vec<(Option<PreparedRows>, f64)>> {
        let mut prepared: Vec<(Option<PreparedRows>, f64)> =
            (0..self.slots.len()).map(|_| (None, 0.0)).collect();
        for row_grad in rows {
            let i = self.slots.iter().position(|s| s.name == row_grad.name);
            let i = i.ok_or_else(|| OptimError::UnknownVar { name: row_grad.name.into() })?;
            let (rows, sq) = self.slots[i].prepare(row_grad)?;
            prepared[i] = (Some(rows), sq);
        }
        Ok(prepared)
    }

    /// Sum of squares of the dense gradients of the slots without gradient rows.
    fn dense_sum_sq(
        &self,
        grads: &GradStore,
        prepared: &[(Option<PreparedRows>, f64)],
    ) -> candle_core::Result<f64> {
        let mut sum_sq = 0.0;
        for (slot, (rows, _)) in self.slots.iter().zip(prepared) {
            if let (None, Some(grad)) = (rows, grads.get(slot.var.as_tensor())) {
                sum_sq += tensor_sum_of_squares(grad)?;
            }
        }
        Ok(sum_sq)
    }
}

impl Slot {
    /// Updates this parameter; returns the sum of squares of its (unclipped) gradient.
    fn update(&mut self, grad: &Tensor, coef: &AdamCoefficients) -> candle_core::Result<f64> {
        let layout_error = |source| {
            candle_core::Error::from(OptimError::Layout { name: self.name.clone(), source })
        };
        match &mut self.moments {
            Moments::F32 { m, v } => {
                update_dense(&self.var, grad, (m, v), coef).map_err(layout_error)
            }
            Moments::F64 { m, v } => {
                update_dense(&self.var, grad, (m, v), coef).map_err(layout_error)
            }
            Moments::Tensors { m, v } => {
                let sum_sq = tensor_sum_of_squares(grad)?;
                let (new_m, new_v) = update_with_tensors(&self.var, grad, m, v, coef)?;
                (*m, *v) = (new_m, new_v);
                Ok(sum_sq)
            }
        }
    }

    /// Prepares gradient rows for this table; returns them with their sum of squares.
    fn prepare(&self, grad: &RowGradient<'_>) -> candle_core::Result<(PreparedRows, f64)> {
        let table_rows = self.var.dims().first().copied().unwrap_or(0);
        Ok(match &self.moments {
            Moments::F32 { .. } => {
                let rows = CompactRows::new(grad.ids, grad.rows, table_rows)?;
                let sq = rows.sum_of_squares();
                (PreparedRows::F32(rows), sq)
            }
            Moments::F64 { .. } => {
                let rows = CompactRows::new(grad.ids, grad.rows, table_rows)?;
                let sq = rows.sum_of_squares();
                (PreparedRows::F64(rows), sq)
            }
            Moments::Tensors { .. } => {
                let rows = CompactRows::<f64>::new(
                    grad.ids,
                    &grad.rows.to_dtype(DType::F64)?,
                    table_rows,
                )?;
                let dense = rows.to_dense(self.var.as_tensor())?;
                (PreparedRows::Dense(dense), rows.sum_of_squares())
            }
        })
    }

    /// Updates this table from prepared gradient rows.
    fn update_rows(
        &mut self,
        rows: &PreparedRows,
        coef: &AdamCoefficients,
    ) -> candle_core::Result<()> {
        let layout_error = |source| {
            candle_core::Error::from(OptimError::Layout { name: self.name.clone(), source })
        };
        match (&mut self.moments, rows) {
            (Moments::F32 { m, v }, PreparedRows::F32(g)) => {
                update_rows(&self.var, g, (m, v), coef).map_err(layout_error)
            }
            (Moments::F64 { m, v }, PreparedRows::F64(g)) => {
                update_rows(&self.var, g, (m, v), coef).map_err(layout_error)
            }
            (_, PreparedRows::Dense(grad)) => self.update(grad, coef).map(|_| ()),
            _ => Err(candle_core::Error::msg("gradient rows prepared for another update path")),
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

    /// `sum((x + bias - 0.3)^2)` over looked-up rows `x`, and its gradients.
    fn lookup_loss(x: &Tensor, bias: &Var) -> GradStore {
        let y = x.broadcast_add(bias.as_tensor()).unwrap().affine(1.0, -0.3).unwrap();
        y.sqr().unwrap().sum_all().unwrap().backward().unwrap()
    }

    #[test]
    fn row_gradients_give_the_dense_step() {
        let ids = [3u32, 7, 3, 0, 9, 7];
        let ids_t = Tensor::new(&ids[..], &Device::Cpu).unwrap();
        let table: Vec<f64> = (0..40).map(|i| (i as f64 * 0.9).sin()).collect();
        for (dtype, in_place, max_norm) in [
            (DType::F32, true, 0.0),
            (DType::F64, true, 0.0),
            (DType::F64, true, 0.3),
            (DType::F64, false, 0.3),
        ] {
            let make = || {
                let emb = Tensor::from_vec(table.clone(), (10, 4), &Device::Cpu).unwrap();
                let bias = Tensor::new(&[0.1f64, -0.2, 0.3, 0.0], &Device::Cpu).unwrap();
                let var = |t: Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
                vec![("emb".to_string(), var(emb)), ("bias".to_string(), var(bias))]
            };
            let (dense_vars, row_vars) = (make(), make());
            let mut dense = AdamW::with_path(dense_vars.clone(), HP, in_place).unwrap();
            let mut by_rows = AdamW::with_path(row_vars.clone(), HP, in_place).unwrap();

            for _ in 0..3 {
                let x = dense_vars[0].1.index_select(&ids_t, 0).unwrap();
                let norm_dense = dense.step(&lookup_loss(&x, &dense_vars[1].1), max_norm).unwrap();

                let x = Var::from_tensor(&row_vars[0].1.index_select(&ids_t, 0).unwrap().detach());
                let x = x.unwrap();
                let grads = lookup_loss(x.as_tensor(), &row_vars[1].1);
                let rows = RowGradient { name: "emb", ids: &ids, rows: grads.get(&x).unwrap() };
                let norm_rows = by_rows.step_with_rows(&grads, &[rows], max_norm).unwrap();
                assert!((norm_dense - norm_rows).abs() < 1e-6 * norm_dense);
            }
            let (a, b) = (values(&dense_vars), values(&row_vars));
            if max_norm == 0.0 && in_place {
                assert_eq!(a, b, "{dtype:?}: bit for bit without clipping");
            } else {
                let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(diff < 1e-12, "{dtype:?} in_place={in_place}: {diff}");
            }
        }
    }

    #[test]
    fn row_gradients_for_an_unknown_table_are_rejected() {
        let vars = make_vars(DType::F32);
        let mut opt = AdamW::new(vars.clone(), HP).unwrap();
        let rows = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let grads = grads(&vars);
        let err = opt.step_with_rows(
            &grads,
            &[RowGradient { name: "nope", ids: &[0], rows: &rows }],
            0.0,
        );
        assert!(err.unwrap_err().to_string().contains("`nope`"));
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
