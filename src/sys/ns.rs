//! Namespace descriptors (ioctl_ns(2)).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

const NS_GET_NSTYPE: libc::c_ulong = 0xB703; // _IO(0xB7, 0x3)

/// Whether `fd` refers to a network namespace (any other descriptor: false).
pub fn is_network_namespace(fd: BorrowedFd) -> bool {
    // SAFETY: the ioctl reads no memory of ours (its argument is 0) and returns the
    // namespace's CLONE_NEW* type or -1.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _, 0) };
    Errno::result(rc).is_ok_and(|kind| kind == libc::CLONE_NEWNET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn tells_a_network_namespace_from_others() {
        let net = std::fs::File::open("/proc/self/ns/net").unwrap();
        let pid = std::fs::File::open("/proc/self/ns/pid").unwrap();
        assert!(is_network_namespace(net.as_fd()));
        assert!(!is_network_namespace(pid.as_fd()));
        assert!(!is_network_namespace(std::io::stdin().as_fd()));
    }
}
