//! Runtime selection of wider vector instructions for the element-wise loops.
//!
//! The crate is built for baseline x86-64 (SSE2). The element-wise parts of the recurrent
//! kernels are plain loops written so that the compiler can vectorize them; running them
//! inside a function compiled with AVX2 and FMA enabled (after checking that the CPU has
//! them) doubles the vector width without a `target-cpu` build flag. Matrix products go
//! through the `gemm` crate, which does its own dispatch.

/// Runs `f`, compiled for AVX2 + FMA when the CPU supports them.
///
/// The speed-up needs `f` and the loops it calls to be inlined into the wrapper, so the
/// hot row functions are `#[inline(always)]`. Results may differ in the last bits between
/// the two paths (FMA contraction).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above, which is the only
            // requirement for calling a function compiled with these target features.
            return unsafe { with_avx2_fma(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}
