//! syslog(3) with the authpriv facility, like sudo. When no syslog socket exists, glibc
//! drops the message silently, which is what we want on hosts without a logger.

use std::ffi::CString;

/// Sends one message at LOG_NOTICE to the authpriv facility under the ident "agentuser".
pub fn notice(message: &str) {
    let Ok(text) = CString::new(message.replace('\0', "?")) else {
        return;
    };
    const IDENT: &std::ffi::CStr = c"agentuser";
    // SAFETY: IDENT is a static C string, so the pointer openlog keeps stays valid.
    unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV) };
    // SAFETY: "%s" with one valid NUL-terminated string is a well-formed format call.
    unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), text.as_ptr()) };
}

/// Connects to the syslog socket now (LOG_NDELAY), for a process that will lose the right
/// to open it later (the policy point).
pub fn open() {
    const IDENT: &std::ffi::CStr = c"agentuser";
    // SAFETY: IDENT is a static C string (openlog keeps the pointer).
    unsafe {
        libc::openlog(
            IDENT.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_AUTHPRIV,
        )
    };
}

/// Closes the syslog connection (a forked child must, before it closes descriptors it
/// inherited: glibc would otherwise go on writing to that descriptor number).
pub fn close() {
    // SAFETY: closelog takes no arguments and only closes glibc's own descriptor.
    unsafe { libc::closelog() };
}
