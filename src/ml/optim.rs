//! Temporary AdamW with plain tensor ops (replaced by the fused in-place version on merge).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    /// Learning rate.
    pub learning_rate: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { learning_rate: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over named variables.
pub struct AdamW {
    vars: Vec<(String, Var, Tensor, Tensor)>,
    params: AdamWParams,
    step: usize,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|(n, v)| {
                let m = v.zeros_like()?;
                let s = v.zeros_like()?;
                Ok((n, v, m, s))
            })
            .collect::<Result<_>>()?;
        Ok(Self { vars, params, step: 0 })
    }

    /// Clips by global norm, then steps. Returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, max_norm: f64) -> Result<f64> {
        let mut sq = 0f64;
        for (_, v, _, _) in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        let scale = if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        for (_, v, m, s) in &mut self.vars {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            let g = g.affine(scale, 0.0)?;
            *m = ((m.affine(p.beta1, 0.0))? + g.affine(1.0 - p.beta1, 0.0)?)?;
            *s = ((s.affine(p.beta2, 0.0))? + g.sqr()?.affine(1.0 - p.beta2, 0.0)?)?;
            let denom = (s.affine(1.0 / bc2, 0.0)?.sqrt()? + p.eps)?;
            let update = (m.affine(1.0 / bc1, 0.0)? / denom)?;
            let decayed = v.as_tensor().affine(1.0 - p.learning_rate * p.weight_decay, 0.0)?;
            v.set(&(decayed - update.affine(p.learning_rate, 0.0)?)?)?;
        }
        Ok(norm)
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Changes the learning rate.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.learning_rate = lr;
    }

    /// State tensors for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (n, _, m, s) in &self.vars {
            out.push((format!("adam.m.{n}"), m.clone()));
            out.push((format!("adam.v.{n}"), s.clone()));
        }
        let dev =
            self.vars.first().map(|v| v.1.device().clone()).unwrap_or(candle_core::Device::Cpu);
        out.push(("adam.step".to_string(), Tensor::new(self.step as u32, &dev)?));
        Ok(out)
    }

    /// Restores state written by [`AdamW::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            tensors.get(k).cloned().ok_or_else(|| candle_core::Error::Msg(format!("missing {k}")))
        };
        for (n, _, m, s) in &mut self.vars {
            *m = get(&format!("adam.m.{n}"))?;
            *s = get(&format!("adam.v.{n}"))?;
        }
        self.step = get("adam.step")?.to_scalar::<u32>()? as usize;
        Ok(())
    }
}
