//! The classification head of the transformer teacher: standardize, then one linear layer.
//!
//! Pooled embeddings `(B, H)` are standardized with a per-feature mean and inverse standard
//! deviation (fitted on the training embeddings in frozen mode, the identity when fine-tuning,
//! where the embeddings move), then mapped to logits `(B, C)`. Standardizing lets one learning
//! rate suit encoders whose embedding scales differ. The weights start at zero: the head is the
//! last layer, so there is no symmetry to break, and the start does not depend on a seed.
//!
//! Saved as safetensors under the keys `head.weight` `(C, H)`, `head.bias` `(C)`, `scaler.mean`
//! `(H)` and `scaler.inv_std` `(H)`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::{Result, TransformerError};

/// Floor added to standard deviations so that constant features do not divide by zero.
const STD_FLOOR: f64 = 1e-6;

/// A standardizing linear classification head over pooled embeddings.
#[derive(Debug)]
pub struct LinearHead {
    weight: Var,
    bias: Var,
    mean: Tensor,
    inv_std: Tensor,
}

impl LinearHead {
    /// A zero-initialized head from `hidden` features to `labels` classes, with the identity
    /// scaler.
    ///
    /// # Errors
    /// A Candle error when the tensors cannot be made on `device`.
    pub fn new(hidden: usize, labels: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Var::zeros((labels, hidden), DType::F32, device)?,
            bias: Var::zeros(labels, DType::F32, device)?,
            mean: Tensor::zeros(hidden, DType::F32, device)?,
            inv_std: Tensor::ones(hidden, DType::F32, device)?,
        })
    }

    /// Fits the scaler to the mean and standard deviation of `features` `(N, H)`.
    ///
    /// # Errors
    /// A Candle error on a shape mismatch.
    pub fn fit_scaler(&mut self, features: &Tensor) -> Result<()> {
        let mean = features.mean(0)?;
        let centered = features.broadcast_sub(&mean)?;
        let std = centered.sqr()?.mean(0)?.sqrt()?;
        self.inv_std = (std + STD_FLOOR)?.recip()?;
        self.mean = mean;
        Ok(())
    }

    /// Number of classes.
    pub fn labels(&self) -> usize {
        self.bias.dims().first().copied().unwrap_or(0)
    }

    /// Logits `(B, C)` f32 of pooled embeddings `(B, H)`.
    ///
    /// # Errors
    /// A Candle error on a shape mismatch.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        let xs = pooled.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        Ok(xs.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())?)
    }

    /// The trainable variables (weight and bias).
    pub fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    /// Copies of the current weight and bias, for [`Self::restore`].
    ///
    /// # Errors
    /// A Candle error when the copy fails.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(vec![self.weight.as_tensor().copy()?, self.bias.as_tensor().copy()?])
    }

    /// Sets weight and bias back to a [`Self::snapshot`].
    ///
    /// # Errors
    /// A Candle error when the snapshot's shapes differ.
    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for (var, saved) in self.vars().iter().zip(snapshot) {
            var.set(saved)?;
        }
        Ok(())
    }

    /// Writes the head to a safetensors file.
    ///
    /// # Errors
    /// A Candle error when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = HashMap::from([
            ("head.weight", self.weight.as_tensor().clone()),
            ("head.bias", self.bias.as_tensor().clone()),
            ("scaler.mean", self.mean.clone()),
            ("scaler.inv_std", self.inv_std.clone()),
        ]);
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Reads a head written by [`Self::save`].
    ///
    /// # Errors
    /// [`TransformerError::InvalidInput`] when a key is missing or shapes disagree; a Candle
    /// error when the file cannot be read.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, device)?;
        let mut take = |key: &str| {
            tensors.remove(key).ok_or_else(|| {
                TransformerError::InvalidInput(format!("{} has no `{key}`", path.display()))
            })
        };
        let weight = take("head.weight")?;
        let bias = take("head.bias")?;
        let mean = take("scaler.mean")?;
        let inv_std = take("scaler.inv_std")?;

        let (labels, hidden) = weight.dims2()?;
        if bias.dims() != [labels] || mean.dims() != [hidden] || inv_std.dims() != [hidden] {
            return Err(TransformerError::InvalidInput(format!(
                "inconsistent head shapes in {}",
                path.display()
            )));
        }
        Ok(Self {
            weight: Var::from_tensor(&weight)?,
            bias: Var::from_tensor(&bias)?,
            mean,
            inv_std,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_standardizes_features() {
        let dev = Device::Cpu;
        let xs = Tensor::new(&[[1f32, 10.], [3., 30.]], &dev).unwrap();
        let mut head = LinearHead::new(2, 2, &dev).unwrap();
        head.fit_scaler(&xs).unwrap();
        head.weight.set(&Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).unwrap()).unwrap();
        let out = head.forward(&xs).unwrap().to_vec2::<f32>().unwrap();
        for (row, sign) in out.iter().zip([-1f32, 1.]) {
            for v in row {
                assert!((v - sign).abs() < 1e-4, "{out:?}");
            }
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let xs = Tensor::new(&[[1f32, 2., 3.], [4., 5., 7.]], &dev).unwrap();
        let mut head = LinearHead::new(3, 2, &dev).unwrap();
        head.fit_scaler(&xs).unwrap();
        head.bias.set(&Tensor::new(&[0.5f32, -0.5], &dev).unwrap()).unwrap();
        head.save(&dir.path().join("h.safetensors")).unwrap();
        let back = LinearHead::load(&dir.path().join("h.safetensors"), &dev).unwrap();
        assert_eq!(back.labels(), 2);
        let a = head.forward(&xs).unwrap().to_vec2::<f32>().unwrap();
        let b = back.forward(&xs).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
