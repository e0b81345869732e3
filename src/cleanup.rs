//! Removing an agent's files as root without being redirected: every step works on
//! directory descriptors opened with O_NOFOLLOW, never crosses into another file system,
//! and uses an explicit stack so a deep tree cannot overflow ours.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Which entries go.
#[derive(Debug, Clone, Copy)]
pub enum Select {
    /// Everything, the root directory included (an agent's home).
    All,
    /// Entries owned by this uid anywhere below the root; a directory of theirs goes when it
    /// is empty afterwards. The root itself stays (/tmp).
    OwnedBy(u32),
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

struct Frame {
    dir: Dir,
    pending: Vec<CString>,
    /// Name in the parent frame's directory; `None` for the root.
    name: Option<CString>,
    remove_self: bool,
}

/// Removes `path` (whose parent must be trusted: root-owned) or the selected entries below
/// it. A missing path is not an error. Returns how many entries could not be removed.
pub fn remove(path: &Path, select: Select) -> Result<usize> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let Some(base) = path.file_name() else {
        bail!("{}: no file name", path.display());
    };
    let parent_dir = Dir::open(parent, DIR_FLAGS, Mode::empty())
        .with_context(|| format!("opening {}", parent.display()))?;
    let base = CString::new(base.as_bytes())?;
    let root = match Dir::openat(&parent_dir, base.as_c_str(), DIR_FLAGS, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(0),
        Err(Errno::ENOTDIR | Errno::ELOOP) if matches!(select, Select::All) => {
            // Not a directory (or a symlink planted in place of one): remove the entry itself.
            unlinkat(&parent_dir, base.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .with_context(|| format!("removing {}", path.display()))?;
            return Ok(0);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let device = fstat(&root)?.st_dev;
    let mut failures = 0;
    let mut stack = vec![Frame {
        pending: names(&root).with_context(|| format!("reading {}", path.display()))?,
        dir: root,
        name: None,
        remove_self: matches!(select, Select::All),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.pending.pop() else {
            let done = stack.pop().expect("frame exists");
            if done.remove_self {
                let parent = stack.last().map(|f| &f.dir).unwrap_or(&parent_dir);
                let name = done.name.as_deref().unwrap_or(base.as_c_str());
                drop(done.dir);
                match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    // An owned directory that still holds someone else's files stays.
                    Err(Errno::ENOTEMPTY) if matches!(select, Select::OwnedBy(_)) => {}
                    Err(_) => failures += 1,
                }
            }
            continue;
        };
        let stat = match fstatat(&frame.dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let selected = match select {
            Select::All => true,
            Select::OwnedBy(uid) => stat.st_uid == uid,
        };
        if is_dir(&stat) {
            if stat.st_dev != device {
                // A mount point: never descend into another file system.
                failures += 1;
                continue;
            }
            match Dir::openat(&frame.dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
                Ok(dir) => {
                    let pending = names(&dir).unwrap_or_default();
                    stack.push(Frame {
                        dir,
                        pending,
                        name: Some(name),
                        remove_self: selected,
                    });
                }
                Err(Errno::ENOENT) => {}
                Err(_) => failures += 1,
            }
        } else if selected {
            match unlinkat(&frame.dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(_) => failures += 1,
            }
        }
    }
    Ok(failures)
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn names(dir: &Dir) -> Result<Vec<CString>> {
    // Read through a duplicate so the directory stream of `dir` stays untouched.
    let mut copy = Dir::from_fd(nix::unistd::dup(dir)?)?;
    let mut out = Vec::new();
    for entry in copy.iter() {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        if name != c"." && name != c".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}
