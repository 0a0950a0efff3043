//! A bounds-checked wrapper over the `gemm` crate's matrix product.
//!
//! The recurrent kernels multiply small row-major blocks (one time step of a batch) by a
//! weight matrix or its transpose. `gemm::gemm` takes raw pointers and strides; this module
//! checks that every element a view can address lies inside its slice, so callers stay safe.

use gemm::Parallelism;

use super::activation::Real;

/// A read-only strided matrix view over a slice.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A `rows x cols` row-major matrix stored contiguously at the start of `data`.
    pub(crate) fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// A `rows x cols` row-major matrix whose rows start `row_stride` elements apart (a
    /// block of columns of a wider matrix, when `data` starts at its first column).
    pub(crate) fn strided(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose of this view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every addressed element lies inside the slice.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// `dst = lhs @ rhs`, or `dst += lhs @ rhs` when `accumulate`; `dst` is a contiguous
/// row-major `lhs.rows x rhs.cols` block at the start of the slice.
///
/// Runs on the calling thread only: for the small blocks of a recurrent step, splitting
/// the work over threads costs more than it gains.
///
/// # Panics
/// When the shapes disagree or a view addresses elements outside its slice (a bug in the
/// caller, checked because the product reads and writes through raw pointers).
pub(crate) fn matmul<T: Real>(
    dst: &mut [T],
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) {
    let n = rhs.cols;
    matmul_strided(dst, n, accumulate, lhs, rhs, 1);
}

/// [`matmul`] into rows of `dst` that start `dst_stride` elements apart (at least
/// `rhs.cols`), on up to `threads` threads of rayon's pool.
///
/// # Panics
/// As [`matmul`], and when `dst_stride < rhs.cols`.
pub(crate) fn matmul_strided<T: Real>(
    dst: &mut [T],
    dst_stride: usize,
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    threads: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions of a matrix product differ");
    assert!(dst_stride >= n, "destination rows overlap");
    assert!(m == 0 || dst.len() >= (m - 1) * dst_stride + n, "product destination too small");
    assert!(lhs.in_bounds() && rhs.in_bounds(), "matrix view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_stride).take(m).for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };

    // SAFETY: the last element written is (m - 1) * dst_stride + n - 1, inside `dst` as
    // checked above, and rows do not overlap (dst_stride >= n); both operand views were
    // checked to address only elements of their slices. The destination is a unique
    // borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn matmul_matches_naive_product_plain_transposed_and_accumulated() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let expected = naive(&a, &b, m, k, n);

        let mut out = vec![0.0; m * n];
        matmul(&mut out, false, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        assert!(out.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));

        // b stored transposed (n x k) and viewed through `t()`, accumulated onto ones.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut acc = vec![1.0; m * n];
        matmul(&mut acc, true, MatRef::row_major(&a, m, k), MatRef::row_major(&bt, n, k).t());
        assert!(acc.iter().zip(&expected).all(|(x, y)| (x - 1.0 - y).abs() < 1e-12));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn matmul_rejects_views_past_the_slice() {
        let a = vec![0f32; 5];
        let mut out = vec![0f32; 4];
        matmul(&mut out, false, MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 3, 2));
    }
}
