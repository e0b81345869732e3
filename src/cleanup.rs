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
    let Some(root) = open_root(&parent_dir, &base, path, select)? else {
        return Ok(0);
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
            let parent = stack.last().map(|f| &f.dir).unwrap_or(&parent_dir);
            failures += remove_emptied(parent, done, &base, select);
            continue;
        };
        if let Some(child) = remove_entry(&frame.dir, name, select, device, &mut failures) {
            stack.push(child);
        }
    }
    Ok(failures)
}

/// Opens the directory to remove (or to clean); `None` when there is nothing to walk: the
/// path is missing, or (removing everything) it was not a directory and is removed here.
fn open_root(parent_dir: &Dir, base: &CStr, path: &Path, select: Select) -> Result<Option<Dir>> {
    match Dir::openat(parent_dir, base, DIR_FLAGS, Mode::empty()) {
        Ok(dir) => Ok(Some(dir)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ENOTDIR | Errno::ELOOP) if matches!(select, Select::All) => {
            // Not a directory (or a symlink planted in place of one): remove the entry itself.
            unlinkat(parent_dir, base, UnlinkatFlags::NoRemoveDir)
                .with_context(|| format!("removing {}", path.display()))?;
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// A directory whose entries have all been handled: removed from `parent` when it was
/// selected. Returns the failures (0 or 1).
fn remove_emptied(parent: &Dir, done: Frame, root_name: &CStr, select: Select) -> usize {
    if !done.remove_self {
        return 0;
    }
    let name = done.name.as_deref().unwrap_or(root_name);
    drop(done.dir);
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => 0,
        // An owned directory that still holds someone else's files stays.
        Err(Errno::ENOTEMPTY) if matches!(select, Select::OwnedBy(_)) => 0,
        Err(_) => 1,
    }
}

/// One entry of `dir`: a selected file goes now; a directory on the same file system comes
/// back as a frame to walk (removed, when selected, once it is emptied).
fn remove_entry(
    dir: &Dir,
    name: CString,
    select: Select,
    device: u64,
    failures: &mut usize,
) -> Option<Frame> {
    let stat = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return None,
        Err(_) => {
            *failures += 1;
            return None;
        }
    };
    let selected = match select {
        Select::All => true,
        Select::OwnedBy(uid) => stat.st_uid == uid,
    };
    if is_dir(&stat) {
        if stat.st_dev != device {
            // A mount point: never descend into another file system.
            *failures += 1;
            return None;
        }
        match Dir::openat(dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(child) => {
                let pending = names(&child).unwrap_or_default();
                return Some(Frame {
                    dir: child,
                    pending,
                    name: Some(name),
                    remove_self: selected,
                });
            }
            Err(Errno::ENOENT) => {}
            Err(_) => *failures += 1,
        }
    } else if selected {
        match unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(_) => *failures += 1,
        }
    }
    None
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
