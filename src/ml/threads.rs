//! Scheduling priority of training threads.
//!
//! A training job usually shares its cores with `/predict` (one process in the embedded
//! default). Training threads run with a positive nice value (19 by default), so that a prediction thread
//! woken by a request takes a core from training at once instead of waiting for the
//! trainer's time slice to end; when nothing else wants the core, training runs at full
//! speed. Threads a training thread starts (rayon's pool, when it is first used there)
//! inherit the value.

/// Sets the nice value of the calling thread (0 to 19; higher yields more). On Linux the
/// value is per thread; elsewhere this does nothing.
///
/// # Errors
/// When the system refuses, e.g. lowering the value below the current one without the
/// capability to.
pub fn set_this_thread_nice(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` and `setpriority` take plain integers and touch no memory of
        // ours; on Linux, PRIO_PROCESS with a thread id sets that thread's nice value.
        #[allow(unsafe_code)]
        let status = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if status != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc` (field 19 of its `stat`).
    #[cfg(target_os = "linux")]
    fn this_thread_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        after_name.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    /// The value applies to the calling thread only.
    #[cfg(target_os = "linux")]
    #[test]
    fn nice_applies_to_the_calling_thread_only() {
        let before = this_thread_nice();
        let inside = std::thread::spawn(|| {
            set_this_thread_nice(7).unwrap();
            this_thread_nice()
        });
        assert_eq!(inside.join().unwrap(), 7);
        assert_eq!(this_thread_nice(), before);
    }
}
