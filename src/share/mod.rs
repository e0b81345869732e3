//! Sharing trees with an agent through POSIX ACLs (docs/design.md section 5; docs/threat-model.md
//! rows 9, 12, 13, 15, 17).
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
mod track;
mod walk;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::context::Context;
use crate::names::check_agent_name;
use crate::registry::{AgentRecord, Lock};
use crate::view::ViewMount;
use crate::{eventlog, policy};

pub use git::GitEntry;
pub use track::{ACCOUNT as TRACKER_ACCOUNT, stop as stop_tracker};
pub use walk::printable;

pub use crate::record::{Access, ShareRecord, ShareState};

/// Loads an agent the caller may act on, under its lock.
fn load(ctx: &Context, name: &str) -> Result<(Lock, AgentRecord)> {
    check_agent_name(name)?;
    let lock = ctx.registry.lock(name)?;
    let record = policy::ready_agent(ctx, name)?;
    Ok((lock, record))
}

/// `git_writes`: `Some` for --allow-git-writes / --no-allow-git-writes, `None` to keep what
/// an existing share has.
pub fn share(
    ctx: &Context,
    name: &str,
    path: &Path,
    access: Access,
    git_writes: Option<bool>,
) -> Result<()> {
    if git_writes == Some(true) && access != Access::Rw {
        return Err(crate::error::usage("share: --allow-git-writes needs --rw"));
    }
    let (lock, mut record) = load(ctx, name)?;
    let shown = path.display().to_string();
    let target = refuse::resolve_for_share(ctx, &record, path).context("share")?;
    let verb = if record.shares.iter().any(|s| s.path == target.path) {
        "changed the share of"
    } else {
        "shared"
    };
    let wanted = wanted_share(&record, &target, access, git_writes);
    // Journal first: from here on the record says what the tree is meant to look like.
    journal(&mut record, &wanted, &shown)?;
    ctx.registry.save(&lock, &record)?;
    let op = walk::Op::Grant {
        grant: acl::Grant {
            agent: record.uid,
            write: access == Access::Rw,
            owner: wanted.named_owner(),
        },
        git_writes: wanted.allow_git_writes,
    };
    let outcome = run_walk(&target.fd, &target.path, op, &wanted, &record, "sharing")
        .with_context(|| format!("share: {shown}"))?;
    reindex_git_entries(ctx, name, &target.path, &shown);
    if let Some(s) = record.shares.iter_mut().find(|s| s.path == target.path) {
        s.state = ShareState::Ready;
    }
    ctx.registry.save(&lock, &record)?;
    report_share(ctx, name, &wanted, &outcome, verb);
    Ok(())
}

/// The share as the record will hold it while the walk grants it. An existing share keeps
/// --allow-git-writes unless told otherwise (and says so), except when made read-only.
fn wanted_share(
    record: &AgentRecord,
    target: &refuse::Resolved,
    access: Access,
    git_writes: Option<bool>,
) -> ShareRecord {
    let existing = record.shares.iter().find(|s| s.path == target.path);
    let had_git_writes = existing.is_some_and(|s| s.allow_git_writes);
    let allow_git_writes = git_writes.unwrap_or(had_git_writes && access == Access::Rw);
    if had_git_writes && git_writes.is_none() {
        eprintln!(
            "agentuser: note: {}: {}",
            printable(&target.path),
            if allow_git_writes {
                "keeps --allow-git-writes (give --no-allow-git-writes to take it away)"
            } else {
                "--allow-git-writes goes: a read-only share never has it"
            }
        );
    }
    ShareRecord {
        path: target.path.clone(),
        access,
        tree_uid: target.stat.st_uid,
        allow_git_writes,
        state: ShareState::Granting,
        keep_owner: false,
    }
}

/// Puts `wanted` in the record (not yet saved), in place of the share of the same path;
/// refused when the tree has another owner than when it was shared.
fn journal(record: &mut AgentRecord, wanted: &ShareRecord, shown: &str) -> Result<()> {
    match record.shares.iter_mut().find(|s| s.path == wanted.path) {
        Some(existing) => {
            if existing.tree_uid != wanted.tree_uid {
                bail!("share: {shown}: its owner changed since it was shared: unshare it first");
            }
            *existing = wanted.clone();
        }
        None => record.shares.push(wanted.clone()),
    }
    Ok(())
}

/// The walk changed every directory's ctime: the index the runner checks starts afresh.
/// Not fatal: the first run makes it.
fn reindex_git_entries(ctx: &Context, name: &str, path: &Path, shown: &str) {
    if let Err(e) = index::git_entries(ctx.registry.root(), name, path, true) {
        eprintln!(
            "agentuser: warning: share: {shown}: indexing its .git entries: {}",
            crate::error::one_line(&e)
        );
    }
}

/// Logs the finished share, warns about --allow-git-writes, lists what the walk skipped and
/// says what changed.
fn report_share(
    ctx: &Context,
    name: &str,
    share: &ShareRecord,
    outcome: &walk::Outcome,
    verb: &str,
) {
    let path = printable(&share.path);
    let detail = format!(
        "path={path} access={}{} entries={} changed={} skipped={}",
        access_word(share.access),
        if share.allow_git_writes {
            " git-writes"
        } else {
            ""
        },
        outcome.entries,
        outcome.changed,
        outcome.problem_count
    );
    eventlog::record(ctx, "share", name, &detail);
    if share.allow_git_writes {
        eprintln!(
            "agentuser: {}",
            crate::git::protection::allow_git_writes_warning(&path)
        );
    }
    report_problems("share", &share.path, outcome);
    crate::error::changed(&format!(
        "{verb} {path} with {name} ({}{})",
        access_word(share.access),
        if share.allow_git_writes {
            ", --allow-git-writes"
        } else {
            ""
        }
    ));
}

pub fn unshare(
    ctx: &Context,
    name: &str,
    path: &Path,
    keep_owner: bool,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        let record = policy::ready_agent(ctx, name)?;
        let index = find_share(ctx, &record, path)?;
        println!(
            "{}",
            revoke_plan(&record, &record.shares[index], keep_owner)
        );
        return Ok(());
    }
    let (lock, mut record) = load(ctx, name)?;
    let shown = path.display().to_string();
    let index = find_share(ctx, &record, path)?;
    let wanted = record.shares[index].path.clone();
    let tree_owner = crate::account::name_of(record.shares[index].tree_uid);
    let outcome = revoke(ctx, &lock, &mut record, index, !keep_owner)
        .with_context(|| format!("unshare: {shown}"))?;
    let detail = format!(
        "path={} entries={} changed={} handed-back={} skipped={}",
        printable(&wanted),
        outcome.entries,
        outcome.changed,
        outcome.handed_back,
        outcome.problem_count
    );
    eventlog::record(ctx, "unshare", name, &detail);
    report_problems("unshare", &wanted, &outcome);
    crate::error::changed(&format!(
        "unshared {} from {name}{}",
        printable(&wanted),
        handed_back_note(&outcome, &tree_owner, keep_owner)
    ));
    Ok(())
}

/// The index of the share `path` names: resolved with the caller's rights, or, when the
/// tree is gone or unreachable now, the path as given made absolute.
fn find_share(ctx: &Context, record: &AgentRecord, path: &Path) -> Result<usize> {
    let shown = path.display().to_string();
    let wanted = refuse::canonical(ctx, path)
        .or_else(|_| refuse::lexical(path))
        .with_context(|| format!("unshare: {shown}"))?;
    match record.shares.iter().position(|s| s.path == wanted) {
        Some(index) => Ok(index),
        None => bail!("unshare: {shown}: not shared with '{}'", record.name),
    }
}

/// What unsharing `share` does, for --dry-run (of unshare and delete).
pub fn revoke_plan(record: &AgentRecord, share: &ShareRecord, keep_owner: bool) -> String {
    let owner = crate::account::name_of(share.tree_uid);
    format!(
        "would unshare {} ({}) from {}: remove its ACL entries from every entry of the tree{}",
        printable(&share.path),
        access_word(share.access),
        record.name,
        if keep_owner || share.tree_uid == record.uid {
            String::from("; the files it owns there stay its own (--keep-owner)")
        } else {
            format!("; give the files it owns there to {owner}")
        }
    )
}

/// ", N files handed back to OWNER" for the change notes.
pub fn handed_back_note(outcome: &walk::Outcome, owner: &str, keep_owner: bool) -> String {
    match (keep_owner, outcome.handed_back) {
        (true, _) => String::from(" (files it owns there kept as its own)"),
        (false, 0) => String::new(),
        (false, n) => format!(" ({n} of its files handed back to {owner})"),
    }
}

/// Removes every share of the agent (called by `delete`, under the agent's lock), handing
/// the agent's files back unless `keep_owner`. Returns the files handed back.
pub fn revoke_all(
    ctx: &Context,
    lock: &Lock,
    record: &mut AgentRecord,
    keep_owner: bool,
) -> Result<u64> {
    let mut handed_back = 0;
    while !record.shares.is_empty() {
        crate::error::check_interrupt()?;
        let path = record.shares[0].path.clone();
        let outcome = revoke(ctx, lock, record, 0, !keep_owner)
            .with_context(|| format!("unsharing {}", path.display()))?;
        report_problems("unshare", &path, &outcome);
        handed_back += outcome.handed_back;
    }
    stop_tracker(ctx.registry.root(), &record.name);
    index::forget(ctx.registry.root(), &record.name, None);
    Ok(handed_back)
}

/// Revokes share `index` of `record`: journals, walks (giving the agent's files to the
/// tree's owner when `hand_back`), then drops it from the record.
fn revoke(
    ctx: &Context,
    lock: &Lock,
    record: &mut AgentRecord,
    index: usize,
    hand_back: bool,
) -> Result<walk::Outcome> {
    // Journaled with the state: an interrupted `--keep-owner` is completed the same way
    // (keeping wins: files already handed back cannot be taken back).
    let journaled = &mut record.shares[index];
    let hand_back = hand_back && !(journaled.state == ShareState::Revoking && journaled.keep_owner);
    journaled.keep_owner = !hand_back;
    journaled.state = ShareState::Revoking;
    ctx.registry.save(lock, record)?;
    let share = record.shares[index].clone();
    let outcome = match refuse::open_exact(&share.path)? {
        // Nothing left to revoke.
        None => walk::Outcome::default(),
        Some(fd) => {
            let hand_back = (hand_back && share.tree_uid != record.uid).then(|| walk::HandBack {
                uid: share.tree_uid,
                gid: crate::account::primary_gid_of(share.tree_uid),
                agent_gid: record.gid,
            });
            let op = walk::Op::Revoke {
                agent: record.uid,
                owner: share.named_owner(),
                hand_back,
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
                format!(
                    "agentuser unshare {} {path}{}",
                    record.name,
                    if share.keep_owner {
                        " --keep-owner"
                    } else {
                        ""
                    }
                ),
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
        let shares = searched_shares(record)
            .map(|s| {
                let found =
                    index::git_entries(ctx.registry.root(), &record.name, &s.path, false).ok();
                (s.path.clone(), found)
            })
            .collect();
        Contents { shares }
    }

    /// [`Contents::of`] for a run (root only), with the agent's share tracker ([`track`])
    /// unless every share's index is small: when it vouches for every share, only the
    /// directories it saw change are listed; otherwise every share is checked and a new
    /// tracker takes over.
    pub fn for_run(ctx: &Context, record: &AgentRecord) -> Contents {
        let state = ctx.registry.root();
        let paths: Vec<&Path> = searched_shares(record).map(|s| s.path.as_path()).collect();
        // Small trees are checked faster than a tracker answers, and a tracker answers
        // one run at a time: many runs at once would queue for it.
        if paths
            .iter()
            .all(|p| index::is_small(state, &record.name, p))
        {
            return Contents::of(ctx, record);
        }
        let Some(mut tracking) = track::Tracking::begin(state, &record.name) else {
            return Contents::of(ctx, record);
        };
        let vouched: Option<Vec<_>> = paths
            .iter()
            .map(|path| {
                let report = tracking.report_for(path);
                let entries = index::vouched_entries(state, &record.name, path, report)?;
                Some((path.to_path_buf(), Some(entries)))
            })
            .collect();
        if let Some(shares) = vouched {
            tracking.keep_going();
            return Contents { shares };
        }
        let watching = tracking.watch(&paths);
        let mut settled = Vec::new();
        let mut shares = Vec::new();
        for path in paths {
            let checked = index::check(state, &record.name, path, false).ok();
            if checked.as_ref().is_some_and(|c| c.settled) {
                settled.push(path);
            }
            shares.push((path.to_path_buf(), checked.map(|c| c.entries)));
        }
        if let Some(watching) = watching {
            tracking.hand_over(watching, state, &record.name, &settled);
        }
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

/// The shares whose contents are searched: not being revoked, not inside a `.git`.
fn searched_shares(record: &AgentRecord) -> impl Iterator<Item = &ShareRecord> {
    record
        .shares
        .iter()
        .filter(|s| s.state != ShareState::Revoking)
        .filter(|s| !s.path.components().any(|c| c.as_os_str() == ".git"))
}

/// The bind mounts the runner adds to the agent's view for its shares, in mount order:
/// each share at its own path (`ro` shares read-only), then, for a read-write share without
/// `--allow-git-writes`, every `.git` directory or file in it that the agent does not own,
/// read-only (docs/threat-model.md row 15), as `contents` found them. A share whose tree cannot be
/// searched is mounted read-only as a whole (fail closed). Shares being revoked are left
/// out.
///
/// The runner must open every target without following symlinks (docs/threat-model.md row 21): the
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
