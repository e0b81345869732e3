//! What agentuser keeps about a share's contents: its `.git` entries, and every directory
//! of the tree with its inode and change time (ctime), so that `exec` finds the owner's
//! repositories without walking the share (issue 15 item 9).
//!
//! A directory's ctime changes whenever an entry is created, removed or renamed in it, and
//! nobody can set it (not the agent, not the owner). So when a directory still has the inode
//! and ctime recorded, its entries are the ones recorded: its `.git` entry and its
//! subdirectories are the same. Starting from the share's root, a check therefore stats
//! each recorded directory (one `statx`, no listing) and lists only the directories that
//! changed, walking new subdirectories in full. Its cost grows with the number of
//! directories and with what changed since the last check, not with the number of files;
//! the stats, most of the cost (the kernel's path walks), are spread over a few threads.
//!
//! `share` builds the index (after its own walk) and every `exec` brings it up to date as
//! it starts and saves what it learned, so a repository the owner made between runs, in a
//! directory whose ctime thereby changed, is found by the next run before the agent starts.
//!
//! A ctime within [`RACY`] of the moment the listing started is not trusted (file systems
//! with coarse timestamps give a change in the same tick the same ctime): that directory is
//! listed again next time, as git does with its "racily clean" index entries.
//!
//! The index lives in agentuser's state, root-only: the agent can change the tree, never
//! what was recorded about it. A missing, damaged or foreign index is rebuilt by a walk.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, SFlag, fstat, fstatat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::git::GitEntry;
use super::refuse::open_exact;

/// The index's layout; stored first, checked on load.
const FORMAT: u32 = 3;

/// What the index of format 1 (JSON) was called; removed when its successor is saved.
const OLD_EXTENSION: &str = "json";

/// How close to the listing a ctime must be not to be trusted.
const RACY: Duration = Duration::from_secs(2);

/// A file name or relative path, as bytes (file names need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct Name(Vec<u8>);

impl Name {
    fn new(bytes: &[u8]) -> Name {
        Name(bytes.to_vec())
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A directory's `.git` entry (a directory, or a gitfile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GitState {
    ino: u64,
    uid: u32,
}

/// A directory's file handle as fanotify reports it (type and bytes; empty when the file
/// system gives none): what the tracker ([`super::track`]) recognises it by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Handle {
    kind: i32,
    bytes: Vec<u8>,
}

/// One directory of the share, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DirState {
    /// Relative to the share's root ("" for the root itself).
    path: Name,
    ino: u64,
    /// Seconds and nanoseconds.
    ctime: (i64, i64),
    subdirs: Vec<Name>,
    /// The inode of each subdirectory, in the same order (from the listing): a directory
    /// removed and made again under the same name is a change of shape.
    subdir_inodes: Vec<u64>,
    git: Option<GitState>,
    handle: Handle,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Index {
    /// [`FORMAT`]: an index of another layout is not read (it is rebuilt).
    format: u32,
    /// Device and inode of the share's root directory.
    root: (u64, u64),
    /// The file system's id, as fanotify reports it with every handle.
    fsid: [i32; 2],
    /// When the listing that made it started (seconds, nanoseconds since the epoch).
    taken: (i64, i64),
    dirs: Vec<DirState>,
}

/// Where the index of `agent`'s share `share` is kept.
pub(super) fn index_path(state: &Path, agent: &str, share: &Path) -> PathBuf {
    let digest = Sha256::digest(share.as_os_str().as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    agent_dir(state, agent).join(format!("{hex}.index"))
}

/// The directory of an agent's indexes (and of its tracker's socket and lock).
pub(super) fn agent_dir(state: &Path, agent: &str) -> PathBuf {
    state.join("index").join(agent)
}

/// The `.git` entries of the share at `share` (a directory; a file has none), from its
/// index brought up to date, which is saved when anything had to be listed. `rebuild`
/// ignores the index kept (`share` uses it: it has just changed every directory's ctime).
pub fn git_entries(
    state: &Path,
    agent: &str,
    share: &Path,
    rebuild: bool,
) -> Result<Vec<GitEntry>> {
    check(state, agent, share, rebuild).map(|checked| checked.entries)
}

/// Below this size (about 700 directories) an index is checked faster than a tracker
/// answers (bench/results/exec-shares.md).
const SMALL: i64 = 32 << 10;

/// Whether the index of `share` is small or missing (a missing one is made by a walk; the
/// next run sees its size).
pub(super) fn is_small(state: &Path, agent: &str, share: &Path) -> bool {
    match nix::sys::stat::lstat(&index_path(state, agent, share)) {
        Ok(stat) => stat.st_size < SMALL,
        Err(_) => true,
    }
}

/// What a check of one share found.
pub(super) struct Checked {
    pub entries: Vec<GitEntry>,
    /// The index file records the tree as checked (nothing to save, or saved): a tracker
    /// may take it over. False for a file, and when the save failed.
    pub settled: bool,
}

/// [`git_entries`], also saying whether the index file records the tree as checked.
pub(super) fn check(state: &Path, agent: &str, share: &Path, rebuild: bool) -> Result<Checked> {
    let root = open_exact(share)?.ok_or_else(|| anyhow!("{}: missing", share.display()))?;
    let stat = fstat(root.as_fd())?;
    if kind(&stat) != SFlag::S_IFDIR {
        return Ok(Checked {
            entries: Vec::new(),
            settled: false,
        });
    }
    let path = index_path(state, agent, share);
    let identity = (stat.st_dev, stat.st_ino);
    let old = (!rebuild)
        .then(|| load(&path))
        .flatten()
        .filter(|old| old.root == identity)
        .unwrap_or_default();
    let (index, listed) = refresh(root.as_fd(), &stat, old)?;
    let mut settled = true;
    if listed {
        // Not fatal: the next run lists again what this one could not record.
        if let Err(e) = save(&path, &index) {
            eprintln!("agentuser: warning: {}", crate::error::one_line(&e));
            settled = false;
        }
    }
    let entries = entries_of(root.as_fd(), share, stat.st_dev, index.git_states());
    Ok(Checked { entries, settled })
}

/// An index file as it is on disk: device, inode, change time and size. Every save is a
/// new file renamed into place, and nobody can set a ctime.
pub(super) type FileId = (u64, u64, i64, i64, i64);

pub(super) fn file_id(stat: &FileStat) -> FileId {
    (
        stat.st_dev,
        stat.st_ino,
        stat.st_ctime,
        stat.st_ctime_nsec,
        stat.st_size,
    )
}

/// What a tracker says of one share's index: which index file it loaded, whether it saw
/// every change since (no lost event), the directories whose entries changed (as
/// recorded), and the recorded `.git` entries.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ShareReport {
    pub share: PathBuf,
    index_file: FileId,
    root: (u64, u64),
    complete: bool,
    changed: Vec<DirState>,
    git: Vec<(Name, GitState)>,
}

/// The `.git` entries of `share` as its tracker's `report` has them ([`super::track`]),
/// when the report still holds: it is about the index file as it is now, for the same
/// root, saw every change, and every directory it saw change has the same subdirectories
/// and `.git` entry as recorded (only those are listed; the index is not read). A share
/// that is not a directory has none. None otherwise: the caller then checks the way it
/// does without a tracker.
pub(super) fn vouched_entries(
    state: &Path,
    agent: &str,
    share: &Path,
    report: Option<&ShareReport>,
) -> Option<Vec<GitEntry>> {
    let root = open_exact(share).ok()??;
    let root_stat = fstat(root.as_fd()).ok()?;
    if kind(&root_stat) != SFlag::S_IFDIR {
        return Some(Vec::new());
    }
    let path = index_path(state, agent, share);
    let (root, root_stat, report) = (root.as_fd(), &root_stat, report?);
    let now = nix::sys::stat::lstat(&path).ok()?;
    if !report.complete
        || report.index_file != file_id(&now)
        || report.root != (root_stat.st_dev, root_stat.st_ino)
    {
        return None;
    }
    for recorded in &report.changed {
        let listed = list(root, recorded.path.bytes(), root_stat.st_dev).ok()??;
        if !same_shape(recorded, &listed) {
            return None;
        }
    }
    let git = report.git.iter().map(|(path, git)| (path.bytes(), git));
    Some(entries_of(root, share, root_stat.st_dev, git))
}

/// Same inode, same subdirectories (names and inodes, in any order), same `.git` entry:
/// the ctime may differ (files came and went). A subdirectory made anew under an old name
/// (`rmdir x; mkdir x`: no event in the old `x`) is a new inode the tracker does not follow,
/// so it must count as a change.
fn same_shape(recorded: &DirState, listed: &DirState) -> bool {
    fn sorted(dir: &DirState) -> Vec<(&[u8], u64)> {
        let mut subdirs: Vec<(&[u8], u64)> = dir
            .subdirs
            .iter()
            .map(Name::bytes)
            .zip(dir.subdir_inodes.iter().copied())
            .collect();
        subdirs.sort_unstable();
        subdirs
    }
    recorded.ino == listed.ino
        && recorded.git == listed.git
        && recorded.subdirs.len() == recorded.subdir_inodes.len()
        && sorted(recorded) == sorted(listed)
}

impl Index {
    /// The recorded `.git` entries: the directory's path and the entry's state.
    fn git_states(&self) -> impl Iterator<Item = (&[u8], &GitState)> {
        self.dirs
            .iter()
            .filter_map(|d| d.git.as_ref().map(|git| (d.path.bytes(), git)))
    }

    /// The file system's id, as recorded.
    pub(super) fn fsid(&self) -> [i32; 2] {
        self.fsid
    }

    /// Every directory's handle, in order; None when one has none (the tracker cannot
    /// follow this share).
    pub(super) fn handles(&self) -> Option<Vec<crate::sys::fanotify::DirHandle>> {
        self.dirs
            .iter()
            .map(|d| {
                (!d.handle.bytes.is_empty()).then(|| {
                    crate::sys::fanotify::DirHandle::new(
                        self.fsid,
                        d.handle.kind,
                        d.handle.bytes.clone(),
                    )
                })
            })
            .collect()
    }

    /// The report of a tracker that loaded this index from `index_file` and saw the
    /// directories at positions `changed` change.
    pub(super) fn report(
        &self,
        share: PathBuf,
        index_file: FileId,
        complete: bool,
        changed: impl Iterator<Item = usize>,
    ) -> ShareReport {
        ShareReport {
            share,
            index_file,
            root: self.root,
            complete,
            changed: changed.filter_map(|i| self.dirs.get(i).cloned()).collect(),
            git: self
                .git_states()
                .map(|(path, git)| (Name::new(path), git.clone()))
                .collect(),
        }
    }
}

/// Reads an index from an open file (the tracker's, opened for it by root).
pub(super) fn read(file: &mut std::fs::File) -> Option<Index> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(file, &mut bytes).ok()?;
    postcard::from_bytes::<Index>(&bytes)
        .ok()
        .filter(|index| index.format == FORMAT)
}

/// Removes the index of a share (unshare) or, with `share` None, all of an agent's.
pub fn forget(state: &Path, agent: &str, share: Option<&Path>) {
    match share {
        Some(share) => {
            let path = index_path(state, agent, share);
            let _ = std::fs::remove_file(path.with_extension(OLD_EXTENSION));
            let _ = std::fs::remove_file(path);
        }
        None => {
            let _ = std::fs::remove_dir_all(state.join("index").join(agent));
        }
    }
}

/// The index at `path` (postcard: compact, and read at every run); None when it is missing,
/// damaged or of another layout.
fn load(path: &Path) -> Option<Index> {
    let bytes = std::fs::read(path).ok()?;
    postcard::from_bytes::<Index>(&bytes)
        .ok()
        .filter(|index| index.format == FORMAT)
}

/// Brings `old` up to date with the tree under `root`; true when anything was listed.
///
/// Every recorded directory is stat'ed first, spread over a few threads ([`stat_recorded`]:
/// the kernel's path walks are most of the cost), then the tree is walked from the root in
/// the recorded order, taking a recorded directory's entries when its inode and ctime are
/// the recorded ones and listing it otherwise. A stat taken a moment before the walk reaches
/// its directory is as good as one taken then: either is a snapshot taken before the view,
/// and a change after it moves the ctime for the next run.
fn refresh(root: BorrowedFd, root_stat: &FileStat, old: Index) -> Result<(Index, bool)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let trusted_before = old.taken.0 - RACY.as_secs() as i64;
    let device = root_stat.st_dev;
    let stats = stat_recorded(root, &old.dirs, device)?;
    let mut recorded = Recorded::new(old.dirs, stats);
    let mut fresh = Index {
        format: FORMAT,
        root: (root_stat.st_dev, root_stat.st_ino),
        fsid: crate::sys::fanotify::fsid(root).unwrap_or_default(),
        taken: (now.as_secs() as i64, now.subsec_nanos() as i64),
        dirs: Vec::with_capacity(recorded.len()),
    };
    let mut listed = false;
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let state = match recorded.take(&rel) {
            Some((old, Some(stat))) if unchanged(&old, &stat, trusted_before) => old,
            Some((_, None)) => continue,
            // New since the last check, or changed.
            _ => {
                listed = true;
                match list(root, &rel, device)? {
                    Some(state) => state,
                    None => continue,
                }
            }
        };
        for sub in &state.subdirs {
            stack.push(join(&rel, sub.bytes()));
        }
        fresh.dirs.push(state);
    }
    // Directories gone since: listing them again is not needed, but saving is.
    listed |= recorded.any_left();
    Ok((fresh, listed))
}

/// The recorded directories with their fresh stats (None: gone, or no directory of this
/// file system any more), taken in the order the walk visits them. The walk visits an
/// unchanged tree in the recorded order, so a cursor finds each in turn; a path the cursor
/// does not hold (the tree changed) is looked up by name.
struct Recorded {
    dirs: Vec<Option<(DirState, Option<FileStat>)>>,
    cursor: usize,
    by_path: Option<HashMap<Vec<u8>, usize>>,
    left: usize,
}

impl Recorded {
    fn new(dirs: Vec<DirState>, stats: Vec<Option<FileStat>>) -> Recorded {
        let left = dirs.len();
        Recorded {
            dirs: dirs.into_iter().zip(stats).map(Some).collect(),
            cursor: 0,
            by_path: None,
            left,
        }
    }

    fn len(&self) -> usize {
        self.dirs.len()
    }

    fn take(&mut self, rel: &[u8]) -> Option<(DirState, Option<FileStat>)> {
        let at_cursor = self.dirs.get(self.cursor).and_then(|d| d.as_ref());
        let position = if at_cursor.is_some_and(|(d, _)| d.path.bytes() == rel) {
            self.cursor
        } else {
            let dirs = &self.dirs;
            let by_path = self.by_path.get_or_insert_with(|| {
                dirs.iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.as_ref().map(|(d, _)| (d.path.bytes().to_vec(), i)))
                    .collect()
            });
            *by_path.get(rel)?
        };
        let taken = self.dirs[position].take()?;
        self.cursor = position + 1;
        self.left -= 1;
        Some(taken)
    }

    fn any_left(&self) -> bool {
        self.left > 0
    }
}

/// Below this many directories one thread stats them all: starting threads costs more.
const STAT_ALONE: usize = 2048;

/// A fresh stat of every recorded directory, in order (see [`stat_dir`]). Threads end here:
/// the runner is single-threaded again when this returns.
fn stat_recorded(
    root: BorrowedFd,
    dirs: &[DirState],
    device: u64,
) -> Result<Vec<Option<FileStat>>> {
    let stat_all = |part: &[DirState]| -> Result<Vec<Option<FileStat>>> {
        part.iter()
            .map(|d| stat_dir(root, d.path.bytes(), device))
            .collect()
    };
    if dirs.len() < STAT_ALONE {
        return stat_all(dirs);
    }
    // Asked only here: std reads the cgroup's CPU quota from /proc and /sys for it.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 {
        return stat_all(dirs);
    }
    let chunk = dirs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| scope.spawn(move || stat_all(part)))
            .collect();
        let mut stats = Vec::with_capacity(dirs.len());
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| anyhow!("a thread checking the share's index failed"))??;
            stats.extend(part);
        }
        Ok(stats)
    })
}

fn unchanged(old: &DirState, stat: &FileStat, trusted_before: i64) -> bool {
    old.ino == stat.st_ino
        && old.ctime == (stat.st_ctime, stat.st_ctime_nsec)
        && old.ctime.0 < trusted_before
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(rel.len() + 1 + name.len());
    path.extend_from_slice(rel);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

fn c_path(rel: &[u8]) -> Result<CString> {
    CString::new(if rel.is_empty() { b"." } else { rel }).context("a path with a NUL byte")
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// The directory at `rel` without following a symlink at its end; None when it is gone,
/// not a directory, or on another file system. A symlink on the way (the agent renamed
/// things since its parent was checked) leads to a different inode: it is then listed,
/// and the listing refuses symlinks.
fn stat_dir(root: BorrowedFd, rel: &[u8], device: u64) -> Result<Option<FileStat>> {
    match fstatat(root, c_path(rel)?.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if kind(&st) == SFlag::S_IFDIR && st.st_dev == device => Ok(Some(st)),
        Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e).with_context(|| printable(rel)),
    }
}

fn printable(rel: &[u8]) -> String {
    super::printable(Path::new(OsStr::from_bytes(rel)))
}

/// Lists the directory at `rel` (opened beneath the root, no symlink on the way): its
/// subdirectories on the same file system, except `.git`, and its `.git` entry. The stat
/// is taken before the listing, so a change during it shows as a ctime change next time.
/// None when it is gone or no directory any more.
fn list(root: BorrowedFd, rel: &[u8], device: u64) -> Result<Option<DirState>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = match openat2(root, c_path(rel)?.as_c_str(), how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(None),
        Err(e) => return Err(e).with_context(|| printable(rel)),
    };
    let stat = fstat(fd.as_fd())?;
    if stat.st_dev != device {
        return Ok(None);
    }
    let mut state = DirState {
        path: Name::new(rel),
        ino: stat.st_ino,
        ctime: (stat.st_ctime, stat.st_ctime_nsec),
        subdirs: Vec::new(),
        subdir_inodes: Vec::new(),
        git: None,
        handle: crate::sys::fanotify::handle_of(fd.as_fd())
            .map(|h| {
                let (kind, bytes) = h.parts();
                Handle {
                    kind,
                    bytes: bytes.to_vec(),
                }
            })
            .unwrap_or_default(),
    };
    read_entries(&fd, device, &mut state).with_context(|| printable(rel))?;
    Ok(Some(state))
}

fn read_entries(fd: &OwnedFd, device: u64, state: &mut DirState) -> Result<()> {
    let mut dir = Dir::from_fd(nix::unistd::dup(fd.as_fd())?)?;
    for entry in dir.iter() {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_git = name == c".git";
        let is_dir = match entry.file_type() {
            Some(t) if !is_git => t == Type::Directory,
            _ => {
                let Ok(st) = fstatat(fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                    continue;
                };
                if is_git {
                    let k = kind(&st);
                    if (k == SFlag::S_IFDIR || k == SFlag::S_IFREG) && st.st_dev == device {
                        state.git = Some(GitState {
                            ino: st.st_ino,
                            uid: st.st_uid,
                        });
                    }
                    continue;
                }
                kind(&st) == SFlag::S_IFDIR
            }
        };
        if is_dir {
            state.subdirs.push(Name::new(name.to_bytes()));
            state.subdir_inodes.push(entry.ino());
        }
    }
    Ok(())
}

/// The `.git` entries the index records, each checked again (one `statx`: an entry in an
/// unchanged directory is the same inode, but its owner may have changed), sorted by path.
fn entries_of<'a>(
    root: BorrowedFd,
    share: &Path,
    device: u64,
    git_states: impl Iterator<Item = (&'a [u8], &'a GitState)>,
) -> Vec<GitEntry> {
    let mut found = Vec::new();
    for (dir, git) in git_states {
        let rel = join(dir, b".git");
        let Ok(path) = c_path(&rel) else { continue };
        let Ok(st) = fstatat(root, path.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let k = kind(&st);
        if st.st_ino != git.ino
            || st.st_dev != device
            || !matches!(k, SFlag::S_IFDIR | SFlag::S_IFREG)
        {
            continue;
        }
        found.push(GitEntry {
            path: share.join(OsStr::from_bytes(&rel)),
            uid: st.st_uid,
            id: (st.st_dev, st.st_ino),
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Writes the index: a temp file of this process, renamed over it. Not synced: a crash
/// that loses it costs one walk at the next run. Temp files of dead writers are removed.
fn save(path: &Path, index: &Index) -> Result<()> {
    let dir = path.parent().context("index path")?;
    let base = dir.parent().context("index path")?;
    crate::registry::ensure_root_dir(base, 0o700)?;
    crate::registry::ensure_root_dir(dir, 0o700)?;
    crate::registry::remove_dead_temps(dir);
    let _ = std::fs::remove_file(path.with_extension(OLD_EXTENSION));
    let name = path.file_name().context("index path")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(&postcard::to_stdvec(index)?)?;
        std::fs::rename(&tmp, path)?;
        anyhow::Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("saving {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempdir::Dir, OwnedFd, FileStat) {
        let dir = tempdir::Dir::new();
        for d in ["a/b/c", "a/d", "e"] {
            std::fs::create_dir_all(dir.0.join(d)).unwrap();
        }
        std::fs::create_dir(dir.0.join("a/d/.git")).unwrap();
        let root = open_exact(&dir.0).unwrap().unwrap();
        let stat = fstat(root.as_fd()).unwrap();
        (dir, root, stat)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "agentuser-index-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn found(root: &OwnedFd, share: &Path, stat: &FileStat, index: &Index) -> Vec<PathBuf> {
        entries_of(root.as_fd(), share, stat.st_dev, index.git_states())
            .into_iter()
            .map(|e| e.path.strip_prefix(share).unwrap().to_owned())
            .collect()
    }

    /// As if the index had been made long ago: every recorded ctime is trusted.
    fn settled(mut index: Index) -> Index {
        index.taken.0 += 3600;
        index
    }

    #[test]
    fn finds_a_repository_made_in_an_unchanged_tree_without_listing_the_rest() {
        let (dir, root, stat) = tree();
        let (index, listed) = refresh(root.as_fd(), &stat, Index::default()).unwrap();
        assert!(listed);
        assert_eq!(found(&root, &dir.0, &stat, &index), [Path::new("a/d/.git")]);
        // Nothing changed: nothing is listed.
        let (index, listed) = refresh(root.as_fd(), &stat, settled(index)).unwrap();
        assert!(!listed);
        // The owner makes a repository deep in the tree: only its directory changed.
        std::fs::create_dir(dir.0.join("a/b/c/.git")).unwrap();
        let (fresh, listed) = refresh(root.as_fd(), &stat, settled(index)).unwrap();
        assert!(listed);
        assert_eq!(
            found(&root, &dir.0, &stat, &fresh),
            [Path::new("a/b/c/.git"), Path::new("a/d/.git")]
        );
    }

    #[test]
    fn a_moved_tree_is_walked_again_and_a_racy_ctime_is_not_trusted() {
        let (dir, root, stat) = tree();
        let (index, _) = refresh(root.as_fd(), &stat, Index::default()).unwrap();
        std::fs::create_dir(dir.0.join("a/b/c/.git")).unwrap();
        // Positive control: a check that trusted the recorded entries whatever their ctime
        // would miss it (the index, with the ctime it has now, says nothing changed).
        let mut blind = settled(index);
        for d in &mut blind.dirs {
            let st = stat_dir(root.as_fd(), d.path.bytes(), stat.st_dev)
                .unwrap()
                .unwrap();
            d.ctime = (st.st_ctime, st.st_ctime_nsec);
        }
        let (missed, _) = refresh(root.as_fd(), &stat, blind).unwrap();
        assert_eq!(
            found(&root, &dir.0, &stat, &missed),
            [Path::new("a/d/.git")]
        );
        // Just made (racy): listed again although the ctime is the recorded one.
        let (index, listed) = refresh(root.as_fd(), &stat, missed).unwrap();
        assert!(listed);
        assert_eq!(found(&root, &dir.0, &stat, &index).len(), 2);
        // A subtree moved elsewhere in the share is found at its new place.
        std::fs::rename(dir.0.join("a/b"), dir.0.join("e/b")).unwrap();
        let (index, _) = refresh(root.as_fd(), &stat, settled(index)).unwrap();
        assert_eq!(
            found(&root, &dir.0, &stat, &index),
            [Path::new("a/d/.git"), Path::new("e/b/c/.git")]
        );
    }

    #[test]
    fn a_tree_checked_by_several_threads_finds_what_one_would() {
        let dir = tempdir::Dir::new();
        for d in 0..STAT_ALONE + 100 {
            std::fs::create_dir_all(dir.0.join(format!("d{}/e{d}", d % 50))).unwrap();
        }
        std::fs::create_dir(dir.0.join("d7/e7/.git")).unwrap();
        let root = open_exact(&dir.0).unwrap().unwrap();
        let stat = fstat(root.as_fd()).unwrap();
        let (index, _) = refresh(root.as_fd(), &stat, Index::default()).unwrap();
        let (index, listed) = refresh(root.as_fd(), &stat, settled(index)).unwrap();
        assert!(!listed, "an unchanged tree is not listed");
        std::fs::create_dir(dir.0.join("d49/e2099/.git")).unwrap();
        std::fs::remove_dir(dir.0.join("d3/e3")).unwrap();
        let (index, listed) = refresh(root.as_fd(), &stat, settled(index)).unwrap();
        assert!(listed);
        assert_eq!(index.dirs.len(), 1 + 50 + STAT_ALONE + 100 - 1);
        assert_eq!(
            found(&root, &dir.0, &stat, &index),
            [Path::new("d49/e2099/.git"), Path::new("d7/e7/.git")]
        );
    }
}
