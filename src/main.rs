//! The `distillery` binary: command-line parsing and wiring only.

use mimalloc::MiMalloc;

// glibc's malloc returns freed step tensors to the system and faults them back in; mimalloc
// keeps them, which was worth 2.5x on small models (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3 alike; the bindings have
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds that freed memory stays with the allocator before it goes back to the system.
///
/// mimalloc's default is 10 ms. A training step of the default teacher frees and allocates
/// the same large activation buffers every 100-200 ms, so with the default every step faulted
/// them in again and the kernel zeroed them (12,000 page faults in 12 steps and 13% of the
/// profile in `clear_page_erms`; 600 faults with this delay). Memory left unused this long
/// is still returned.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> std::process::ExitCode {
    // SAFETY: `mi_option_set` only stores a value in mimalloc's option table, which it reads
    // atomically; no allocation is affected except in how long freed pages are kept.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
    distillery::cli::main()
}
