//! Runtime selection of wider vector instructions for the element-wise loops.
//!
//! The crate is built for baseline x86-64 (SSE2). The element-wise parts of the recurrent
//! kernels and of the optimizer are plain loops written so that the compiler can vectorize
//! them. Compiling them again inside functions with AVX2 and FMA, or AVX-512F, enabled,
//! and calling the widest copy the CPU supports, doubles or quadruples the vector width
//! without a `target-cpu` build flag. Matrix products go through the `gemm` crate, which does its own
//! dispatch.

/// A loop to run with the widest available vector instructions.
///
/// Implementations mark [`VectorLoop::run`] `#[inline(always)]`: only code inlined into
/// the AVX2 wrapper is compiled for AVX2 (a closure would stay a separate, SSE2-only
/// function).
pub(crate) trait VectorLoop {
    /// What the loop returns.
    type Output;

    /// Runs the loop.
    fn run(self) -> Self::Output;
}

/// Runs `body`, compiled for AVX-512 or for AVX2 + FMA when the CPU supports them.
///
/// Results may differ in the last bits between the paths (FMA contraction).
#[inline(always)]
pub(crate) fn vectorized<L: VectorLoop>(body: L) -> L::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, AVX2 and FMA, checked just above.
                return unsafe { run_avx512(body) };
            }
            // SAFETY: the CPU supports AVX2 and FMA, checked just above, which is the only
            // requirement for calling a function compiled with these target features.
            return unsafe { run_avx2_fma(body) };
        }
    }
    body.run()
}

/// Runs `body` compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma<L: VectorLoop>(body: L) -> L::Output {
    body.run()
}

/// Runs `body` compiled with AVX-512F (16 `f32` lanes), AVX2 and FMA enabled. Measured on
/// the batch-64 inference of the default student, whose time goes mostly to the gate
/// arithmetic of these loops: see docs/benchmarks.md.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<L: VectorLoop>(body: L) -> L::Output {
    body.run()
}
