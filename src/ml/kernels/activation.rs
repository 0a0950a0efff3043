//! Element types of the CPU kernels and their activation functions.
//!
//! [`Real`] is implemented for `f32` and `f64`. The `f32` sigmoid and tanh are branch-free
//! rational/polynomial approximations (relative error below about 5e-7) that the compiler can
//! vectorize, because the libm calls they replace were a large share of the step time. The
//! `f64` versions call the exact std functions, so that finite-difference gradient checks in
//! `f64` stay tight.

use candle_core::{CpuStorage, WithDType};

/// A float type the recurrent kernels and the fused optimizer run on (`f32` or `f64`).
pub(crate) trait Real: WithDType + Default + std::ops::Neg<Output = Self> {
    /// The logistic function `1 / (1 + exp(-x))`.
    fn sigmoid(self) -> Self;
    /// The hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The square root.
    fn sqrt(self) -> Self;
    /// The elements of a CPU storage of this type, mutably; `None` for another dtype.
    fn cpu_storage_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

impl Real for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }

    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }

    fn cpu_storage_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        match storage {
            CpuStorage::F64(data) => Some(data),
            _ => None,
        }
    }
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }

    #[inline(always)]
    fn tanh(self) -> Self {
        tanh_f32(self)
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }

    fn cpu_storage_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        match storage {
            CpuStorage::F32(data) => Some(data),
            _ => None,
        }
    }
}

/// `1.5 * 2^23`: adding it rounds a float of magnitude below 2^22 to an integer, which
/// then sits in the low mantissa bits.
const ROUNDING_SHIFT: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two parts; the high part has few enough bits that `n * LN2_HIGH` is exact.
const LN2_HIGH: f32 = 0.693_145_75;
const LN2_LOW: f32 = 1.428_606_8e-6;

/// `exp(x)` for `f32` without a libm call.
///
/// The argument is clamped to [-87, 87], which keeps `2^n` a normal float. The reduced
/// argument `r = x - n ln 2` lies in [-0.35, 0.35], where a degree-7 Taylor polynomial is
/// accurate to about 4e-9 before rounding.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = if x > 87.0 { 87.0 } else { x };
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * LOG2_E + ROUNDING_SHIFT;
    let n = shifted - ROUNDING_SHIFT;
    let r = x - n * LN2_HIGH - n * LN2_LOW;

    // Horner steps as fused multiply-adds: one instruction each where the vector
    // wrappers of `simd` enable FMA (a libm call on the baseline path, which only CPUs
    // without AVX2 and FMA take).
    let p: f32 = 1.0 / 5040.0;
    let p = p.mul_add(r, 1.0 / 720.0);
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);

    // The integer n is the low mantissa bits of `shifted`; build the float 2^n from it.
    let exponent = shifted.to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits()).wrapping_add(127);
    p * f32::from_bits(exponent << 23)
}

/// `tanh(x)` for `f32` without a libm call.
///
/// Below 0.5 in magnitude an odd Taylor polynomial up to x^13 keeps the relative error small
/// near zero (where `1 - 2 / (e^2x + 1)` would cancel); above, the exponential form is used.
/// Both are computed and one is selected, so the loop stays branch-free.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let a = if a > 9.0 { 9.0 } else { a };

    let large = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);

    let a2 = a * a;
    let p: f32 = 21_844.0 / 6_081_075.0;
    let p = p.mul_add(a2, -1_382.0 / 155_925.0);
    let p = p.mul_add(a2, 62.0 / 2_835.0);
    let p = p.mul_add(a2, -17.0 / 315.0);
    let p = p.mul_add(a2, 2.0 / 15.0);
    let p = p.mul_add(a2, -1.0 / 3.0);
    let small = (a * a2).mul_add(p, a);

    let t = if a < 0.5 { small } else { large };
    t.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(approx: f32, exact: f64) -> f64 {
        let diff = (approx as f64 - exact).abs();
        if exact.abs() < 1e-30 {
            diff
        } else {
            diff / exact.abs()
        }
    }

    #[test]
    fn fast_f32_activations_match_f64_to_about_1e_6() {
        let mut worst_tanh = 0f64;
        let mut worst_sigmoid = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst_tanh = worst_tanh.max(relative_error(Real::tanh(x), (x as f64).tanh()));
            worst_sigmoid =
                worst_sigmoid.max(relative_error(Real::sigmoid(x), Real::sigmoid(x as f64)));
        }
        assert!(worst_tanh < 1e-6, "tanh relative error {worst_tanh}");
        assert!(worst_sigmoid < 1e-6, "sigmoid relative error {worst_sigmoid}");
    }

    #[test]
    fn fast_f32_activations_saturate_without_nan() {
        for x in [-1e30f32, -500.0, -90.0, 90.0, 500.0, 1e30, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Real::tanh(x);
            let s = Real::sigmoid(x);
            assert!((t.abs() - 1.0).abs() < 1e-7, "tanh({x}) = {t}");
            assert!((0.0..=1.0).contains(&s), "sigmoid({x}) = {s}");
        }
        assert_eq!(Real::tanh(0f32), 0.0);
        assert!((Real::tanh(1e-20f32) - 1e-20).abs() < 1e-26);
        assert_eq!(Real::sigmoid(0f32), 0.5);
    }
}
