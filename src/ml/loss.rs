//! Training losses: cross-entropy on labelled rows and the distillation terms.
//!
//! The student minimises `alpha * S + (1 - alpha) * CE`, where the soft term `S` is
//! `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))` (Hinton et al. 2015; the `T^2` keeps
//! its gradients on the scale of the CE term) or the mean squared error between logits
//! (Tang et al. 2019). KL takes the teacher's distribution as the target and is computed
//! from log-probabilities of both sides, never from probabilities.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::log_softmax;

use crate::ml::config::{DistillConfig, DistillLoss};

/// The loss of a batch and its parts, each a scalar tensor.
pub struct LossParts {
    /// What is minimised.
    pub total: Tensor,
    /// Cross-entropy over the labelled rows (0 when none is labelled).
    pub ce: Tensor,
    /// The soft-target term, `T^2 * KL` or MSE (0 without a teacher).
    pub distill: Tensor,
}

/// Mean cross-entropy over the rows where `mask` is 1.
///
/// `logits` `(B, C)`; `labels` `(B)` u32 (any value where masked out); `mask` `(B)` of
/// logits' dtype holding 1 for labelled rows and 0 for the others. Returns 0 when no row
/// is labelled.
///
/// # Errors
/// On shape mismatches.
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let log_p = log_softmax(logits, D::Minus1)?;
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let count = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1.0);
    (picked * mask)?.sum_all()?.affine(-1.0 / count, 0.0)
}

/// `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over rows.
///
/// # Errors
/// On shape mismatches.
pub fn kl_term(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let rows = student.dim(0)? as f64;
    let log_s = log_softmax(&student.affine(1.0 / temperature, 0.0)?, D::Minus1)?;
    let log_t = log_softmax(&teacher.affine(1.0 / temperature, 0.0)?, D::Minus1)?;
    let p_t = log_t.exp()?;
    let kl = (p_t * (log_t - log_s)?)?.sum_all()?;
    kl.affine(temperature * temperature / rows, 0.0)
}

/// Mean squared error between student and teacher logits, over rows and classes.
///
/// # Errors
/// On shape mismatches.
pub fn mse_term(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    (student - teacher)?.sqr()?.mean_all()
}

/// The student's loss for a batch.
///
/// `teacher` `(B, C)` are the frozen teacher's logits (no gradient flows into them).
///
/// # Errors
/// On shape mismatches.
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    config: &DistillConfig,
) -> Result<LossParts> {
    let teacher = teacher.detach();
    let ce = masked_cross_entropy(student, labels, mask)?;
    let distill = match config.loss {
        DistillLoss::Kl => kl_term(student, &teacher, config.temperature)?,
        DistillLoss::Mse => mse_term(student, &teacher)?,
    };
    let total = (distill.affine(config.alpha, 0.0)? + ce.affine(1.0 - config.alpha, 0.0)?)?;
    Ok(LossParts { total, ce, distill })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t2(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    // Hand computation for one row, student z_s = (0, 0), teacher z_t = (ln 3, 0), T = 1:
    // p_t = (3/4, 1/4), p_s = (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812.
    // With T = 2: z_t / 2 = (ln 3 / 2, 0), p_t = (sqrt3/(1+sqrt3), 1/(1+sqrt3)) =
    // (0.633975, 0.366025); KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.036341;
    // times T^2 = 4: 0.145363. CE with label 0 is ln 2 = 0.693147.
    #[test]
    fn hand_computed_values_with_temperature_and_alpha() {
        let student = t2(&[[0.0, 0.0]]);
        let teacher = t2(&[[3f32.ln(), 0.0]]);
        let labels = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32], &Device::Cpu).unwrap();

        assert!((scalar(&kl_term(&student, &teacher, 1.0).unwrap()) - 0.130812).abs() < 1e-5);
        assert!((scalar(&kl_term(&student, &teacher, 2.0).unwrap()) - 0.145363).abs() < 1e-5);

        let mut config = DistillConfig { temperature: 2.0, alpha: 1.0, ..Default::default() };
        let parts = distillation_loss(&student, &teacher, &labels, &mask, &config).unwrap();
        assert!((scalar(&parts.total) - 0.145363).abs() < 1e-5, "alpha 1 is only the soft term");
        config.alpha = 0.0;
        let parts = distillation_loss(&student, &teacher, &labels, &mask, &config).unwrap();
        assert!((scalar(&parts.total) - std::f64::consts::LN_2).abs() < 1e-5, "alpha 0 is only CE");
        config.alpha = 0.7;
        let parts = distillation_loss(&student, &teacher, &labels, &mask, &config).unwrap();
        let expected = 0.7 * 0.145363 + 0.3 * std::f64::consts::LN_2;
        assert!((scalar(&parts.total) - expected).abs() < 1e-5);
    }

    #[test]
    fn kl_is_zero_for_equal_logits_and_not_symmetric() {
        let a = t2(&[[1.0, -2.0], [0.5, 0.0]]);
        let b = t2(&[[0.0, 1.0], [3.0, 0.0]]);
        assert!(scalar(&kl_term(&a, &a, 3.0).unwrap()).abs() < 1e-6);
        let ab = scalar(&kl_term(&a, &b, 1.0).unwrap());
        let ba = scalar(&kl_term(&b, &a, 1.0).unwrap());
        assert!((ab - ba).abs() > 1e-3, "the teacher is the target: arguments matter");
    }

    #[test]
    fn unlabelled_rows_do_not_count_in_ce_and_mse_is_plain() {
        let logits = t2(&[[0.0, 0.0], [5.0, -5.0]]);
        let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32, 0.0], &Device::Cpu).unwrap();
        let ce = scalar(&masked_cross_entropy(&logits, &labels, &mask).unwrap());
        assert!((ce - 2f64.ln()).abs() < 1e-5);
        let none = Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        assert_eq!(scalar(&masked_cross_entropy(&logits, &labels, &none).unwrap()), 0.0);
        let mse = scalar(&mse_term(&t2(&[[1.0, 2.0]]), &t2(&[[0.0, 0.0]])).unwrap());
        assert!((mse - 2.5).abs() < 1e-6);
    }
}
