//! The element loops of the fused AdamW step (`crate::ml::optim`).
//!
//! One pass over a parameter reads its gradient and both moments and writes the three
//! back; the same pass sums the squared gradient, which the optimizer reports as the
//! gradient norm. Work goes in blocks small enough to stay in cache between the update
//! and the sum. Loops are written out (no iterator closures) so that they compile inside
//! the AVX2 wrapper of [`vectorized`].

use super::activation::Real;
use super::simd::{vectorized, VectorLoop};

/// Elements per block: the block stays in the L1/L2 cache between the update and the sum
/// of squares, and partial sums in `T` stay accurate.
const BLOCK: usize = 2048;

/// Per-step constants of one AdamW update, shared by all parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamCoefficients {
    /// Gradient scale from clipping (1 when not clipped).
    pub scale: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Decoupled weight decay factor, `1 - lr * weight_decay`.
    pub decay: f64,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_sqrt_bc2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

/// Updates `param`, `m` and `v` (all of the gradient's length) in place; returns the sum
/// of squares of `grad` (before scaling), in `f64`.
///
/// Per element: `g = scale * grad`, `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g²`,
/// `param = decay * param - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)`.
///
/// # Panics
/// When the four slices differ in length.
pub(crate) fn adam_update<T: Real>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    coef: &AdamCoefficients,
) -> f64 {
    let n = grad.len();
    assert!(param.len() == n && m.len() == n && v.len() == n, "adam buffers differ in length");
    vectorized(AdamLoop { param, grad, m, v, c: Scalars::new(coef) })
}

/// Sum of squares of `data`, accumulated in `T` within blocks and in `f64` across them.
pub(crate) fn sum_of_squares<T: Real>(data: &[T]) -> f64 {
    vectorized(SumOfSquares(data))
}

/// The loop of [`sum_of_squares`].
struct SumOfSquares<'a, T>(&'a [T]);

impl<T: Real> VectorLoop for SumOfSquares<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let mut total = 0.0;
        for block in self.0.chunks(BLOCK) {
            total += block_sum_sq(block).to_f64();
        }
        total
    }
}

/// Sum of squares of one block, in `T`.
#[inline(always)]
fn block_sum_sq<T: Real>(data: &[T]) -> T {
    // Eight partial sums let the loop vectorize (float addition is not associative).
    let mut acc = [T::zero(); 8];
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let mut sum = T::zero();
    for &x in chunks.remainder() {
        sum += x * x;
    }
    for x in acc {
        sum += x;
    }
    sum
}

/// [`AdamCoefficients`] converted to the element type.
struct Scalars<T> {
    scale: T,
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    decay: T,
    step_size: T,
    inv_sqrt_bc2: T,
    eps: T,
}

impl<T: Real> Scalars<T> {
    fn new(c: &AdamCoefficients) -> Self {
        Self {
            scale: T::from_f64(c.scale),
            beta1: T::from_f64(c.beta1),
            one_minus_beta1: T::from_f64(1.0 - c.beta1),
            beta2: T::from_f64(c.beta2),
            one_minus_beta2: T::from_f64(1.0 - c.beta2),
            decay: T::from_f64(c.decay),
            step_size: T::from_f64(c.step_size),
            inv_sqrt_bc2: T::from_f64(c.inv_sqrt_bc2),
            eps: T::from_f64(c.eps),
        }
    }
}

/// The update loop of one parameter.
struct AdamLoop<'a, T> {
    param: &'a mut [T],
    grad: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
    c: Scalars<T>,
}

impl<T: Real> VectorLoop for AdamLoop<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let mut total = 0.0;
        let mut start = 0;
        while start < self.grad.len() {
            let end = (start + BLOCK).min(self.grad.len());
            let g = &self.grad[start..end];
            let (p, m, v) =
                (&mut self.param[start..end], &mut self.m[start..end], &mut self.v[start..end]);
            update_block(p, g, m, v, &self.c);
            total += block_sum_sq(g).to_f64();
            start = end;
        }
        total
    }
}

/// The AdamW update of one block of elements.
#[inline(always)]
fn update_block<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], c: &Scalars<T>) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let g = g[i] * c.scale;
        let m_i = c.beta1 * m[i] + c.one_minus_beta1 * g;
        let v_i = c.beta2 * v[i] + c.one_minus_beta2 * g * g;
        let denom = v_i.sqrt() * c.inv_sqrt_bc2 + c.eps;
        p[i] = p[i] * c.decay - c.step_size * m_i / denom;
        m[i] = m_i;
        v[i] = v_i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_is_accurate_over_many_blocks() {
        let data: Vec<f32> = (0..10_007).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
        let exact: f64 = data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((sum_of_squares(&data) - exact).abs() < 1e-6 * exact);
    }
}
