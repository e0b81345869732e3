//! Opening a credential source only through places no one but its owner and root can change
//! (docs/threat-model.md row 25), the rule sshd's StrictModes applies to key files.
//!
//! A source in agent B's read-write share, or behind a directory another user can write,
//! can be swapped by that uid for a symlink to the owner's SSH key between two syncs of
//! agent C; the helper would then copy the key to C, or put C's ACL entry on it. So the path
//! is resolved here one component at a time, without letting the kernel follow anything:
//! every directory passed through, every directory holding a symlink that is followed, and
//! the file itself must belong to root or the owner, with no write bit for group or others
//! and no ACL entry that lets any other uid write. What is checked is what is opened: each
//! step works on the descriptor of the step before, and since nothing on the way can be
//! changed by anyone else, the answer stays true after the check.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::Mode;
use posix_acl::{ACL_WRITE, PosixACL, Qualifier};

/// Symlinks followed in one resolution at most (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// Whether symlinks on the way are followed (copies: the owner's links as they are now) or
/// refused (live credentials, recorded by their real path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    Refuse,
}

/// Opens the regular file at `path` for reading, trusting nothing that root and the `trusted`
/// uids (the agent's owner, and the caller) do not alone control. Call it with the reader's
/// identity in effect (see `with_identity`), so that the walk can reach nothing the reader
/// could not.
pub fn open(path: &Path, trusted: &[u32], links: Links) -> Result<File> {
    if !path.is_absolute() {
        bail!("{}: not an absolute path", path.display());
    }
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let root = open_step(None, OsStr::new("/"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    check_trusted(&root, trusted, Path::new("/"))?;
    // The directories from `/` down to where the walk is, with their paths.
    let mut dirs: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut followed = 0;
    // A distrusted step is reported only once the file has opened: a file the reader cannot
    // read at all says so (permission denied), as it would for any program.
    let mut distrust = None;
    while let Some(name) = pending.pop() {
        let (dir, dir_path) = dirs.last().expect("the root stays");
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let here = dir_path.join(&name);
        let fd = open_step(Some(dir), &name, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .with_context(|| here.display().to_string())?;
        let meta = File::from(fd.try_clone()?).metadata()?;
        if meta.file_type().is_symlink() {
            if links == Links::Refuse {
                bail!("{}: is a symbolic link", here.display());
            }
            followed += 1;
            if followed > MAX_SYMLINKS {
                bail!("{}: too many levels of symbolic links", path.display());
            }
            let target = readlinkat(dir, name.as_os_str())
                .with_context(|| format!("reading the link {}", here.display()))?;
            let target = PathBuf::from(target);
            if target.is_absolute() {
                dirs.truncate(1);
            }
            let mut more = components(&target);
            more.reverse();
            pending.extend(more);
            continue;
        }
        if let Err(e) = check_trusted(&fd, trusted, &here) {
            distrust.get_or_insert(e);
        }
        if pending.is_empty() {
            let file = open_file(dir, &name, &fd, &meta, &here)?;
            return match distrust {
                Some(e) => Err(e),
                None => Ok(file),
            };
        }
        if !meta.is_dir() {
            bail!("{}: not a directory", here.display());
        }
        dirs.push((fd, here));
    }
    bail!("{}: it is a directory, not a regular file", path.display())
}

/// The path's components below `/`, `.` left out, `..` kept (resolved by the walk, as the
/// kernel would: after the symlinks before it).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn open_step(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag) -> Result<OwnedFd> {
    let flags = flags | OFlag::O_CLOEXEC;
    let fd = match dir {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    fd.map_err(std::io::Error::from)
        .map_err(anyhow::Error::from)
}

/// Opens the last component for reading: only a regular file (opening a FIFO or a device
/// can block or have effects), and only the very inode that was checked. The checked `O_PATH`
/// descriptor is reopened through /proc/self/fd, so no name is looked up again: a file swapped
/// in by whoever can write the directory (a step that may be distrusted, reported after the
/// open) is never opened, not even with the reader's rights. Without /proc, by name, and the
/// inode compared.
fn open_file(
    dir: &OwnedFd,
    name: &OsStr,
    checked_fd: &OwnedFd,
    checked: &std::fs::Metadata,
    shown: &Path,
) -> Result<File> {
    check_kind(checked).with_context(|| shown.display().to_string())?;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let reopened = nix::fcntl::open(
        format!("/proc/self/fd/{}", checked_fd.as_raw_fd()).as_str(),
        flags,
        Mode::empty(),
    );
    let fd = match reopened {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => open_step(Some(dir), name, flags | OFlag::O_NOFOLLOW)
            .with_context(|| shown.display().to_string())?,
        Err(e) => {
            return Err(std::io::Error::from(e)).with_context(|| shown.display().to_string());
        }
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (checked.dev(), checked.ino()) {
        bail!("{}: replaced while it was opened", shown.display());
    }
    Ok(file)
}

/// Refuses anything but a regular file, naming what it is.
pub fn check_kind(meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    bail!("it is {what}, not a regular file")
}

/// Refuses an entry that a uid other than root and the `trusted` ones owns or may write.
fn check_trusted(fd: &impl AsFd, trusted: &[u32], shown: &Path) -> Result<()> {
    let meta = File::from(fd.as_fd().try_clone_to_owned()?).metadata()?;
    if meta.uid() != 0 && !trusted.contains(&meta.uid()) {
        bail!(
            "{}: owned by uid {}, who could swap it for a link to another file: not a credential source",
            shown.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{}: writable by group or others, who could swap it for a link to another file: not a credential source",
            shown.display()
        );
    }
    if let Some(uid) = acl_writer(fd, trusted)? {
        bail!(
            "{}: its ACL lets {uid} write it (a share?), who could swap it for a link to another file: not a credential source",
            shown.display()
        );
    }
    Ok(())
}

/// A named ACL entry other than root and the `trusted` uids that grants write, as the mask
/// lets it.
fn acl_writer(fd: &impl AsFd, trusted: &[u32]) -> Result<Option<String>> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let acl = match PosixACL::read_acl(&proc_path) {
        Ok(acl) => acl,
        // Symlinks and file systems without ACLs have no entries to grant anything.
        Err(e) if is_unsupported(&e) => return Ok(None),
        Err(e) => return Err(anyhow!("reading the ACL of {proc_path}: {e}")),
    };
    let mask = acl.get(Qualifier::Mask).unwrap_or(0o7);
    for entry in acl.entries() {
        let writes = entry.perm & mask & ACL_WRITE != 0;
        let who_named = match entry.qual {
            Qualifier::User(uid) if !trusted.contains(&uid) && uid != 0 => format!("uid {uid}"),
            Qualifier::Group(gid) => format!("group {gid}"),
            _ => continue,
        };
        if writes {
            return Ok(Some(who_named));
        }
    }
    Ok(None)
}

fn is_unsupported(err: &posix_acl::ACLError) -> bool {
    err.as_io_error()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|errno| errno == libc::EOPNOTSUPP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last step's name swapped for a FIFO between the check and the open (what whoever
    /// can write the directory can do): the checked file is opened, the FIFO never.
    #[test]
    fn the_checked_inode_is_opened_not_what_the_name_now_holds() {
        let dir =
            std::env::temp_dir().join(format!("agentuser-secure-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), "checked").unwrap();
        let dir_fd = open_step(None, dir.as_os_str(), OFlag::O_PATH | OFlag::O_DIRECTORY).unwrap();
        let name = OsStr::new("token");
        let checked_fd = open_step(Some(&dir_fd), name, OFlag::O_PATH | OFlag::O_NOFOLLOW).unwrap();
        let checked = File::from(checked_fd.try_clone().unwrap())
            .metadata()
            .unwrap();
        std::fs::rename(dir.join("token"), dir.join("moved")).unwrap();
        nix::unistd::mkfifo(&dir.join("token"), Mode::from_bits_truncate(0o600)).unwrap();
        // Control: by name, the open now reaches the FIFO.
        let by_name = open_step(Some(&dir_fd), name, OFlag::O_RDONLY | OFlag::O_NONBLOCK).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(
            File::from(by_name)
                .metadata()
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let file = open_file(&dir_fd, name, &checked_fd, &checked, Path::new("token")).unwrap();
        assert!(file.metadata().unwrap().is_file());
        assert_eq!(std::io::read_to_string(file).unwrap(), "checked");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
