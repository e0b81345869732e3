//! Sharing trees with an agent through POSIX ACLs (DESIGN.md section 5; THREAT-MODEL rows
//! 9, 12, 13, 15, 17).
//!
//! - [`refuse`]: which paths may be shared, resolved with the caller's rights.
//! - [`walk`]: the descriptor-based, multi-threaded walk over the tree.
//! - [`acl`]: the ACL edits on one entry.
//! - [`git`]: `.git` entries, for the read-only binds in the agent's view and git's
//!   `safe.directory`.
//!
//! No ACL is ever placed on a share's ancestors: the runner bind-mounts each share at its
//! own path in the agent's view ([`view_mounts`]), so nothing else of the owner's becomes
//! reachable by traversal. Every grant is journaled in the agent record before the walk
//! starts (state `granting` / `revoking`), so an interrupted `share` or `unshare` is
//! completed by running it again.
#![forbid(unsafe_code)]

mod acl;
pub(crate) use acl::clamp_to_mask;
mod git;
mod index;
mod progress;
mod refuse;
mod walk;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::names::check_agent_name;
use crate::registry::{AgentRecord, Lock};
use crate::view::ViewMount;
use crate::{eventlog, policy};

pub use git::GitEntry;
pub use walk::printable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

/// Where a share is in its life: anything but `ready` marks a walk that was interrupted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareState {
    #[default]
    Ready,
    /// `share` started granting; run it again to finish.
    Granting,
    /// `unshare` (or `delete`) started revoking; run it again to finish.
    Revoking,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRecord {
    /// Canonical path of the shared file or directory.
    pub path: PathBuf,
    pub access: Access,
    /// Owner of the tree's root when shared: only entries it or the agent owns get ACLs.
    pub tree_uid: u32,
    /// `--allow-git-writes`: `.git` inside this read-write share is writable by the agent.
    #[serde(default)]
    pub allow_git_writes: bool,
    #[serde(default)]
    pub state: ShareState,
}

impl ShareRecord {
    /// The user named in default ACLs for read-write shares (root needs no entry).
    fn named_owner(&self) -> Option<u32> {
        (self.tree_uid != 0).then_some(self.tree_uid)
    }
}

/// Loads an agent the caller may act on, under its lock.
fn load(ctx: &Context, name: &str) -> Result<(Lock, AgentRecord)> {
    check_agent_name(name)?;
    let lock = ctx.registry.lock(name)?;
    let record = policy::ready_agent(ctx, name)?;
    Ok((lock, record))
}

pub fn share(
    ctx: &Context,
    name: &str,
    path: &Path,
    access: Access,
    allow_git_writes: bool,
) -> Result<()> {
    if allow_git_writes && access != Access::Rw {
        return Err(crate::error::usage("share: --allow-git-writes needs --rw"));
    }
    let (lock, mut record) = load(ctx, name)?;
    let shown = path.display().to_string();
    let target = refuse::resolve_for_share(ctx, &record, path).context("share")?;
    let wanted = ShareRecord {
        path: target.path.clone(),
        access,
        tree_uid: target.stat.st_uid,
        allow_git_writes,
        state: ShareState::Granting,
    };
    // Journal first: from here on the record says what the tree is meant to look like.
    match record.shares.iter_mut().find(|s| s.path == target.path) {
        Some(existing) => {
            if existing.tree_uid != wanted.tree_uid {
                bail!("share: {shown}: its owner changed since it was shared: unshare it first");
            }
            *existing = wanted.clone();
        }
        None => record.shares.push(wanted.clone()),
    }
    ctx.registry.save(&lock, &record)?;
    let op = walk::Op::Grant {
        grant: acl::Grant {
            agent: record.uid,
            write: access == Access::Rw,
            owner: wanted.named_owner(),
        },
        git_writes: allow_git_writes,
    };
    let outcome = run_walk(&target.fd, &target.path, op, &wanted, &record, "sharing")
        .with_context(|| format!("share: {shown}"))?;
    // The walk changed every directory's ctime: the index the runner checks starts afresh.
    // Not fatal: the first run makes it.
    if let Err(e) = index::git_entries(ctx.registry.root(), name, &target.path, true) {
        eprintln!(
            "agentuser: warning: share: {shown}: indexing its .git entries: {}",
            crate::error::one_line(&e)
        );
    }
    if let Some(s) = record.shares.iter_mut().find(|s| s.path == target.path) {
        s.state = ShareState::Ready;
    }
    ctx.registry.save(&lock, &record)?;
    let detail = format!(
        "path={} access={}{} entries={} changed={} skipped={}",
        printable(&target.path),
        access_word(access),
        if allow_git_writes { " git-writes" } else { "" },
        outcome.entries,
        outcome.changed,
        outcome.problem_count
    );
    eventlog::record(ctx, "share", name, &detail);
    if allow_git_writes {
        eprintln!(
            "agentuser: {}",
            crate::git::protection::allow_git_writes_warning(&printable(&target.path))
        );
    }
    report_problems("share", &target.path, &outcome);
    Ok(())
}

pub fn unshare(ctx: &Context, name: &str, path: &Path) -> Result<()> {
    let (lock, mut record) = load(ctx, name)?;
    let shown = path.display().to_string();
    // The tree may be gone, or unreachable now: then the record is found by the path as
    // given, made absolute.
    let wanted = refuse::canonical(ctx, path)
        .or_else(|_| refuse::lexical(path))
        .with_context(|| format!("unshare: {shown}"))?;
    let Some(index) = record.shares.iter().position(|s| s.path == wanted) else {
        bail!("unshare: {shown}: not shared with '{name}'");
    };
    let outcome =
        revoke(ctx, &lock, &mut record, index).with_context(|| format!("unshare: {shown}"))?;
    let detail = format!(
        "path={} entries={} changed={} skipped={}",
        printable(&wanted),
        outcome.entries,
        outcome.changed,
        outcome.problem_count
    );
    eventlog::record(ctx, "unshare", name, &detail);
    report_problems("unshare", &wanted, &outcome);
    Ok(())
}

/// Removes every share of the agent (called by `delete`, under the agent's lock).
pub fn revoke_all(ctx: &Context, lock: &Lock, record: &mut AgentRecord) -> Result<()> {
    while !record.shares.is_empty() {
        crate::error::check_interrupt()?;
        let path = record.shares[0].path.clone();
        let outcome = revoke(ctx, lock, record, 0)
            .with_context(|| format!("unsharing {}", path.display()))?;
        report_problems("unshare", &path, &outcome);
    }
    index::forget(ctx.registry.root(), &record.name, None);
    Ok(())
}

/// Revokes share `index` of `record`: journals, walks, then drops it from the record.
fn revoke(
    ctx: &Context,
    lock: &Lock,
    record: &mut AgentRecord,
    index: usize,
) -> Result<walk::Outcome> {
    record.shares[index].state = ShareState::Revoking;
    ctx.registry.save(lock, record)?;
    let share = record.shares[index].clone();
    let outcome = match refuse::open_exact(&share.path)? {
        // Nothing left to revoke.
        None => walk::Outcome::default(),
        Some(fd) => {
            let op = walk::Op::Revoke {
                agent: record.uid,
                owner: share.named_owner(),
            };
            run_walk(&fd, &share.path, op, &share, record, "unsharing")?
        }
    };
    record.shares.remove(index);
    ctx.registry.save(lock, record)?;
    index::forget(ctx.registry.root(), &record.name, Some(&share.path));
    Ok(outcome)
}

fn run_walk(
    fd: &std::os::fd::OwnedFd,
    path: &Path,
    op: walk::Op,
    share: &ShareRecord,
    record: &AgentRecord,
    verb: &str,
) -> Result<walk::Outcome> {
    let bar = progress::Progress::new(verb, path);
    let outcome = walk::walk(fd, path, op, [share.tree_uid, record.uid], &|n| bar.show(n))?;
    bar.finish(outcome.entries);
    Ok(outcome)
}

/// Entries the walk skipped or could not change: listed on stderr, not fatal.
fn report_problems(command: &str, path: &Path, outcome: &walk::Outcome) {
    if outcome.problem_count == 0 {
        return;
    }
    eprintln!(
        "agentuser: {command}: {}: {} entries skipped:",
        printable(path),
        outcome.problem_count
    );
    for problem in &outcome.problems {
        eprintln!("agentuser:   {problem}");
    }
    let unlisted = outcome.problem_count - outcome.problems.len() as u64;
    if unlisted > 0 {
        eprintln!("agentuser:   ... and {unlisted} more");
    }
}

fn access_word(access: Access) -> &'static str {
    match access {
        Access::Ro => "ro",
        Access::Rw => "rw",
    }
}

/// Refuses a run while a share is half-made (an interrupted `share` or `unshare`): the agent
/// would see part of the tree, writable for `rw`. The error says how to complete it.
pub fn check_complete(record: &AgentRecord) -> Result<()> {
    for share in &record.shares {
        let path = share.path.display();
        let (doing, complete) = match share.state {
            ShareState::Ready => continue,
            ShareState::Granting => {
                let access = match share.access {
                    Access::Ro => "--ro",
                    Access::Rw if share.allow_git_writes => "--rw --allow-git-writes",
                    Access::Rw => "--rw",
                };
                (
                    "sharing",
                    format!("agentuser share {} {path} {access}", record.name),
                )
            }
            ShareState::Revoking => (
                "unsharing",
                format!("agentuser unshare {} {path}", record.name),
            ),
        };
        bail!(
            "share {path}: {doing} it was interrupted, so the agent would see part of it; complete it first: '{complete}'"
        );
    }
    Ok(())
}

/// The `.git` entries in an agent's shares as a run starts, found once per run through each
/// share's index ([`index`]: checked and brought up to date, not walked), so repositories
/// made after `share` are covered. Shares being revoked are left out; a share whose tree
/// cannot be searched has no entry list (the runner mounts it read-only as a whole).
pub struct Contents {
    shares: Vec<(PathBuf, Option<Vec<GitEntry>>)>,
}

impl Contents {
    pub fn of(ctx: &Context, record: &AgentRecord) -> Contents {
        let shares = record
            .shares
            .iter()
            .filter(|s| s.state != ShareState::Revoking)
            .filter(|s| !s.path.components().any(|c| c.as_os_str() == ".git"))
            .map(|s| {
                let found =
                    index::git_entries(ctx.registry.root(), &record.name, &s.path, false).ok();
                (s.path.clone(), found)
            })
            .collect();
        Contents { shares }
    }

    /// The `.git` entries of the share at `path`; None when its tree could not be searched.
    pub fn git_entries(&self, path: &Path) -> Option<&[GitEntry]> {
        self.shares
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, found)| found.as_deref())
    }
}

/// The bind mounts the runner adds to the agent's view for its shares, in mount order:
/// each share at its own path (`ro` shares read-only), then, for a read-write share without
/// `--allow-git-writes`, every `.git` directory or file in it that the agent does not own,
/// read-only (THREAT-MODEL row 15), as `contents` found them. A share whose tree cannot be
/// searched is mounted read-only as a whole (fail closed). Shares being revoked are left
/// out.
///
/// The runner must open every target without following symlinks (THREAT-MODEL row 21): the
/// agent can rename entries inside a read-write share at any time.
///
/// Also returns the (device, inode) of each of those `.git` entries: the owner's
/// repositories as the run starts, which the planted-repository guard never touches.
pub fn view_mounts(record: &AgentRecord, contents: &Contents) -> (Vec<ViewMount>, Vec<(u64, u64)>) {
    let mut mounts = Vec::new();
    let mut known = Vec::new();
    let mut shares: Vec<&ShareRecord> = record
        .shares
        .iter()
        .filter(|s| s.state != ShareState::Revoking)
        .collect();
    shares.sort_by(|a, b| a.path.cmp(&b.path));
    for share in shares {
        let guarded = share.access == Access::Rw && !share.allow_git_writes;
        let mut read_only = share.access == Access::Ro;
        let mut git_binds = Vec::new();
        if guarded {
            if share.path.components().any(|c| c.as_os_str() == ".git") {
                read_only = true;
            } else {
                match contents.git_entries(&share.path) {
                    Some(found) => {
                        for entry in found.iter().filter(|e| e.uid != record.uid) {
                            known.push(entry.id);
                            git_binds.push(entry.path.clone());
                        }
                    }
                    None => read_only = true,
                }
            }
        }
        mounts.push(ViewMount {
            source: share.path.clone(),
            target: share.path.clone(),
            read_only,
        });
        mounts.extend(git_binds.into_iter().map(|p| ViewMount {
            source: p.clone(),
            target: p,
            read_only: true,
        }));
    }
    (mounts, known)
}

/// Environment the runner gives the agent for its shares: git's `safe.directory` for every
/// shared directory (exact, and `DIR/*` for git versions that match prefixes) and every
/// repository found in one, through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/
/// `GIT_CONFIG_VALUE_n`, so git works on the owner's repositories without "dubious
/// ownership" errors and nothing is written into the agent's home. The runner must merge
/// these with any other `GIT_CONFIG_*` it sets (renumbering).
pub fn agent_env(record: &AgentRecord, contents: &Contents) -> Vec<(String, String)> {
    let mut dirs: Vec<String> = Vec::new();
    for share in record
        .shares
        .iter()
        .filter(|s| s.state != ShareState::Revoking)
    {
        let Some(path) = share.path.to_str() else {
            continue;
        };
        if !share.path.is_dir() {
            continue;
        }
        dirs.push(path.to_string());
        dirs.push(format!("{}/*", path.trim_end_matches('/')));
        for entry in contents.git_entries(&share.path).unwrap_or_default() {
            if let Some(repo) = entry.path.parent().and_then(Path::to_str) {
                dirs.push(repo.to_string());
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    if dirs.is_empty() {
        return Vec::new();
    }
    let mut env = vec![("GIT_CONFIG_COUNT".to_string(), dirs.len().to_string())];
    for (i, dir) in dirs.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), "safe.directory".to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), dir));
    }
    env
}
