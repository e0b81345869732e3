//! Git in read-write shares (docs/design.md section 10; docs/threat-model.md rows 15, 23, 24).
//!
//! The agent commits without ever holding the owner's git directory. For every repository
//! of the owner in a read-write share (a `.git` directory, or a gitfile of a linked
//! worktree or submodule), the agent has a git directory of its own, kept in agentuser's
//! state outside every share:
//!
//! ```text
//! /var/lib/agentuser/git/            root 0700
//!   NAME/                            root 0700 (the agent cannot reach it outside its view)
//!     ID/                            the agent's git directory: agent 0700
//!     ID.gitfile                     root 0644: "gitdir: <the agent's directory in the view>"
//! ```
//!
//! In the agent's view ([`prepare`]):
//! - the state directory is an empty root-made tmpfs (the runner hides it);
//! - the owner's common git directory is mounted read-only at `.../view/owner-git/ID`;
//! - the agent's directory is mounted at `.../view/agent-git/ID`, and over the share's
//!   `.git` directory (or, for a gitfile, the root-written `ID.gitfile` is mounted
//!   read-only over the gitfile), so `git` in the shared work tree uses it with no flag.
//!
//! The agent's directory borrows the owner's objects through `objects/info/alternates`
//! and is initialised by the agent itself, as the agent, at its first run ([`init`]) from
//! the owner's `HEAD`, refs and index. Everything it writes (commits, config, hooks) stays
//! in its own directory; the owner's `.git` stays read-only for it (ACL `r-X` and a
//! read-only view). The owner gets the commits with `git fetch` through the remote helper
//! ([`remote`]), which runs `git upload-pack` as the agent inside its view: the owner's git
//! only ever receives a pack and never runs inside the agent's directory.
#![forbid(unsafe_code)]

pub mod init;
pub mod protection;
pub mod remote;

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::registry::AgentRecord;
use crate::share::{Access, Contents, ShareState};
use crate::view::ViewMount;

/// What kind of `.git` entry the owner's repository has in the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A `.git` directory: the repository itself.
    Dir,
    /// A gitfile (`gitdir: PATH`): a linked worktree or a submodule.
    File,
}

/// One of the owner's repositories in a read-write share of the agent.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The share it lies in.
    pub share: PathBuf,
    /// The owner's `.git` entry.
    pub entry: PathBuf,
    pub kind: EntryKind,
    /// Owner of the share's tree.
    pub tree_uid: u32,
    /// Stable name of the agent's git directory for it.
    pub id: String,
}

impl Repo {
    /// The work tree: the directory holding the `.git` entry (what the remote URL names).
    pub fn worktree(&self) -> &Path {
        self.entry.parent().unwrap_or(&self.entry)
    }
}

/// The shares whose repositories get an agent git directory: read-write, without
/// `--allow-git-writes`, not being revoked, not inside a `.git` (those are mounted
/// read-only as a whole).
fn protected_shares(record: &AgentRecord) -> impl Iterator<Item = &crate::share::ShareRecord> {
    record.shares.iter().filter(|s| {
        s.access == Access::Rw
            && !s.allow_git_writes
            && s.state != ShareState::Revoking
            && !s.path.components().any(|c| c.as_os_str() == ".git")
    })
}

/// The owner's repositories in the agent's read-write shares, as `contents` found them (the
/// agent's own repositories are left alone: the owner's git refuses them as another
/// user's).
pub fn repositories(record: &AgentRecord, contents: &Contents) -> Vec<Repo> {
    let mut repos = Vec::new();
    for share in protected_shares(record) {
        let Some(entries) = contents.git_entries(&share.path) else {
            continue;
        };
        for entry in entries.iter().filter(|e| e.uid != record.uid) {
            let kind = match std::fs::symlink_metadata(&entry.path) {
                Ok(m) if m.is_dir() => EntryKind::Dir,
                Ok(m) if m.is_file() => EntryKind::File,
                _ => continue,
            };
            repos.push(Repo {
                share: share.path.clone(),
                id: repo_id(&entry.path),
                entry: entry.path.clone(),
                kind,
                tree_uid: share.tree_uid,
            });
        }
    }
    repos
}

/// `BASENAME-HASH`: readable, and unique per `.git` path.
fn repo_id(entry: &Path) -> String {
    let digest = Sha256::digest(entry.as_os_str().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let base: String = entry
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(32)
        .collect();
    let base = base.trim_start_matches('.');
    if base.is_empty() {
        hex
    } else {
        format!("{base}-{hex}")
    }
}

/// Where agent git directories live on the host.
fn state_dir(ctx: &Context, agent: &str) -> PathBuf {
    ctx.registry.root().join("git").join(agent)
}

/// The owner's common git directory of `id` in the agent's view (read-only).
pub fn owner_view(ctx: &Context, id: &str) -> PathBuf {
    ctx.registry.root().join("view/owner-git").join(id)
}

/// The agent's git directory of `id` in the agent's view.
pub fn agent_view(ctx: &Context, id: &str) -> PathBuf {
    ctx.registry.root().join("view/agent-git").join(id)
}

/// What the runner adds to a run for git.
#[derive(Debug, Default)]
pub struct GitView {
    pub mounts: Vec<ViewMount>,
    /// Done by the agent process, as the agent, before its command runs.
    pub init: Vec<init::Job>,
    pub warnings: Vec<String>,
}

/// Makes the agent's git directories (empty, agent-owned) for every repository of the
/// owner in its read-write shares, and says how the view mounts them. Must run while the
/// runner is single-threaded (gitfiles are read with the owner's rights).
pub fn prepare(ctx: &Context, record: &AgentRecord, contents: &Contents) -> Result<GitView> {
    let mut view = GitView::default();
    let repos = repositories(record, contents);
    if repos.is_empty() {
        return Ok(view);
    }
    let dir = state_dir(ctx, &record.name);
    crate::registry::ensure_root_dir(&ctx.registry.root().join("git"), 0o700)?;
    crate::registry::ensure_root_dir(&dir, 0o700)?;
    let parent = open_dir(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let identity = identity_of(record);
    for repo in &repos {
        let owner = match owner_dirs(repo, &repos) {
            Ok(found) => found,
            Err(e) => {
                view.warnings.push(format!(
                    "{}: not given a git directory of the agent's own: {}",
                    repo.entry.display(),
                    crate::error::one_line(&e)
                ));
                continue;
            }
        };
        make_agent_dir(parent.as_fd(), &repo.id, record)
            .with_context(|| format!("creating {}", dir.join(&repo.id).display()))?;
        let host_agent = dir.join(&repo.id);
        let in_view = agent_view(ctx, &repo.id);
        let owner_common = owner_view(ctx, &repo.id);
        view.mounts.push(ViewMount {
            source: owner.common.clone(),
            target: owner_common.clone(),
            read_only: true,
        });
        view.mounts.push(ViewMount {
            source: host_agent.clone(),
            target: in_view.clone(),
            read_only: false,
        });
        match repo.kind {
            EntryKind::Dir => view.mounts.push(ViewMount {
                source: host_agent,
                target: repo.entry.clone(),
                read_only: false,
            }),
            EntryKind::File => {
                let gitfile = dir.join(format!("{}.gitfile", repo.id));
                let text = format!("gitdir: {}\n", in_view.display());
                write_public_file(&gitfile, text.as_bytes())?;
                view.mounts.push(ViewMount {
                    source: gitfile,
                    target: repo.entry.clone(),
                    read_only: true,
                });
            }
        }
        let relative = owner
            .gitdir
            .strip_prefix(&owner.common)
            .unwrap_or(Path::new(""));
        view.init.push(init::Job {
            agent_dir: in_view,
            owner_gitdir: owner_common.join(relative),
            owner_common,
            name: identity.0.clone(),
            email: identity.1.clone(),
        });
    }
    Ok(view)
}

/// The agent's default author identity: `agent-NAME <agent-NAME@HOSTNAME>`.
fn identity_of(record: &AgentRecord) -> (String, String) {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    (record.user.clone(), format!("{}@{host}", record.user))
}

/// Opens a directory without following a symlink anywhere on the way.
fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(AT_FDCWD, path, how)
}

/// Creates `id` in `parent` (root's, unreachable for the agent) owned by the agent, 0700.
fn make_agent_dir(parent: std::os::fd::BorrowedFd, id: &str, record: &AgentRecord) -> Result<()> {
    match mkdirat(parent, id, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = openat(
        parent,
        id,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let stat = fstat(dir.as_fd())?;
    if stat.st_uid != record.uid || stat.st_gid != record.gid {
        fchown(
            dir.as_fd(),
            Some(Uid::from_raw(record.uid)),
            Some(Gid::from_raw(record.gid)),
        )?;
    }
    if stat.st_mode & 0o7777 != 0o700 {
        fchmod(dir.as_fd(), Mode::from_bits_truncate(0o700))?;
    }
    Ok(())
}

/// Writes a root-owned 0644 file in a root-only directory (temp file and rename).
fn write_public_file(path: &Path, data: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    fchmod(file.as_fd(), Mode::from_bits_truncate(0o644))?;
    file.write_all(data)?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The owner's git directory of a repository and its common directory (equal for a
/// `.git` directory; for a linked worktree, `worktrees/X` and the main `.git`).
#[derive(Debug)]
struct OwnerDirs {
    gitdir: PathBuf,
    common: PathBuf,
}

fn owner_dirs(repo: &Repo, all: &[Repo]) -> Result<OwnerDirs> {
    if repo.kind == EntryKind::Dir {
        return Ok(OwnerDirs {
            gitdir: repo.entry.clone(),
            common: repo.entry.clone(),
        });
    }
    let identity = owner_identity(repo.tree_uid)?;
    crate::sys::ids::with_identity(&identity, || resolve_gitfile(repo, all))
}

fn owner_identity(uid: u32) -> Result<crate::sys::ids::Identity> {
    let user = crate::account::user_by_uid(uid)?
        .ok_or_else(|| anyhow!("the share's owner (uid {uid}) has no account"))?;
    Ok(crate::sys::ids::Identity {
        uid,
        gid: user.gid.as_raw(),
        groups: vec![user.gid.as_raw()],
    })
}

/// Follows a gitfile with the owner's rights, without symlinks. Only what the owner made
/// is accepted (a gitfile could have been planted by the agent of a concurrent run): a
/// submodule's git directory inside one of the owner's `.git` directories of the same
/// share, or a linked worktree whose main repository points back at this gitfile
/// (`worktrees/X/gitdir`, which git writes and the agent cannot).
fn resolve_gitfile(repo: &Repo, all: &[Repo]) -> Result<OwnerDirs> {
    let here = repo.worktree();
    let text = read_small(&repo.entry)?;
    let target = text
        .trim_end()
        .strip_prefix("gitdir: ")
        .ok_or_else(|| anyhow!("not a gitfile"))?;
    let gitdir = normalize(&here.join(target)).ok_or_else(|| anyhow!("bad gitdir path"))?;
    let gitdir_fd = open_dir(&gitdir).with_context(|| format!("{}", gitdir.display()))?;
    owned_by(gitdir_fd.as_fd(), repo.tree_uid, &gitdir)?;
    let common = match read_small(&gitdir.join("commondir")) {
        Ok(c) => normalize(&gitdir.join(c.trim_end())).ok_or_else(|| anyhow!("bad commondir"))?,
        Err(_) => gitdir.clone(),
    };
    let common_fd = open_dir(&common).with_context(|| format!("{}", common.display()))?;
    owned_by(common_fd.as_fd(), repo.tree_uid, &common)?;
    let inside_owner_repo = all
        .iter()
        .any(|r| r.kind == EntryKind::Dir && r.share == repo.share && gitdir.starts_with(&r.entry));
    let points_back = read_small(&gitdir.join("gitdir"))
        .is_ok_and(|back| Path::new(back.trim_end()) == repo.entry);
    if !inside_owner_repo && !points_back {
        bail!(
            "{} is neither a submodule's git directory in the share nor a worktree of it",
            gitdir.display()
        );
    }
    Ok(OwnerDirs { gitdir, common })
}

fn owned_by(fd: std::os::fd::BorrowedFd, uid: u32, path: &Path) -> Result<()> {
    let stat = fstat(fd)?;
    if stat.st_uid != uid
        || SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR
    {
        bail!("{}: not a directory of the share's owner", path.display());
    }
    Ok(())
}

/// A small regular file's text, opened without following a symlink anywhere.
fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(AT_FDCWD, path, how).with_context(|| format!("{}", path.display()))?;
    let stat = fstat(fd.as_fd())?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        bail!("{}: not a regular file", path.display());
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("{}", path.display()))?;
    Ok(text)
}

/// `path` with `.` and `..` resolved lexically (it is then opened without symlinks, so the
/// kernel resolves it the same way); None when it is not absolute.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    path.is_absolute().then_some(out)
}

/// The agent's environment for git: the shares' `safe.directory` entries (see
/// [`crate::share::agent_env`]) plus the owner's repositories in the view, so `git fetch
/// owner` works in the agent's repository.
pub fn agent_env(
    ctx: &Context,
    record: &AgentRecord,
    contents: &Contents,
) -> Vec<(String, String)> {
    let mut env = crate::share::agent_env(record, contents);
    let extra: Vec<PathBuf> = repositories(record, contents)
        .iter()
        .map(|r| owner_view(ctx, &r.id))
        .collect();
    if extra.is_empty() {
        return env;
    }
    let mut count = env
        .iter()
        .find(|(k, _)| k == "GIT_CONFIG_COUNT")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    env.retain(|(k, _)| k != "GIT_CONFIG_COUNT");
    for dir in extra {
        env.push((format!("GIT_CONFIG_KEY_{count}"), "safe.directory".into()));
        env.push((
            format!("GIT_CONFIG_VALUE_{count}"),
            dir.to_string_lossy().into_owned(),
        ));
        count += 1;
    }
    env.insert(0, ("GIT_CONFIG_COUNT".into(), count.to_string()));
    env
}

/// Removes the agent's git directories (at `delete`). The directory is root's; what is in
/// it may be anything the agent made, which `remove_dir_all` removes without following
/// symlinks.
pub fn forget(ctx: &Context, agent: &str) -> Result<()> {
    let dir = state_dir(ctx, agent);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Printable form of a path for messages.
pub fn shown(path: &Path) -> String {
    String::from_utf8_lossy(OsStr::as_bytes(path.as_os_str())).into_owned()
}
