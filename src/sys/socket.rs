//! Non-blocking connect tests on unix sockets, for `audit`. std's UnixStream blocks in
//! connect() while a listener's backlog is full, and has no seqpacket type; a raw
//! non-blocking socket answers at once and sends nothing.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Socket types as /proc/net/unix numbers them.
pub const STREAM: i32 = libc::SOCK_STREAM;
pub const DGRAM: i32 = libc::SOCK_DGRAM;
pub const SEQPACKET: i32 = libc::SOCK_SEQPACKET;

/// Tries to connect to the unix socket `name` (a path, or with `abstract_name` the bytes
/// after the leading NUL), with socket type `kind`. Ok when the peer accepted the
/// connection or queued it (EAGAIN: backlog full, still reachable); the socket is closed
/// at once and nothing is sent.
pub fn connect_unix(name: &[u8], abstract_name: bool, kind: i32) -> io::Result<()> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let offset = usize::from(abstract_name);
    if name.is_empty() || name.len() + offset > addr.sun_path.len() - 1 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (slot, byte) in addr.sun_path[offset..].iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    let base = size_of::<libc::sa_family_t>();
    let len = (base + offset + name.len()) as libc::socklen_t;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    let result = if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(()),
            _ => Err(err),
        }
    };
    drop(socket);
    result
}
