//! Which paths may be shared, and opening them without being redirected.
//!
//! The path is resolved with the caller's own access rights (a non-root caller cannot use
//! `share` to learn what lies in a directory it cannot search), canonicalized, then opened
//! again with `RESOLVE_NO_SYMLINKS`, so the descriptor the walk starts from is the entry at
//! the canonical path and every check below is about that path.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, SFlag, fstat};

use crate::context::Context;
use crate::registry::AgentRecord;
use crate::sys::ids::{Identity, with_identity};

/// System trees: neither they nor anything below them may be shared.
const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/lost+found",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/usr",
    "/var",
];
/// Below these, user-owned trees may be shared; the directories themselves may not.
const SHARED_PARENTS: &[&str] = &[
    "/home", "/media", "/mnt", "/opt", "/srv", "/tmp", "/var/tmp",
];

/// A path to share, opened.
pub struct Resolved {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub stat: FileStat,
}

/// Opens `path` (absolute, canonical) as an `O_PATH` descriptor, failing if any component is
/// a symlink. `None` when it does not exist.
pub fn open_exact(path: &Path) -> Result<Option<OwnedFd>> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(AT_FDCWD, path, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(nix::errno::Errno::ELOOP) => {
            bail!("{}: a component changed into a symlink", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// The identity whose rights resolve the path (see `Caller::path_rights`).
fn resolver(ctx: &Context) -> Identity {
    ctx.caller.path_rights()
}

/// Canonicalizes `given` with the caller's rights.
pub fn canonical(ctx: &Context, given: &Path) -> Result<PathBuf> {
    with_identity(&resolver(ctx), || {
        std::fs::canonicalize(given).with_context(|| format!("{}", given.display()))
    })
}

/// `given` made absolute and cleaned of `.` and `..` without touching the file system, for
/// finding the record of a path that no longer exists.
pub fn lexical(given: &Path) -> Result<PathBuf> {
    let base = if given.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().context("current directory")?
    };
    let mut out = base;
    for component in given.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Resolves and checks a path to share with `record`'s agent; refuses with a one-line
/// reason anything docs/design.md section 5 excludes.
pub fn resolve_for_share(ctx: &Context, record: &AgentRecord, given: &Path) -> Result<Resolved> {
    let shown = given.display();
    let path = canonical(ctx, given)?;
    let (fd, stat) = with_identity(&resolver(ctx), || {
        let fd = open_exact(&path)?
            .ok_or_else(|| anyhow!("{}: vanished while being resolved", path.display()))?;
        let stat = fstat(&fd).with_context(|| format!("{}", path.display()))?;
        Ok((fd, stat))
    })?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFDIR && kind != SFlag::S_IFREG {
        bail!("{shown}: not a directory or regular file");
    }
    if path.to_str().is_none() {
        bail!("{shown}: the path is not valid UTF-8 and cannot be recorded: rename it");
    }
    check_location(ctx, record, &path).with_context(|| format!("{shown}"))?;
    if !ctx.caller.is_root && stat.st_uid != ctx.caller.uid {
        bail!("{shown}: permission denied: you do not own it");
    }
    let probe = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    if !super::acl::supported(&probe).with_context(|| format!("{shown}: reading its ACL"))? {
        bail!("{shown}: the file system does not support POSIX ACLs");
    }
    Ok(Resolved { path, fd, stat })
}

/// Refuses `/`, system trees, homes (whole, or trees containing one), agent homes, and
/// paths inside or above another share of the same agent.
fn check_location(ctx: &Context, record: &AgentRecord, path: &Path) -> Result<()> {
    if path == Path::new("/") {
        bail!("refusing to share the root directory");
    }
    for tree in SYSTEM_TREES {
        let tree = Path::new(tree);
        let allowed_below = SHARED_PARENTS
            .iter()
            .any(|p| path.starts_with(p) && path != Path::new(p));
        if path.starts_with(tree) && !allowed_below {
            bail!("refusing to share a system directory ({})", tree.display());
        }
    }
    if let Some(parent) = SHARED_PARENTS.iter().find(|p| path == Path::new(p)) {
        bail!("refusing to share {parent} itself: share a directory below it");
    }
    let base = &ctx.config.home_base;
    if path.starts_with(base) || base.starts_with(path) {
        bail!("refusing to share agent homes (under {})", base.display());
    }
    for agent in ctx.registry.all()? {
        if path.starts_with(&agent.home) || agent.home.starts_with(path) {
            bail!(
                "refusing to share the home of agent '{}' or anything in it",
                agent.name
            );
        }
    }
    for (user, home) in homes()? {
        if home == path {
            bail!(
                "refusing to share the whole home directory of '{user}': share a directory in it"
            );
        }
        if home.starts_with(path) && home != Path::new("/") {
            bail!("refusing to share a tree that contains the home directory of '{user}'");
        }
    }
    for share in &record.shares {
        if share.path != path && path.starts_with(&share.path) {
            bail!(
                "lies inside {}, already shared with '{}': change that share or unshare it first",
                share.path.display(),
                record.name
            );
        }
        if share.path != path && share.path.starts_with(path) {
            bail!(
                "contains {}, already shared with '{}': unshare it first",
                share.path.display(),
                record.name
            );
        }
    }
    Ok(())
}

/// Home directories of the accounts in /etc/passwd.
fn homes() -> Result<Vec<(String, PathBuf)>> {
    let text = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let (user, home) = (fields.first()?, fields.get(5)?);
            home.starts_with('/')
                .then(|| (user.to_string(), PathBuf::from(home)))
        })
        .map(|(user, home)| {
            // A home reached through a symlink is compared by where it leads.
            let real = std::fs::canonicalize(&home).unwrap_or(home);
            (user, real)
        })
        .collect())
}
