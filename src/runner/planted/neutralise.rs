//! What makes a directory entry usable by git as a repository, and how one is made unusable.
//! Every operation works on descriptors and names inside a directory descriptor: nothing the
//! agent could swap is resolved by path, and no symlink is followed.
//!
//! git honours a directory as a git directory only when it holds a valid `HEAD` and
//! `objects/` and `refs/` (directly, or through a `commondir` file), and reads a gitfile or
//! finds a work tree's git directory only under the name `.git`. So a planted repository is
//! neutralised by renaming its `HEAD` and, when it is named `.git`, the entry itself, to names
//! git never looks for.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Entries that exist and are the owner's repositories, by (device, inode): never touched.
pub type Known = HashSet<(u64, u64)>;

/// Suffix of every name a neutralised entry gets.
pub const QUARANTINE: &str = "agentuser-quarantine";

/// One repository made unusable.
#[derive(Debug, Clone)]
pub struct Neutralised {
    /// Where it was (for the owner to read; never used to act).
    pub path: PathBuf,
    /// Where it is now, when the entry itself was renamed.
    pub moved_to: Option<PathBuf>,
}

pub fn stat_at(dir: BorrowedFd, name: &CStr) -> Option<FileStat> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

pub fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

pub fn identity(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// Opens the subdirectory `name` of `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Whether `dir` has the layout git accepts as a git directory: a `HEAD` (of any type: a
/// symlink HEAD is valid too) and `objects`, `refs` or a `commondir` redirect. Wider than
/// git's own test on purpose: it runs only on what the agent touched.
pub fn is_repository_shaped(dir: BorrowedFd) -> bool {
    stat_at(dir, c"HEAD").is_some()
        && [c"objects", c"refs", c"commondir"]
            .iter()
            .any(|name| stat_at(dir, name).is_some())
}

/// A printable path of an open descriptor, for messages only.
pub fn display_path(fd: BorrowedFd) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("(unknown directory)"))
}

fn quarantine_name(original: &CStr) -> Result<CString> {
    let mut random = [0u8; 6];
    getrandom(&mut random)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = original.to_bytes().to_vec();
    name.extend_from_slice(format!(".{QUARANTINE}-{now}-{hex}").as_bytes());
    Ok(CString::new(name)?)
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// Renames `name` in `dir` to a fresh quarantine name and returns that name. The agent
/// may have squatted the name: then another is tried (never replacing anything).
pub fn quarantine(dir: BorrowedFd, name: &CStr) -> Result<Option<CString>> {
    for _ in 0..16 {
        let new = quarantine_name(name)?;
        match renameat2(
            dir,
            name,
            dir,
            new.as_c_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(Some(new)),
            Err(Errno::EEXIST) => continue,
            // Gone already (removed or renamed away by the agent): nothing left here.
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "renaming {}",
                        display_path(dir)
                            .join(OsStr::from_bytes(name.to_bytes()))
                            .display()
                    )
                });
            }
        }
    }
    bail!(
        "{}: every quarantine name tried was taken",
        display_path(dir).display()
    )
}

/// Neutralises the entry `.git` in `parent` (a directory, gitfile or symlink), unless it is
/// one of the owner's known repositories. Renames the entry, then the `HEAD` inside it.
pub fn neutralise_dot_git(parent: BorrowedFd, known: &Known) -> Result<Option<Neutralised>> {
    let Some(stat) = stat_at(parent, c".git") else {
        return Ok(None);
    };
    if known.contains(&identity(&stat)) {
        return Ok(None);
    }
    let Some(new) = quarantine(parent, c".git")? else {
        return Ok(None);
    };
    // What was renamed is whatever was named `.git` at that moment: check it again.
    if let Some(moved) = stat_at(parent, &new) {
        if known.contains(&identity(&moved)) {
            // Only the owner can have put a known repository there: give it back.
            let _ = renameat2(
                parent,
                new.as_c_str(),
                parent,
                c".git",
                RenameFlags::RENAME_NOREPLACE,
            );
            return Ok(None);
        }
        if kind(&moved) == SFlag::S_IFDIR {
            if let Ok(dir) = open_dir_at(parent, &new) {
                disable_head(dir.as_fd())?;
            }
        }
    }
    let base = display_path(parent);
    Ok(Some(Neutralised {
        path: base.join(".git"),
        moved_to: Some(base.join(OsStr::from_bytes(new.to_bytes()))),
    }))
}

/// Renames the `HEAD` of `dir` away, so git no longer takes `dir` for a git directory.
pub fn disable_head(dir: BorrowedFd) -> Result<bool> {
    Ok(quarantine(dir, c"HEAD")?.is_some())
}

/// Neutralises the repository-shaped directory `dir` (whose parent is `parent`): its
/// `HEAD` goes, and when it is its parent's `.git`, the entry is renamed too.
pub fn neutralise_dir(
    dir: BorrowedFd,
    parent: Option<BorrowedFd>,
    known: &Known,
) -> Result<Option<Neutralised>> {
    let stat = fstat(dir).context("fstat")?;
    if known.contains(&identity(&stat)) {
        return Ok(None);
    }
    if let Some(parent) = parent {
        let is_dot_git = stat_at(parent, c".git").is_some_and(|s| identity(&s) == identity(&stat));
        if is_dot_git {
            disable_head(dir)?;
            return neutralise_dot_git(parent, known);
        }
    }
    if !disable_head(dir)? {
        return Ok(None);
    }
    Ok(Some(Neutralised {
        path: display_path(dir),
        moved_to: None,
    }))
}

/// Opens `name` in `dir` as an O_PATH directory descriptor, without following a symlink.
pub fn open_path_at(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a share's root directory, refusing any symlink on the way.
pub fn open_share_root(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(nix::fcntl::AT_FDCWD, path, how)
}
