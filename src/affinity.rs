//! Pinning the calling thread to one core: the one place threads outside glommio's executors
//! (the gRPC runtime's workers, the page store's checkpointer) get their placement. Imports no
//! other module, so every layer may use it.

/// Pins the calling thread to `core` (as the OS numbers them, from 0); `None` leaves it to the
/// scheduler. A failure (a restricted cpuset, a core index past `CPU_SETSIZE`) is reported on
/// stderr and otherwise ignored: placement is tuning, not correctness. `what` names the thread
/// in that report.
pub fn pin_current_thread(core: Option<usize>, what: &str) {
    let Some(core) = core else {
        return;
    };
    if let Err(e) = try_pin_current_thread(core) {
        eprintln!("ringkv: warning: cannot pin {what} to core {core}: {e}");
    }
}

/// [`pin_current_thread`] that returns the failure instead of reporting it.
pub fn try_pin_current_thread(core: usize) -> std::io::Result<()> {
    // CPU_SET indexes a fixed-size bitmask; a larger index would be out of its bounds.
    let set_bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if core >= set_bits {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("core index {core} is past the {set_bits} cores sched_setaffinity can name"),
        ));
    }
    // SAFETY: `set` is a plain bitmask owned by this frame and `core` is within it (checked
    // above); sched_setaffinity(0, ..) only reads it and changes the calling thread's affinity.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cores this thread may run on, from the kernel's own account of it.
    fn allowed_cores() -> Vec<usize> {
        // SAFETY: as above; sched_getaffinity(0, ..) writes the calling thread's mask into `set`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &raw mut set), 0);
            (0..8 * size)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn pins_the_calling_thread_only() {
        let before = allowed_cores();
        let core = *before.last().expect("this thread may run somewhere");
        let pinned = std::thread::spawn(move || {
            try_pin_current_thread(core).unwrap();
            allowed_cores()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, vec![core]);
        assert_eq!(allowed_cores(), before, "the spawning thread is unchanged");
    }

    #[test]
    fn an_impossible_core_is_an_error_not_a_crash() {
        let err = std::thread::spawn(|| try_pin_current_thread(1 << 20).unwrap_err())
            .join()
            .unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        // Reported, not fatal.
        std::thread::spawn(|| pin_current_thread(Some(1 << 20), "test thread"))
            .join()
            .unwrap();
    }
}
