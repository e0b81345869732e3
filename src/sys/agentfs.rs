//! Working inside a directory tree someone else controls (an agent's home), without being
//! redirected (docs/threat-model.md rows 10, 11 and 22).
//!
//! Every path is resolved from a directory descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: a symlink in any component, a `..` that climbs
//! out, or a mount crossing fails the lookup instead of being followed. Files are replaced
//! through a temp file and `renameat`, with the mode set on the descriptor, and an entry
//! planted at the destination (symlink, FIFO, hardlink, directory, someone else's file) is
//! refused rather than written through.
//!
//! This module does not change identity: callers run it as the agent
//! ([`crate::sys::ids::with_identity`]), so even a mistake here could only reach what the
//! agent itself can.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat, write};

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS)
    .union(ResolveFlag::RESOLVE_NO_XDEV);

/// Names of our temp files start with this (a reserved destination name in creds::dest).
pub const TEMP_PREFIX: &str = ".agentuser-";

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// What is found at a path inside the tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing there (or a parent directory is missing).
    Missing,
    /// A single-link regular file owned by the expected uid, with its content.
    File(Vec<u8>),
    /// Something else: a symlink on the way, a FIFO, a hardlink, a foreign or oversize file.
    Unexpected(String),
}

/// A directory tree entered through a descriptor (the agent's home).
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
    /// Files we accept in the tree belong to this uid.
    owner: u32,
}

impl Tree {
    /// Opens `path`, which must be a real directory owned by `owner`. Its parent must be
    /// trusted (root-owned), since `path` itself is looked up normally.
    pub fn open(path: &Path, owner: u32) -> Result<Tree> {
        let root = nix::fcntl::open(path, DIR_FLAGS, Mode::empty())
            .with_context(|| format!("opening {}", path.display()))?;
        let stat = fstat(&root).with_context(|| format!("checking {}", path.display()))?;
        if stat.st_uid != owner {
            bail!("{}: not owned by uid {owner}", path.display());
        }
        // Not a mount point (say, a FUSE file system its owner mounted over it), whose
        // server could answer our every step.
        let parent = path.parent().unwrap_or(Path::new("/"));
        let parent_stat = nix::sys::stat::stat(parent)
            .with_context(|| format!("checking {}", parent.display()))?;
        if parent_stat.st_dev != stat.st_dev {
            bail!("{}: a mount point, not a plain directory", path.display());
        }
        Ok(Tree {
            root,
            path: path.to_path_buf(),
            owner,
        })
    }

    fn show(&self, rel: &Path) -> String {
        self.path.join(rel).display().to_string()
    }

    /// Replaces the file at `rel` with `data`, mode `mode`: parent directories are created
    /// (0700) as needed, the content goes to a fresh temp file that is renamed into place.
    /// An existing entry other than a plain file of ours is refused.
    pub fn replace_file(&self, rel: &Path, data: &[u8], mode: u32) -> Result<()> {
        let (parent, name) = self.make_parent(rel)?;
        self.check_replaceable(&parent, name, rel)?;
        remove_temps(&parent);
        let (tmp_name, tmp) = create_temp(&parent)
            .with_context(|| format!("creating a temp file next to {}", self.show(rel)))?;
        let written = (|| -> nix::Result<()> {
            let mut rest = data;
            while !rest.is_empty() {
                let n = write(&tmp, rest)?;
                rest = &rest[n..];
            }
            fchmod(&tmp, Mode::from_bits_truncate(mode))?;
            fsync(&tmp)?;
            renameat(&parent, tmp_name.as_str(), &parent, name)?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = unlinkat(&parent, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(anyhow!("writing {}: {}", self.show(rel), describe(e)));
        }
        // Durability of the rename; the content is already in place either way.
        let _ = fsync(&parent);
        Ok(())
    }

    /// Makes sure an empty placeholder file exists at `rel` (a mount target for the runner),
    /// creating parent directories as needed. An existing plain file of ours is kept.
    /// Returns whether it was created.
    pub fn ensure_placeholder(&self, rel: &Path, mode: u32) -> Result<bool> {
        let (parent, name) = self.make_parent(rel)?;
        if self.check_replaceable(&parent, name, rel)? {
            return Ok(false);
        }
        let how = create_new(mode);
        let file = openat2(&parent, name, how)
            .map_err(|e| anyhow!("creating {}: {}", self.show(rel), describe(e)))?;
        fchmod(&file, Mode::from_bits_truncate(mode))
            .with_context(|| format!("chmod {}", self.show(rel)))?;
        Ok(true)
    }

    /// Temp files of interrupted writes in the directory `rel`, as paths for messages
    /// (a missing or unreachable directory has none).
    pub fn temps_in(&self, rel: &Path) -> Vec<String> {
        let Ok(dir) = self.open_dir(rel) else {
            return Vec::new();
        };
        temp_names(&dir)
            .iter()
            .map(|n| self.show(&rel.join(OsStr::from_bytes(n.to_bytes()))))
            .collect()
    }

    /// Removes the temp files of interrupted writes in the directory `rel`; how many.
    pub fn remove_temps_in(&self, rel: &Path) -> usize {
        self.open_dir(rel).map_or(0, |dir| remove_temps(&dir))
    }

    /// Reads the file at `rel` (at most `max` bytes) without following anything.
    pub fn read_file(&self, rel: &Path, max: u64) -> Result<Found> {
        let how = OpenHow::new()
            .flags(
                OFlag::O_RDONLY
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .resolve(RESOLVE);
        let fd = match openat2(&self.root, rel, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Found::Missing),
            Err(e @ (Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR | Errno::EACCES)) => {
                return Ok(Found::Unexpected(describe(e)));
            }
            Err(e) => bail!("opening {}: {}", self.show(rel), describe(e)),
        };
        let stat = fstat(&fd).with_context(|| format!("checking {}", self.show(rel)))?;
        if let Some(why) = self.unexpected(&stat) {
            return Ok(Found::Unexpected(why));
        }
        if stat.st_size as u64 > max {
            return Ok(Found::Unexpected(format!("larger than {max} bytes")));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {}", self.show(rel)))?;
        if data.len() as u64 > max {
            return Ok(Found::Unexpected(format!("larger than {max} bytes")));
        }
        Ok(Found::File(data))
    }

    /// Removes the entry at `rel` (anything but a directory). Returns whether something was
    /// removed. Only the entry goes: unlinking never follows a link.
    pub fn remove_file(&self, rel: &Path) -> Result<bool> {
        let (parent_rel, name) = split(rel)?;
        let parent = match self.open_dir(parent_rel) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => bail!("removing {}: {}", self.show(rel), describe(e)),
        };
        // A write interrupted here earlier may have left the content in a temp file.
        remove_temps(&parent);
        match unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => bail!("removing {}: {}", self.show(rel), describe(e)),
        }
    }

    fn open_dir(&self, rel: &Path) -> nix::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return nix::unistd::dup(&self.root);
        }
        openat2(
            &self.root,
            rel,
            OpenHow::new().flags(DIR_FLAGS).resolve(RESOLVE),
        )
    }

    /// Opens the parent directory of `rel`, creating missing components one by one (each
    /// looked up from its parent's descriptor, never through a symlink).
    fn make_parent<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let (parent_rel, name) = split(rel)?;
        let mut dir = nix::unistd::dup(&self.root)?;
        let mut walked = PathBuf::new();
        for part in parent_rel.components() {
            let Component::Normal(part) = part else {
                bail!("{}: not a plain relative path", rel.display());
            };
            walked.push(part);
            let how = OpenHow::new().flags(DIR_FLAGS).resolve(RESOLVE);
            let next = match openat2(&dir, part, how) {
                Err(Errno::ENOENT) => {
                    match mkdirat(&dir, part, Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => bail!("creating {}: {}", self.show(&walked), describe(e)),
                    }
                    openat2(&dir, part, how)
                }
                other => other,
            };
            dir = next.map_err(|e| {
                anyhow!(
                    "opening {}: {}",
                    self.show(&walked),
                    describe_entry(&dir, part, e)
                )
            })?;
            let stat = fstat(&dir)?;
            if stat.st_uid != self.owner {
                bail!(
                    "{}: directory not owned by uid {}",
                    self.show(&walked),
                    self.owner
                );
            }
        }
        Ok((dir, name))
    }

    /// Whether `name` in `parent` exists as a plain file we may replace (true), is absent
    /// (false); anything else is an error.
    fn check_replaceable(&self, parent: &OwnedFd, name: &OsStr, rel: &Path) -> Result<bool> {
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => bail!("checking {}: {}", self.show(rel), describe(e)),
            Ok(stat) => match self.unexpected(&stat) {
                None => Ok(true),
                Some(why) => bail!("refusing to write {}: {why}", self.show(rel)),
            },
        }
    }

    /// Why an entry is not a plain single-link file of the tree's owner, if it is not.
    fn unexpected(&self, stat: &FileStat) -> Option<String> {
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let why = match kind {
            SFlag::S_IFREG if stat.st_nlink != 1 => "it has other hard links",
            SFlag::S_IFREG if stat.st_uid != self.owner => "it belongs to another user",
            SFlag::S_IFREG => return None,
            SFlag::S_IFLNK => "it is a symbolic link",
            SFlag::S_IFDIR => "it is a directory",
            SFlag::S_IFIFO => "it is a FIFO",
            SFlag::S_IFSOCK => "it is a socket",
            _ => "it is a device",
        };
        Some(why.to_string())
    }
}

/// Splits a relative path into its parent and final name.
fn split(rel: &Path) -> Result<(&Path, &OsStr)> {
    let name = rel
        .file_name()
        .with_context(|| format!("{}: no file name", rel.display()))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((parent, name))
}

/// Removes temp files an interrupted write left in `dir` (best effort: they hold a copy of
/// a credential, which `cred rm` must not leave behind). Writers hold the agent's lock, so
/// none of them belongs to a live write.
fn remove_temps(dir: &OwnedFd) -> usize {
    let names = temp_names(dir);
    names
        .iter()
        .filter(|name| unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir).is_ok())
        .count()
}

/// Names of our temp files in `dir`.
fn temp_names(dir: &OwnedFd) -> Vec<std::ffi::CString> {
    let Ok(copy) = nix::unistd::dup(dir) else {
        return Vec::new();
    };
    let Ok(mut entries) = nix::dir::Dir::from_fd(copy) else {
        return Vec::new();
    };
    entries
        .iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| {
            let n = n.to_bytes();
            n.starts_with(TEMP_PREFIX.as_bytes()) && n.ends_with(b".tmp")
        })
        .collect()
}

/// A fresh temp file in `dir` (O_EXCL: never an existing entry, never through a link).
fn create_temp(dir: &OwnedFd) -> nix::Result<(String, OwnedFd)> {
    let mut last = Errno::EEXIST;
    for attempt in 0..32u32 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{TEMP_PREFIX}{}-{nanos:x}-{attempt}.tmp",
            std::process::id()
        );
        let how = create_new(0o600);
        match openat2(dir.as_fd(), name.as_str(), how) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Why opening `name` in `dir` as a directory failed: O_DIRECTORY|O_NOFOLLOW on a symlink
/// reports ENOTDIR, so look at the entry itself.
fn describe_entry(dir: &OwnedFd, name: &OsStr, e: Errno) -> String {
    if matches!(e, Errno::ENOTDIR | Errno::ELOOP) {
        if let Ok(stat) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
                return "it is a symbolic link".into();
            }
        }
    }
    describe(e)
}

/// Human words for the errors a hostile tree produces.
fn describe(e: Errno) -> String {
    match e {
        Errno::ELOOP => "a path component is a symbolic link".into(),
        Errno::EXDEV => "the path leaves the directory or crosses a mount".into(),
        Errno::ENOTDIR => "a path component is not a directory".into(),
        Errno::EISDIR => "it is a directory".into(),
        other => other.desc().to_lowercase(),
    }
}

/// How to create a new file with `mode`: never an existing one, never through a link.
fn create_new(mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(mode))
        .resolve(RESOLVE)
}
