//! Removing an ACL extended attribute outright. posix-acl can read and write ACLs but not
//! delete one, and writing a "minimal" ACL through it always keeps a mask entry; the only
//! way back to a plain mode (no `+` in `ls -l`) after the last named entry is gone is
//! removexattr(2).

use std::ffi::CStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The access ACL of a file.
pub const ACL_ACCESS: &CStr = c"system.posix_acl_access";
/// The default ACL of a directory.
pub const ACL_DEFAULT: &CStr = c"system.posix_acl_default";

/// Removes the extended attribute `name` of `path` (typically a `/proc/self/fd/N` path of a
/// descriptor we hold, so nothing is resolved by name). An attribute already absent is not
/// an error.
pub fn remove(path: &Path, name: &CStr) -> io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let ret = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENODATA) {
        Ok(())
    } else {
        Err(err)
    }
}
