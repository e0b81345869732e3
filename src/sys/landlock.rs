//! The running kernel's Landlock ABI version, for `doctor`. The landlock crate keeps its
//! own probe private, so this asks the kernel directly.

/// The kernel's Landlock ABI version, or None when Landlock is unavailable (not built in or
/// disabled at boot).
pub fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number; no memory is
    // passed to the kernel.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}
