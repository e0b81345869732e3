//! Finding `.git` entries in a shared tree, for the agent's view: a read-only walk that
//! never follows a symlink, never leaves the tree's file system and does not enter `.git`
//! directories themselves.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

use super::refuse::open_exact;

/// A `.git` directory or file (a gitfile of a submodule or worktree) in a share.
#[derive(Debug, Clone)]
pub struct GitEntry {
    pub path: PathBuf,
    pub uid: u32,
    /// Device and inode: which repository the runner must never take for a planted one.
    pub id: (u64, u64),
}

/// Every `.git` entry under `root` (a directory; a file yields nothing).
pub fn entries(root: &Path) -> Result<Vec<GitEntry>> {
    let fd = open_exact(root)?.ok_or_else(|| anyhow!("{}: missing", root.display()))?;
    let stat = fstat(&fd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Ok(Vec::new());
    }
    let device = stat.st_dev;
    let mut found = Vec::new();
    let mut stack: Vec<(Arc<OwnedFd>, CString, PathBuf)> =
        vec![(Arc::new(fd), c".".to_owned(), root.to_owned())];
    while let Some((parent, name, path)) = stack.pop() {
        let opened = openat(
            parent.as_fd(),
            name.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let dir_fd = match opened {
            Ok(fd) => fd,
            // Removed, or replaced by a file or symlink, since it was listed: nothing to
            // search there.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        if fstat(&dir_fd)?.st_dev != device {
            continue;
        }
        let dir_fd = Arc::new(dir_fd);
        let mut dir = Dir::from_fd(nix::unistd::dup(dir_fd.as_fd())?)?;
        for entry in dir.iter() {
            let entry = entry?;
            let child: &CStr = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            let child_path = path.join(OsStr::from_bytes(child.to_bytes()));
            let is_git = child == c".git";
            let dir_type = match entry.file_type() {
                Some(t) if !is_git => Some(t),
                _ => {
                    let st = fstatat(dir_fd.as_fd(), child, AtFlags::AT_SYMLINK_NOFOLLOW);
                    let Ok(st) = st else { continue };
                    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                    if is_git {
                        if (kind == SFlag::S_IFDIR || kind == SFlag::S_IFREG) && st.st_dev == device
                        {
                            found.push(GitEntry {
                                path: child_path,
                                uid: st.st_uid,
                                id: (st.st_dev, st.st_ino),
                            });
                        }
                        continue;
                    }
                    (kind == SFlag::S_IFDIR).then_some(Type::Directory)
                }
            };
            if dir_type == Some(Type::Directory) {
                stack.push((Arc::clone(&dir_fd), child.to_owned(), child_path));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}
