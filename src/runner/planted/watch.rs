//! The live watcher: a thread of the runner that reads fanotify events for the file systems
//! of the read-write shares and neutralises, as it appears, every repository-shaped entry a
//! process of the agent's pid namespace created, moved or wrote below a share.
//!
//! Events of other processes (the owner working at the same time, everything else on the
//! file system) are ignored; an event whose process is gone counts as the agent's.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::MaskFlags;
use nix::sys::stat::fstat;

use super::ShareRoot;
use super::neutralise::{
    Known, identity, is_repository_shaped, kind, neutralise_dir, neutralise_dot_git, open_dir_at,
    stat_at,
};
use super::sweep::{Findings, Window, sweep};
use crate::sys::fanotify::{self, Event, Watch};

/// What the watcher saw when it stopped.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Findings,
    /// Events were lost (queue overflow) or the watcher failed: a sweep must follow.
    pub incomplete: Option<String>,
}

pub struct Watcher {
    stop: OwnedFd,
    /// A byte asks the thread to handle everything queued; it answers on `settled`.
    settle: OwnedFd,
    settled: OwnedFd,
    thread: JoinHandle<(Report, Watch)>,
}

/// The descriptors of the thread's side.
struct Requests {
    stop: OwnedFd,
    settle: OwnedFd,
    settled: OwnedFd,
}

/// Everything the watcher thread owns.
struct Scope {
    watch: Watch,
    shares: Vec<ShareRoot>,
    known: Known,
    /// The agent's pid namespace, (device, inode).
    agent_ns: (u64, u64),
    /// When the run started (for sweeps after lost events).
    start: SystemTime,
}

/// How long the events queued when the run ends may take to handle before the runner sweeps
/// the shares instead (normally the queue empties within milliseconds).
const FINAL_DRAIN: Duration = Duration::from_secs(1);

/// Batches of events read between two looks at `stop`.
const READS_PER_POLL: usize = 16;

const MASK: MaskFlags = MaskFlags::FAN_CREATE
    .union(MaskFlags::FAN_MOVED_TO)
    .union(MaskFlags::FAN_MODIFY)
    .union(MaskFlags::FAN_CLOSE_WRITE)
    .union(MaskFlags::FAN_ONDIR);

/// Creates the group and marks every share's file system (before the agent exists, so no
/// event can be missed). The directories in `quiet` (agentuser's own state, where every
/// other run writes its marker and records: never below a share) are ignored, so that
/// concurrent runs do not each handle all the others' writes.
pub fn prepare(shares: &[ShareRoot], quiet: &[std::path::PathBuf]) -> Result<Watch> {
    let watch = Watch::new().context("fanotify_init")?;
    for share in shares {
        watch
            .mark_filesystem(share.fd.as_fd(), MASK)
            .with_context(|| format!("watching the file system of {}", share.path.display()))?;
    }
    for dir in quiet {
        // An optimisation only: a directory missing, or a kernel without FAN_MARK_IGNORE
        // (Linux < 6.0), leaves its events to the filter below.
        if let Ok(fd) = super::neutralise::open_share_root(dir) {
            let _ = watch.ignore_directory(fd.as_fd(), MASK);
        }
    }
    Ok(watch)
}

/// Starts the thread for the agent whose pid namespace is `agent_ns` (a descriptor of it).
pub fn start(
    watch: Watch,
    shares: Vec<ShareRoot>,
    known: Known,
    agent_ns: BorrowedFd,
    start: SystemTime,
) -> Result<Watcher> {
    let stat = fstat(agent_ns).context("fstat of the agent's pid namespace")?;
    let (stop_r, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let flags = OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let (settle_r, settle) = nix::unistd::pipe2(flags).context("pipe")?;
    let (settled, settled_w) = nix::unistd::pipe2(flags).context("pipe")?;
    let requests = Requests {
        stop: stop_r,
        settle: settle_r,
        settled: settled_w,
    };
    let scope = Scope {
        watch,
        shares,
        known,
        agent_ns: identity(&stat),
        start,
    };
    let thread = std::thread::Builder::new()
        .name("repo-watch".into())
        .spawn(move || scope.run(requests))
        .context("starting the repository watcher")?;
    Ok(Watcher {
        stop,
        settle,
        settled,
        thread,
    })
}

/// How long [`Watcher::settle`] waits for the thread.
const SETTLE_DEADLINE: Duration = Duration::from_secs(2);

impl Watcher {
    /// Has the thread handle every event queued so far, and waits until it did (false when
    /// it had not within [`SETTLE_DEADLINE`]). For a run about to stop with the agent's
    /// processes stopped: what they did before the stop is handled before the caller's
    /// shell gets the terminal back.
    pub fn settle(&self) -> bool {
        let mut stale = [0u8; 16];
        while matches!(nix::unistd::read(self.settled.as_fd(), &mut stale), Ok(n) if n > 0) {}
        if nix::unistd::write(&self.settle, &[1]).is_err() {
            return false;
        }
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.settled.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return false,
                Ok(_) => {
                    return matches!(nix::unistd::read(self.settled.as_fd(), &mut stale), Ok(n) if n > 0);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Stops the watcher once everything queued is handled. Call when no process of the
    /// agent is left: then nothing the agent did is missed.
    /// `also`: descriptors whose last close blocks too, closed with the group's.
    pub fn finish(self, also: Vec<OwnedFd>) -> Report {
        drop(self.stop);
        match self.thread.join() {
            Ok((report, watch)) => {
                // Its last close waits for the kernel (an SRCU grace period): not here.
                let mut fds = also;
                fds.push(watch.into_fd());
                crate::sys::spawn::close_detached(fds);
                report
            }
            Err(_) => Report {
                incomplete: Some("the repository watcher failed".into()),
                ..Report::default()
            },
        }
    }
}

impl Scope {
    /// Handles events until `stop` closes; gives the group back (see [`Watcher::finish`]).
    fn run(self, requests: Requests) -> (Report, Watch) {
        let report = self.handle_until(&requests);
        (report, self.watch)
    }

    fn handle_until(&self, requests: &Requests) -> Report {
        let mut report = Report::default();
        // Set when `stop` closes: every event of the agent is queued by then (none of its
        // processes is left), and they are handled until the queue is empty or this passes.
        let mut deadline: Option<Instant> = None;
        // A settle request waits for the queue to be found empty.
        let mut settling = false;
        loop {
            let mut fds = [
                PollFd::new(self.watch.fd(), PollFlags::POLLIN),
                PollFd::new(requests.stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(requests.settle.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e == nix::errno::Errno::EINTR {
                    continue;
                }
                report.incomplete = Some(format!("poll: {e}"));
                return report;
            }
            if deadline.is_none() && fds[1].revents().is_some_and(|r| !r.is_empty()) {
                deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            if fds[2].revents().is_some_and(|r| !r.is_empty()) {
                let mut bytes = [0u8; 16];
                while matches!(nix::unistd::read(requests.settle.as_fd(), &mut bytes), Ok(n) if n > 0)
                {
                }
                settling = true;
            }
            let Some((emptied, lost)) = self.read_some(&mut report) else {
                return report;
            };
            if settling && emptied {
                settling = false;
                let _ = nix::unistd::write(&requests.settled, &[1]);
            }
            if lost {
                report.incomplete = Some("file events were lost (queue overflow)".into());
                // Protection goes on during the run; the runner sweeps again at the end.
                if deadline.is_none() {
                    for share in &self.shares {
                        if let Ok(root) = open_dir_at(share.fd.as_fd(), c".") {
                            let window = Window::ChangedSince(self.start);
                            report
                                .findings
                                .extend(sweep(root, None, &self.known, window));
                        }
                    }
                }
            }
            match deadline {
                Some(_) if emptied => return report,
                Some(at) if Instant::now() >= at => {
                    // Something keeps writing on the shares' file systems (strace, say,
                    // logging this thread's own system calls there): the runner sweeps
                    // instead of waiting for a queue that never empties.
                    report.incomplete = Some(
                        "file events kept coming after the agent's processes were gone".into(),
                    );
                    return report;
                }
                _ => {}
            }
        }
    }

    /// Reads and handles up to [`READS_PER_POLL`] batches of events, so that `stop` is
    /// looked at even while events keep coming. Returns whether the queue was found empty
    /// and whether events were lost; None when reading failed (the report says why).
    fn read_some(&self, report: &mut Report) -> Option<(bool, bool)> {
        let mut lost = false;
        for _ in 0..READS_PER_POLL {
            match self.watch.read() {
                Ok(events) if events.is_empty() => return Some((true, lost)),
                Ok(events) => {
                    for event in &events {
                        if event.mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
                            lost = true;
                        } else {
                            self.handle(event, &mut report.findings);
                        }
                    }
                }
                Err(e) => {
                    report.incomplete = Some(format!("reading file events: {e}"));
                    return None;
                }
            }
        }
        Some((false, lost))
    }

    fn handle(&self, event: &Event, findings: &mut Findings) {
        let Some(handle) = &event.dir else { return };
        if !self.is_the_agents(event.process.as_ref().map(|p| p.as_fd())) {
            return;
        }
        let Some(share) = self.shares.iter().find(|s| s.fsid == handle.fsid) else {
            return;
        };
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let Ok(dir) = fanotify::open_by_handle(share.fd.as_fd(), handle, flags) else {
            // The directory is gone: nothing in it can be used.
            return;
        };
        let Some(chain) = self.chain_to_share(dir) else {
            return;
        };
        self.inspect(&chain, &event.name, event.mask, findings);
    }

    /// Whether the process behind an event runs in the agent's pid namespace or one below.
    fn is_the_agents(&self, process: Option<BorrowedFd>) -> bool {
        let Some(pidfd) = process else {
            return true;
        };
        let Ok(mut ns) = fanotify::pid_namespace_of(pidfd) else {
            return true;
        };
        // Pid namespaces nest at most 32 deep.
        for _ in 0..33 {
            match fstat(ns.as_fd()) {
                Ok(stat) if identity(&stat) == self.agent_ns => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
            match fanotify::parent_namespace(ns.as_fd()) {
                Ok(parent) => ns = parent,
                Err(_) => return false,
            }
        }
        true
    }

    /// `dir` and its ancestors up to the share root holding it, innermost first; None
    /// when `dir` is not below a watched share.
    fn chain_to_share(&self, dir: OwnedFd) -> Option<Vec<OwnedFd>> {
        let mut chain = vec![dir];
        for _ in 0..4096 {
            let current = chain.last()?.as_fd();
            let stat = fstat(current).ok()?;
            if self.shares.iter().any(|s| s.id == identity(&stat)) {
                return Some(chain);
            }
            let parent = super::neutralise::open_path_at(current, c"..").ok()?;
            let parent_stat = fstat(parent.as_fd()).ok()?;
            if identity(&parent_stat) == identity(&stat) || parent_stat.st_dev != stat.st_dev {
                return None;
            }
            chain.push(parent);
        }
        None
    }

    /// Neutralises what the event at `name` in `chain[0]` may have made usable: a `.git`
    /// entry, a directory moved in with repositories inside, or a directory on the way up to
    /// the share that now has a git directory's layout.
    fn inspect(&self, chain: &[OwnedFd], name: &[u8], mask: MaskFlags, findings: &mut Findings) {
        let dir = chain[0].as_fd();
        if name == b".git" {
            findings.take(neutralise_dot_git(dir, &self.known));
        } else if let Ok(cname) = std::ffi::CString::new(name) {
            let moved_dir = mask.contains(MaskFlags::FAN_MOVED_TO | MaskFlags::FAN_ONDIR);
            let is_dir =
                stat_at(dir, &cname).is_some_and(|s| kind(&s) == nix::sys::stat::SFlag::S_IFDIR);
            if moved_dir && is_dir && !name.is_empty() {
                if let Ok(sub) = open_dir_at(dir, &cname) {
                    findings.extend(sweep(sub, Some(dir), &self.known, Window::Everything));
                }
            }
        }
        for (i, ancestor) in chain.iter().enumerate() {
            if is_repository_shaped(ancestor.as_fd()) {
                let parent = chain.get(i + 1).map(|p| p.as_fd());
                findings.take(neutralise_dir(ancestor.as_fd(), parent, &self.known));
            }
        }
    }
}
