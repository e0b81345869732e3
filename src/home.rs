//! Making an agent's home through descriptors, instead of `useradd --create-home`.
//!
//! useradd makes the home after it has written the account, as a separate step: a create
//! interrupted there left useradd running, and the rerun, which looked for the home before
//! useradd made it, rolled back and left a home of a uid with no account (issue 15 item 1).
//! Here the home is made by agentuser itself, under the agent's lock, after the account
//! exists: a rerun finds either no home, or a root-owned one it made (and completes it), or
//! the finished one. Everything is done on descriptors below the root-owned home base,
//! without following links: the directory stays root's (mode 0700) until the skeleton is
//! in, and is handed to the agent last, with `fchown` on the descriptor.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

/// Where the skeleton comes from (root's, like useradd's default).
const SKELETON: &str = "/etc/skel";
/// Deepest skeleton directory copied, and the largest file.
const MAX_DEPTH: usize = 8;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Makes (or completes) the home `name` in the root-owned directory `base` for `uid`/`gid`:
/// mode 0700, the skeleton's directories and regular files inside (links are skipped).
pub fn make(base: &Path, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
    let shown = base.join(name);
    let what = || format!("home {}", shown.display());
    let base_fd = open_dir(None, base.as_os_str()).with_context(what)?;
    let home = match mkdirat(base_fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => open_dir(Some(&base_fd), name).with_context(what)?,
        Err(e) => return Err(e).with_context(what),
    };
    let stat = fstat(home.as_fd()).with_context(what)?;
    if stat.st_uid == uid && stat.st_gid == gid && stat.st_mode & 0o7777 == 0o700 {
        return Ok(()); // Finished by an earlier run.
    }
    if stat.st_uid != 0 {
        bail!(
            "{}: exists and is not a home agentuser started (uid {})",
            what(),
            stat.st_uid
        );
    }
    fchmod(home.as_fd(), Mode::from_bits_truncate(0o700)).with_context(what)?;
    copy_tree(Path::new(SKELETON), &home, uid, gid, 0).with_context(what)?;
    // Last: from here on the agent owns it.
    fchown(
        home.as_fd(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )
    .with_context(what)?;
    Ok(())
}

fn open_dir(at: Option<&OwnedFd>, name: &OsStr) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match at {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    Ok(fd?)
}

/// Copies the directories and regular files of `src` into `dst` (a directory nobody but
/// root can write yet), each owned by `uid`/`gid` with its mode. What exists already (from
/// an interrupted run) is completed, never followed.
fn copy_tree(src: &Path, dst: &OwnedFd, uid: u32, gid: u32, depth: usize) -> Result<()> {
    let entries = match std::fs::read_dir(src) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name();
        let mode = Mode::from_bits_truncate(meta.permissions().mode() & 0o777);
        if meta.is_dir() && depth < MAX_DEPTH {
            match mkdirat(dst.as_fd(), name.as_os_str(), mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("mkdir {}", Path::new(&name).display()));
                }
            }
            let sub = open_dir(Some(dst), &name)?;
            copy_tree(&entry.path(), &sub, uid, gid, depth + 1)?;
            own(&sub, uid, gid, mode)?;
        } else if meta.is_file() && meta.len() <= MAX_FILE_BYTES {
            copy_file(&entry.path(), dst, &name, uid, gid, mode)?;
        }
    }
    Ok(())
}

fn copy_file(
    src: &Path,
    dst: &OwnedFd,
    name: &OsStr,
    uid: u32,
    gid: u32,
    mode: Mode,
) -> Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dst, name, flags | OFlag::O_TRUNC, mode)
        .with_context(|| format!("creating {}", Path::new(&name).display()))?;
    let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&data)?;
    own(&file, uid, gid, mode)
}

fn own(fd: &impl AsFd, uid: u32, gid: u32, mode: Mode) -> Result<()> {
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    fchmod(fd, mode)?;
    Ok(())
}
