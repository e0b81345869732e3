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

/// Writes the minimal access ACL `user::U group::G other::O` (permission triplets) to `path`.
/// The kernel stores no ACL for it and sets the mode's permission bits instead, in one
/// step: the way back to a plain mode without a moment where the group class keeps the old
/// mask. (posix-acl always adds a mask entry when writing, so it cannot express this.)
pub fn set_minimal_acl(path: &Path, user: u32, group: u32, other: u32) -> io::Result<()> {
    // The kernel's xattr format: a version-2 header, then (tag u16, perm u16, id u32)
    // entries in tag order, little-endian; base entries carry the undefined id.
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const OTHER: u16 = 0x20;
    let mut value = Vec::with_capacity(28);
    value.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, perm) in [(USER_OBJ, user), (GROUP_OBJ, group), (OTHER, other)] {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&((perm & 0o7) as u16).to_le_bytes());
        value.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: the strings are NUL-terminated and `value` is a live buffer of the given
    // length; setxattr only reads them during the call.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            ACL_ACCESS.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `path` has the extended attribute `name` (a size query: nothing is copied).
pub fn exists(path: &Path, name: &CStr) -> io::Result<bool> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: the strings are NUL-terminated; a null buffer of size 0 asks for the size only.
    let ret = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if ret >= 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENODATA) {
        Ok(false)
    } else {
        Err(err)
    }
}
