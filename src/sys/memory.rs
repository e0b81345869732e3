//! Keeping secrets out of swap (mlock).

/// Locks the pages holding `bytes` in memory, best effort: within RLIMIT_MEMLOCK (8 MiB by
/// default, far more than a handful of tokens), and the kernel unlocks them at exit. A
/// failure leaves the value swappable, nothing worse, so it is not an error.
pub fn lock(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: mlock only changes how the pages of this live, readable range are paged; it
    // reads and writes no memory.
    let _ = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) };
}
