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

/// [`adam_update`] on a `(rows, width)` table whose gradient is zero except on the rows
/// `ids` (sorted, unique), whose gradients are the rows of `grad_rows`; returns the sum of
/// squares of those rows.
///
/// Every row is updated, through the same element code with a zero gradient elsewhere,
/// so the result is bit for bit that of [`adam_update`] with the dense gradient; only
/// the dense gradient itself is never built.
///
/// # Panics
/// When the buffers differ in length, or `grad_rows` does not hold one row per id.
pub(crate) fn adam_update_rows<T: Real>(
    (param, m, v): (&mut [T], &mut [T], &mut [T]),
    (ids, grad_rows): (&[usize], &[T]),
    width: usize,
    coef: &AdamCoefficients,
) -> f64 {
    let n = param.len();
    assert!(m.len() == n && v.len() == n && width > 0 && n % width == 0, "adam buffers differ");
    assert_eq!(grad_rows.len(), ids.len() * width, "one gradient row per id");
    let zero = vec![T::zero(); width];
    let c = Scalars::new(coef);
    vectorized(AdamRowsLoop { param, m, v, ids, grad_rows, zero: &zero, c })
}

/// The loop of [`adam_update_rows`].
struct AdamRowsLoop<'a, T> {
    param: &'a mut [T],
    m: &'a mut [T],
    v: &'a mut [T],
    ids: &'a [usize],
    grad_rows: &'a [T],
    /// One row of zeros, the gradient of rows not in `ids`.
    zero: &'a [T],
    c: Scalars<T>,
}

impl<T: Real> VectorLoop for AdamRowsLoop<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let width = self.zero.len();
        let (mut next, mut total) = (0, 0.0);
        for r in 0..self.param.len() / width {
            let mut g = self.zero;
            if next < self.ids.len() && self.ids[next] == r {
                g = &self.grad_rows[next * width..][..width];
                total += block_sum_sq(g).to_f64();
                next += 1;
            }
            let range = r * width..(r + 1) * width;
            let (p, m) = (&mut self.param[range.clone()], &mut self.m[range.clone()]);
            update_block(p, g, m, &mut self.v[range], &self.c);
        }
        total
    }
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
    fn row_update_equals_dense_update_bit_for_bit() {
        let (rows, width) = (7, 3);
        let init: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let (ids, grad_rows) =
            (vec![1, 4, 6], vec![0.5f32, -1.0, 2.0, 0.1, 0.2, 0.3, -3.0, 1.0, 0.0]);
        let mut dense = vec![0f32; rows * width];
        for (k, &id) in ids.iter().enumerate() {
            dense[id * width..][..width].copy_from_slice(&grad_rows[k * width..][..width]);
        }
        let coef = AdamCoefficients {
            scale: 0.7,
            beta1: 0.9,
            beta2: 0.99,
            decay: 0.999,
            step_size: 0.01,
            inv_sqrt_bc2: 3.0,
            eps: 1e-8,
        };
        let (mut p1, mut m1, mut v1) = (init.clone(), init.clone(), vec![0.5f32; rows * width]);
        let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
        for _ in 0..3 {
            let a = adam_update(&mut p1, &dense, &mut m1, &mut v1, &coef);
            let b = adam_update_rows((&mut p2, &mut m2, &mut v2), (&ids, &grad_rows), width, &coef);
            assert!((a - b).abs() < 1e-6 * a);
        }
        assert_eq!((p1, m1, v1), (p2, m2, v2));
    }

    #[test]
    fn sum_of_squares_is_accurate_over_many_blocks() {
        let data: Vec<f32> = (0..10_007).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
        let exact: f64 = data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((sum_of_squares(&data) - exact).abs() < 1e-6 * exact);
    }
}
