//! Planted repositories (docs/threat-model.md row 23): no repository-shaped entry the agent
//! creates, renames or moves into place inside a read-write share is ever usable by the owner's
//! git, neither while the agent runs nor afterwards.
//!
//! - While the agent runs, a watcher thread of the runner ([`watch`]) neutralises such
//!   entries as they appear ([`neutralise`]).
//! - When the watcher lost events or could not start, the shares are swept when the run
//!   ends ([`sweep`]): repository-shaped entries that are not the owner's known ones (the
//!   `.git` entries found when the run started) and in which anything changed during the
//!   run.
//! - Each run records itself in a marker in the state directory, locked before it holds the
//!   run (so a concurrent run never finds it unlocked) and for as long as the runner lives.
//!   A marker that records a run and that nobody holds is a run whose runner was killed: the
//!   next `exec` or `shell` of that agent sweeps its shares first ([`recover`]). Markers are
//!   slots (`NAME.N.json`), blanked at the end of a run and taken again by the next one:
//!   creating and removing a file at every run cost more than the rest of the marker (a
//!   new inode, and the runs directory's lock shared by every concurrent run).
//!
//! Repositories the owner makes while no agent runs are never touched: their changes lie
//! outside every run's window. The start-up cost stays independent of the shares' size: the
//! walk happens only when events were lost or a runner died.
#![forbid(unsafe_code)]

mod neutralise;
mod sweep;
mod watch;

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::registry::AgentRecord;
use crate::share::{Access, ShareState, printable};
pub use neutralise::Known;
use sweep::{Findings, Window};

/// A read-write share the guard covers, opened once.
pub struct ShareRoot {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub id: (u64, u64),
    pub fsid: [i32; 2],
}

/// What a marker records about its run.
#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    start_secs: u64,
    start_nanos: u32,
    shares: Vec<PathBuf>,
    known: Vec<(u64, u64)>,
}

/// The guard of one run: its marker, the watcher, and what to sweep should it fail. It
/// ends when dropped, which must happen once no process of the agent is left.
pub struct Guard<'a> {
    ctx: &'a Context,
    agent: String,
    /// The marker slot, locked and holding this run.
    marker: Option<Flock<File>>,
    start: SystemTime,
    shares: Vec<PathBuf>,
    known: Known,
    prepared: Option<(crate::sys::fanotify::Watch, Vec<ShareRoot>)>,
    watcher: Option<watch::Watcher>,
    /// Why the watcher does not run, when it does not.
    unwatched: Option<String>,
    /// The view's mount namespace, held so that init's exit does not tear it down (see
    /// [`Guard::hold_view`]).
    view: Option<OwnedFd>,
}

/// The shares in which planted repositories are neutralised: read-write, without
/// `--allow-git-writes` (there the owner lets the agent write git metadata), not being
/// revoked.
pub fn guarded_shares(record: &AgentRecord) -> Vec<PathBuf> {
    record
        .shares
        .iter()
        .filter(|s| s.access == Access::Rw && !s.allow_git_writes)
        .filter(|s| s.state != ShareState::Revoking)
        .map(|s| s.path.clone())
        .collect()
}

fn open_roots(paths: &[PathBuf]) -> Vec<ShareRoot> {
    let mut roots = Vec::new();
    for path in paths {
        // Not O_PATH: fanotify_mark needs a real open file.
        let Ok(fd) = neutralise::open_share_root(path) else {
            continue;
        };
        let (Ok(stat), Ok(fsid)) = (
            nix::sys::stat::fstat(fd.as_fd()),
            crate::sys::fanotify::fsid(fd.as_fd()),
        ) else {
            continue;
        };
        roots.push(ShareRoot {
            path: path.clone(),
            fd,
            id: neutralise::identity(&stat),
            fsid,
        });
    }
    roots
}

fn runs_dir(ctx: &Context) -> Result<PathBuf> {
    let dir = ctx.registry.root().join("runs");
    crate::registry::ensure_root_dir(&dir, 0o700)?;
    Ok(dir)
}

impl<'a> Guard<'a> {
    /// Records the run and prepares the watcher, before the agent exists. None when the
    /// agent has no guarded share. `known`: the owner's repositories found at start.
    pub fn begin(
        ctx: &'a Context,
        record: &AgentRecord,
        known: Known,
        free: FreeSlots,
    ) -> Result<Option<Guard<'a>>> {
        let shares = guarded_shares(record);
        if shares.is_empty() {
            return Ok(None);
        }
        // File times are taken from a coarse clock: start a little early.
        let start = SystemTime::now() - Duration::from_secs(1);
        let since = start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let run = RunRecord {
            start_secs: since.as_secs(),
            start_nanos: since.subsec_nanos(),
            shares: shares.clone(),
            known: known.iter().copied().collect(),
        };
        let marker =
            take_marker(&runs_dir(ctx)?, &record.name, &run, free).context("recording the run")?;
        let roots = open_roots(&shares);
        let state = ctx.registry.root();
        let quiet = [
            state.join("runs"),
            state.join("agents"),
            state.join("index").join(&record.name),
        ];
        let (prepared, unwatched) = match watch::prepare(&roots, &quiet) {
            Ok(group) => (Some((group, roots)), None),
            Err(e) => (None, Some(crate::error::one_line(&e))),
        };
        Ok(Some(Guard {
            ctx,
            agent: record.name.clone(),
            marker: Some(marker),
            start,
            shares,
            known,
            prepared,
            watcher: None,
            unwatched,
            view: None,
        }))
    }

    /// Starts watching for the agent whose pid namespace `init` (pid 1 in it) is in.
    /// Call after the fork of the tree and before the agent starts.
    pub fn watch(&mut self, init: Pid) {
        let Some((group, roots)) = self.prepared.take() else {
            return;
        };
        let started = File::open(format!("/proc/{init}/ns/pid"))
            .context("opening the agent's pid namespace")
            .and_then(|ns| watch::start(group, roots, self.known.clone(), ns.as_fd(), self.start));
        match started {
            Ok(watcher) => self.watcher = Some(watcher),
            Err(e) => self.unwatched = Some(crate::error::one_line(&e)),
        }
    }
}

impl Guard<'_> {
    /// Before the run stops with the agent (its processes all stopped): every event so far
    /// is handled, so nothing planted before the stop stays usable while the caller's shell
    /// has the terminal back.
    pub fn settle(&self) {
        if let Some(watcher) = &self.watcher
            && !watcher.settle()
        {
            eprintln!(
                "agentuser: warning: the repository watcher had not caught up when the run stopped"
            );
        }
    }

    /// Holds the mount namespace of `init` (the view) until the watcher's group is closed in
    /// a detached child, which then closes this too. Its last reference would otherwise go
    /// with init's exit, which tears the view down and waits for an expedited RCU grace
    /// period while the runner waits for init. Only with a watcher: that child is forked
    /// anyway. Call while init is sure to be alive (before its gate opens, and again once
    /// the agent started): a namespace that is still this process's own is not held.
    pub fn hold_view(&mut self, init: Pid) {
        if self.watcher.is_none() || self.view.is_some() {
            return;
        }
        let own = crate::sys::spawn::open_mount_namespace(nix::unistd::getpid());
        let theirs = crate::sys::spawn::open_mount_namespace(init);
        let ino = |fd: &Option<OwnedFd>| {
            fd.as_ref()
                .and_then(|fd| nix::sys::stat::fstat(fd.as_fd()).ok())
                .map(|st| st.st_ino)
        };
        if ino(&theirs).is_some() && ino(&theirs) != ino(&own) {
            self.view = theirs;
        }
    }
}

impl Drop for Guard<'_> {
    /// Ends the guard once no process of the agent is left: handles the last events,
    /// sweeps if the watcher missed any, tells the owner, removes the marker.
    fn drop(&mut self) {
        let mut findings = Findings::default();
        let mut incomplete = self.unwatched.take();
        if let Some(watcher) = self.watcher.take() {
            let report = watcher.finish(self.view.take().into_iter().collect());
            findings.extend(report.findings);
            incomplete = incomplete.or(report.incomplete);
        }
        if let Some(why) = incomplete {
            eprintln!(
                "agentuser: warning: {why}; searching the read-write shares for planted repositories"
            );
            findings.extend(sweep_shares(
                &self.shares,
                &self.known,
                Window::ChangedSince(self.start),
            ));
        }
        report(self.ctx, &self.agent, &findings);
        // Blanked in place while still locked: the slot is free again and records no run.
        // Not truncated: freeing the file's block means a synchronous discard at every run
        // on a file system mounted with `discard`.
        if let Some(marker) = self.marker.take() {
            let len = marker.metadata().map_or(0, |meta| meta.len());
            let _ = marker.write_all_at(&vec![b' '; len as usize], 0);
        }
    }
}

/// Takes a free marker slot of `agent` in `dir` and records `run` in it: the first slot
/// that exists, that no runner holds, and that records no run (one that does is a run whose
/// runner died, left for [`recover`]); a new slot when none is free.
fn take_marker(dir: &Path, agent: &str, run: &RunRecord, free: FreeSlots) -> Result<Flock<File>> {
    let record = serde_json::to_vec(run)?;
    // The slots found free first (another run may have taken one since), each runner from
    // a place of its own in the list: runs started together saw the same free slots.
    let FreeSlots {
        free: mut found,
        past_last,
    } = free;
    if !found.is_empty() {
        let len = found.len();
        found.rotate_left(std::process::id() as usize % len);
    }
    for slot in found {
        if let Slot::Free(locked) = open_slot(&dir.join(format!("{agent}.{slot}.json")))? {
            return write_marker(locked, &record, dir, slot);
        }
    }
    // Named by the runner, not the slot: two runners may make the same slot at once.
    let temp = dir.join(format!(".{agent}.{}.json.tmp", std::process::id()));
    // Those below were busy when the recovery looked: a new slot, unless one was made since.
    let mut slot = past_last;
    // Each pass either takes a slot, moves to the next, or (a slot made or removed by
    // another command meanwhile) looks at the same one again; the slots are finite.
    for _ in 0..10_000 {
        let path = dir.join(format!("{agent}.{slot}.json"));
        let taken = match open_slot(&path)? {
            Slot::Missing => create_slot(&path, &temp)?,
            Slot::Busy => {
                slot = slot.wrapping_add(1);
                continue;
            }
            Slot::Free(locked) => Some(locked),
        };
        let Some(locked) = taken else {
            continue;
        };
        return write_marker(locked, &record, dir, slot);
    }
    anyhow::bail!("no free run marker for '{agent}' in {}", dir.display())
}

/// Records the run in the slot taken. Not synced: a crash that loses it ends the agent's
/// processes too, and exec stays cheap.
fn write_marker(locked: Flock<File>, record: &[u8], dir: &Path, slot: u32) -> Result<Flock<File>> {
    locked
        .write_all_at(record, 0)
        .with_context(|| format!("{}: slot {slot}", dir.display()))?;
    Ok(locked)
}

enum Slot {
    Missing,
    /// Held by a live runner, or recording the run of a dead one.
    Busy,
    /// Locked by us, empty, and still the file at its path.
    Free(Flock<File>),
}

fn open_slot(path: &Path) -> Result<Slot> {
    let file = match File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Slot::Missing),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return Ok(Slot::Busy);
    };
    let meta = locked.metadata()?;
    match std::fs::symlink_metadata(path) {
        // Removed or replaced since it was opened (recovered, or the agent deleted).
        Ok(now) if now.ino() != meta.ino() => Ok(Slot::Busy),
        Err(_) => Ok(Slot::Missing),
        Ok(_) => {
            let mut text = Vec::new();
            (&*locked)
                .read_to_end(&mut text)
                .with_context(|| format!("{}", path.display()))?;
            Ok(if crate::leftovers::marker_records_a_run(&text) {
                Slot::Busy
            } else {
                Slot::Free(locked)
            })
        }
    }
}

/// Makes the slot at `path`, empty and locked before it appears under its name, so a
/// concurrent command never finds it unlocked. None when another command made it first.
fn create_slot(path: &Path, tmp: &Path) -> Result<Option<Flock<File>>> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .with_context(|| format!("{}", tmp.display()))?;
    let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", tmp.display()))?;
    // A link never replaces a slot another runner made (and holds) meanwhile.
    let linked = std::fs::hard_link(tmp, path);
    let _ = std::fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(Some(locked)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// Removes the temporary marker of a runner killed before it renamed it into place (its
/// agent had not started yet): `.NAME.PID.json.tmp` whose PID is gone.
fn remove_dead_temp(path: &Path, name: &str) {
    let pid = name
        .strip_suffix(".json.tmp")
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(_, pid)| pid.parse::<i32>().ok());
    if let Some(pid) = pid {
        if nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn sweep_shares(shares: &[PathBuf], known: &Known, window: Window) -> Findings {
    let mut findings = Findings::default();
    for root in open_roots(shares) {
        findings.extend(sweep::sweep(root.fd, None, known, window));
    }
    findings
}

/// Marker slots a [`recover`] pass found free (no runner held them, and they recorded no
/// run): where [`Guard::begin`] looks first, instead of trying every slot from the first
/// (each a live runner's, under load).
#[derive(Debug, Default)]
pub struct FreeSlots {
    free: Vec<u32>,
    /// Past every slot seen: with none free, the first to try (the slots below were busy).
    past_last: u32,
}

/// Sweeps after every run of `record`'s agent whose runner died (its marker is not locked
/// any more), then removes the marker. Called before the view is planned, so nothing the
/// agent left is taken for one of the owner's repositories.
pub fn recover(ctx: &Context, record: &AgentRecord) -> Result<FreeSlots> {
    recover_runs(ctx, &record.name, &guarded_shares(record))
}

/// [`recover`] for an agent without a record (`delete` of what it left): a marker cut short
/// while being written names no shares, and none are searched for it.
pub fn recover_without_record(ctx: &Context, agent: &str) -> Result<()> {
    recover_runs(ctx, agent, &[]).map(drop)
}

/// `fallback`: the shares to search for a marker cut short while being written. Each
/// marker costs an open and a lock attempt: a live runner's lock fails and its marker is
/// not read (with many runs at once, most are).
fn recover_runs(ctx: &Context, agent: &str, fallback: &[PathBuf]) -> Result<FreeSlots> {
    let dir = runs_dir(ctx)?;
    let prefix = format!("{agent}.");
    let mut free = FreeSlots::default();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&format!(".{prefix}")) {
            remove_dead_temp(&path, name);
            continue;
        }
        let Some(slot) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if let Ok(slot) = slot.parse::<u32>() {
            free.past_last = free.past_last.max(slot.saturating_add(1));
        }
        let Some((locked, text)) = lock_unheld(&path)? else {
            continue;
        };
        if crate::leftovers::marker_records_a_run(&text) {
            recover_one(ctx, agent, fallback, &path, &locked, &text)?;
        } else if let Ok(slot) = slot.parse() {
            free.free.push(slot);
        }
    }
    Ok(free)
}

/// The marker at `path`, locked, and what it holds; None when a runner holds it, or it was
/// removed or replaced meanwhile (another command recovered it: not ours to judge).
fn lock_unheld(path: &Path) -> Result<Option<(Flock<File>, Vec<u8>)>> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        // Its runner is alive: that run guards itself.
        return Ok(None);
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.ino() == locked.metadata()?.ino() => {}
        _ => return Ok(None),
    }
    let mut text = Vec::new();
    (&*locked)
        .read_to_end(&mut text)
        .with_context(|| format!("{}", path.display()))?;
    Ok(Some((locked, text)))
}

/// Sweeps after the dead run `text` records (the marker at `path`, held in `locked`), then
/// removes the marker.
fn recover_one(
    ctx: &Context,
    agent: &str,
    fallback: &[PathBuf],
    path: &Path,
    locked: &Flock<File>,
    text: &[u8],
) -> Result<()> {
    let (shares, known, start) = match serde_json::from_slice::<RunRecord>(text) {
        Ok(run) => (
            run.shares,
            run.known.into_iter().collect(),
            UNIX_EPOCH + Duration::new(run.start_secs, run.start_nanos),
        ),
        // Cut short while being written: the record's shares, since the marker was made.
        Err(_) => (
            fallback.to_vec(),
            Known::new(),
            locked.metadata()?.modified()? - Duration::from_secs(1),
        ),
    };
    eprintln!(
        "agentuser: a run of '{agent}' ended without its runner; searching its read-write shares for planted repositories"
    );
    let findings = sweep_shares(&shares, &known, Window::ChangedSince(start));
    report(ctx, agent, &findings);
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}

/// Tells the owner (stderr) and the log what was neutralised and what could not be.
fn report(ctx: &Context, agent: &str, findings: &Findings) {
    for n in &findings.neutralised {
        let moved = n
            .moved_to
            .as_ref()
            .map(|m| format!(" (renamed to {})", printable(m)))
            .unwrap_or_default();
        eprintln!(
            "agentuser: neutralised a repository planted by agent '{agent}': {}{moved}; git no longer uses it",
            printable(&n.path)
        );
        let detail = match &n.moved_to {
            Some(m) => format!("path={} moved_to={}", printable(&n.path), printable(m)),
            None => format!("path={} head-renamed", printable(&n.path)),
        };
        crate::eventlog::record(ctx, "neutralise-repository", agent, &detail);
    }
    for failure in &findings.failures {
        eprintln!(
            "agentuser: error: could not neutralise a repository planted by agent '{agent}': {failure}; do not run git there"
        );
        crate::eventlog::record(
            ctx,
            "neutralise-repository-failed",
            agent,
            &format!("error={failure:?}"),
        );
    }
}
