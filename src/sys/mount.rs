//! The descriptor-based mount API (open_tree, mount_setattr, move_mount; Linux 5.12+), which
//! nix does not wrap. Every mount the runner makes from or onto a path the agent could
//! write goes through these, so no path is resolved again after it was opened without
//! following symlinks (docs/threat-model.md row 21).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount tree at `fd` (recursive: submounts come along), like a
/// `mount --rbind` that is not attached anywhere yet.
pub fn clone_tree(fd: BorrowedFd) -> Result<OwnedFd, Errno> {
    // SAFETY: open_tree reads the empty C string and returns a new descriptor or -1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | OPEN_TREE_CLOEXEC
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    let fd = Errno::result(rc)?;
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sets mount attributes on every mount of the (detached) tree at `fd`.
pub fn set_attributes(fd: BorrowedFd, attrs: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads one struct mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// Attaches the detached tree `tree` onto the file or directory open at `target`.
pub fn attach(tree: BorrowedFd, target: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: move_mount reads two empty C strings; both descriptors are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// A new, detached tmpfs (fsopen/fsconfig/fsmount) with the given root mode, nosuid and
/// nodev. One instance serves every hidden and private directory of a view: each tmpfs
/// superblock costs an RCU grace period or two when the namespace goes away (and a detached
/// one another when its last descriptor closes: the runner attaches it).
pub fn new_tmpfs(mode: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: fsopen reads a static C string and returns a new descriptor or -1.
    let fs = Errno::result(unsafe {
        libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC)
    })?;
    // SAFETY: fsopen returned a fresh descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    // SAFETY: fsconfig reads the two C strings passed; the descriptor is valid.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            c"mode".as_ptr(),
            mode.as_ptr(),
            0,
        )
    })?;
    // SAFETY: as above, with no strings.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: fsmount on a configured fs context; returns a new descriptor or -1.
    let mnt = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    })?;
    // SAFETY: fsmount returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
}
