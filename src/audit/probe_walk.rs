//! A descriptor-based directory walk for the probe: each directory is opened relative to its
//! parent with O_NOFOLLOW, so a symlink is never followed out of the tree (the root itself
//! may be a symlink: it is chosen by the privileged process, not found in the tree), mount
//! points are not crossed, and access tests are made relative to the directory descriptor
//! (`faccessat`), which costs the kernel one component lookup instead of a whole path. That
//! keeps a 100k-file home within the cost of `find -readable`.
#![forbid(unsafe_code)]

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use nix::unistd::{AccessFlags, faccessat};

/// Deepest directory level walked (bounds descriptors held open at once).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// One entry, valid during the visit.
pub struct Entry<'a> {
    /// The directory holding the entry.
    pub dir: BorrowedFd<'a>,
    /// The directory's path.
    pub parent: &'a Path,
    pub name: &'a CStr,
    pub kind: Kind,
    /// 1 for entries of the root.
    pub depth: usize,
}

impl Entry<'_> {
    pub fn path(&self) -> PathBuf {
        self.parent.join(OsStr::from_bytes(self.name.to_bytes()))
    }

    /// Whether the current identity has `mode` access (the kernel's decision: modes, ACLs,
    /// read-only mounts).
    pub fn access(&self, mode: AccessFlags) -> bool {
        faccessat(self.dir, self.name, mode, nix::fcntl::AtFlags::empty()).is_ok()
    }

    /// lstat of the entry.
    pub fn stat(&self) -> Option<FileStat> {
        fstatat(
            self.dir,
            self.name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
    }

    /// Opens the entry for reading without following a symlink or blocking on a FIFO.
    pub fn open_read(&self) -> Option<OwnedFd> {
        openat(
            self.dir,
            self.name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }
}

/// What the visitor wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Do not descend into this directory.
    Prune,
    /// End the whole walk.
    Stop,
}

/// Walks `root` depth-first up to `max_depth` levels below it, calling `visit` for every
/// entry. Unreadable directories are skipped silently (that is an answer, not an error).
/// Returns false when the root could not be opened.
pub fn walk(root: &Path, max_depth: usize, visit: &mut dyn FnMut(&Entry) -> Flow) -> bool {
    let Ok(fd) = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(stat) = fstat(&fd) else {
        return false;
    };
    let Ok(dir) = Dir::from_fd(fd) else {
        return false;
    };
    let _ = walk_dir(dir, root, stat.st_dev, 1, max_depth.min(MAX_DEPTH), visit);
    true
}

/// Ok(false) when the visitor asked to stop.
fn walk_dir(
    mut dir: Dir,
    path: &Path,
    device: u64,
    depth: usize,
    max_depth: usize,
    visit: &mut dyn FnMut(&Entry) -> Flow,
) -> Result<bool, ()> {
    // Names are collected first: the iterator borrows the directory mutably, while the
    // visits and the descent need its descriptor.
    let mut entries: Vec<(std::ffi::CString, Option<Type>)> = Vec::new();
    for entry in dir.iter() {
        let Ok(entry) = entry else { break };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries.push((name.to_owned(), entry.file_type()));
    }
    let fd = dir.as_fd();
    for (name, file_type) in entries {
        let file_type = match file_type {
            Some(t) => Some(t),
            // Some file systems do not fill d_type: ask.
            None => fstatat(
                fd,
                name.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .ok()
            .map(|s| type_of_mode(s.st_mode)),
        };
        let kind = match file_type {
            Some(Type::Directory) => Kind::Dir,
            Some(Type::File) => Kind::File,
            Some(Type::Symlink) => Kind::Symlink,
            _ => Kind::Other,
        };
        let entry = Entry {
            dir: fd,
            parent: path,
            name: name.as_c_str(),
            kind,
            depth,
        };
        match visit(&entry) {
            Flow::Stop => return Ok(false),
            Flow::Prune => continue,
            Flow::Continue => {}
        }
        if kind != Kind::Dir || depth >= max_depth {
            continue;
        }
        let Ok(child) = openat(
            fd,
            name.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        // Same file system only: no wandering into /proc-like or network mounts.
        if fstat(&child).map(|s| s.st_dev) != Ok(device) {
            continue;
        }
        let Ok(child) = Dir::from_fd(child) else {
            continue;
        };
        let child_path = entry.path();
        if !walk_dir(child, &child_path, device, depth + 1, max_depth, visit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn type_of_mode(mode: u32) -> Type {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Type::Directory,
        libc::S_IFREG => Type::File,
        libc::S_IFLNK => Type::Symlink,
        libc::S_IFIFO => Type::Fifo,
        libc::S_IFSOCK => Type::Socket,
        libc::S_IFCHR => Type::CharacterDevice,
        _ => Type::BlockDevice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_symlinks_and_honours_depth_and_prune() {
        let root = std::env::temp_dir().join(format!("agentuser-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(root.join("pruned/x")).unwrap();
        std::fs::write(root.join("a/b/c/deep"), "").unwrap();
        std::fs::write(root.join("a/file"), "").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/etc-link")).unwrap();
        let mut seen = Vec::new();
        walk(&root, 3, &mut |e| {
            let p = e.path();
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            seen.push((rel.clone(), e.kind, e.depth));
            if rel == "pruned" {
                Flow::Prune
            } else {
                Flow::Continue
            }
        });
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            ["a", "a/b", "a/b/c", "a/etc-link", "a/file", "pruned"]
        );
        assert!(
            seen.iter()
                .any(|s| s.0 == "a/etc-link" && s.1 == Kind::Symlink)
        );
        assert!(seen.iter().any(|s| s.0 == "a/b/c" && s.2 == 3));
        std::fs::remove_dir_all(root).unwrap();
    }
}
