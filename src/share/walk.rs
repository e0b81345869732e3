//! The tree walk of `share` and `unshare`: descriptor-based, never following a symlink,
//! never leaving the share's file system, on every core.
//!
//! Every entry is opened with `O_PATH|O_NOFOLLOW` relative to its parent's descriptor and
//! judged by `fstat` on that descriptor; the ACL is then edited through `/proc/self/fd/N`,
//! which names the very inode judged. A rename or a symlink swapped in by the agent while we
//! walk can make us skip an entry, never act on another one.
//!
//! Confused deputy (docs/threat-model.md rows 12, 17): the walk runs as root, so it only touches
//! entries owned by the share's owner or by the agent. Anything else found in the tree (a
//! hard link to a root file, a directory someone else made) is skipped and reported, and
//! directories are not entered. A file with several hard links gets an ACL only when the
//! agent owns it: another link may lie outside the tree (`~/.netrc` linked into the share
//! where `fs.protected_hardlinks` is off), and that inode would become readable there too.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

use super::acl::{self, Entry, Grant};

/// What the walk does to every entry.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Grant; inside `.git` directories the agent gets read-only access unless
    /// `git_writes`.
    Grant { grant: Grant, git_writes: bool },
    /// Remove the agent's entries; `owner` as in [`acl::revoke`]. With `hand_back`, the
    /// agent's own directories and files get the tree's owner.
    Revoke {
        agent: u32,
        owner: Option<u32>,
        hand_back: Option<HandBack>,
    },
}

/// Who gets the files the agent owns when a share is revoked.
#[derive(Debug, Clone, Copy)]
pub struct HandBack {
    pub uid: u32,
    /// The owner's primary group, for files whose group is the agent's (None: group kept).
    pub gid: Option<u32>,
    pub agent_gid: u32,
}

/// Most problems listed one by one; the rest are counted.
const PROBLEMS_LISTED: usize = 20;

/// What a walk did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub entries: u64,
    pub changed: u64,
    /// Entries given from the agent to the tree's owner ([`HandBack`]).
    pub handed_back: u64,
    /// Entries that were skipped or failed, with why (at most [`PROBLEMS_LISTED`]).
    pub problems: Vec<String>,
    pub problem_count: u64,
}

/// A directory still to read: the descriptor of its parent, its name there and the identity
/// it had when judged (re-checked on opening, so a swap in between is noticed).
struct Job {
    parent: Arc<OwnedFd>,
    name: CString,
    dev: u64,
    ino: u64,
    rel: PathBuf,
    in_git: bool,
}

struct Shared {
    op: Op,
    /// Owners whose entries the walk touches: the share's owner and the agent.
    owners: [u32; 2],
    device: u64,
    queue: Mutex<Queue>,
    wake: Condvar,
    entries: AtomicU64,
    changed: AtomicU64,
    handed_back: AtomicU64,
    problems: Mutex<(Vec<String>, u64)>,
    /// Set on a hang-up or interrupt: workers drain the queue without reading it.
    stop: std::sync::atomic::AtomicBool,
}

struct Queue {
    jobs: Vec<Job>,
    /// Jobs queued or being worked on; the walk is over when it drops to zero.
    pending: usize,
}

const PATH_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Walks the tree whose root the caller opened as `root` (an `O_PATH` descriptor) at `path`.
/// `progress` is called now and then with the number of entries seen so far. A pending
/// hang-up or interrupt stops the walk between directories with an
/// [`Interrupted`](crate::error::Interrupted) error.
pub fn walk(
    root: &OwnedFd,
    path: &Path,
    op: Op,
    owners: [u32; 2],
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Outcome> {
    use anyhow::Context as _;
    let stat = fstat(root).with_context(|| format!("{}", path.display()))?;
    let in_git = path.components().any(|c| c.as_os_str() == ".git");
    let shared = Shared {
        op,
        owners,
        device: stat.st_dev,
        queue: Mutex::new(Queue {
            jobs: Vec::new(),
            pending: 0,
        }),
        wake: Condvar::new(),
        entries: AtomicU64::new(0),
        changed: AtomicU64::new(0),
        handed_back: AtomicU64::new(0),
        problems: Mutex::new((Vec::new(), 0)),
        stop: std::sync::atomic::AtomicBool::new(false),
    };
    let _cwd = InProcFd::enter()?;
    // The root was chosen by the caller and checked already: it is acted on whatever its
    // link count.
    // A root that cannot be acted on (e.g. no longer owned by the share's owner when it
    // is revoked) is reported like any other entry.
    let enter = match shared.apply(root, &stat, in_git, false) {
        Ok(enter) => enter,
        Err(e) => {
            shared.problem(Path::new(""), e);
            false
        }
    };
    if enter {
        let root = Arc::new(nix::unistd::dup(root).context("dup")?);
        shared.push(vec![Job {
            parent: root,
            name: c".".to_owned(),
            dev: stat.st_dev,
            ino: stat.st_ino,
            rel: PathBuf::new(),
            in_git,
        }]);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| shared.work());
            }
            shared.report_progress(progress);
        });
    }
    if shared.stop.into_inner() {
        // The record still says `granting` or `revoking`: a rerun walks the tree again.
        crate::error::check_interrupt()?;
    }
    let (problems, problem_count) = shared.problems.into_inner().unwrap_or_default();
    Ok(Outcome {
        entries: shared.entries.into_inner(),
        changed: shared.changed.into_inner(),
        handed_back: shared.handed_back.into_inner(),
        problems,
        problem_count,
    })
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// The path of a descriptor for the ACL calls: relative to the working directory, which is
/// `/proc/self/fd` during the walk ([`InProcFd`]), so the kernel resolves one magic link
/// instead of four components per call.
fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(fd.as_raw_fd().to_string())
}

/// Working directory `/proc/self/fd` for the walk; the previous one comes back on drop.
struct InProcFd {
    previous: OwnedFd,
}

impl InProcFd {
    fn enter() -> anyhow::Result<InProcFd> {
        use anyhow::Context as _;
        let previous = nix::fcntl::open(
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("opening the working directory")?;
        nix::unistd::chdir("/proc/self/fd").context("/proc/self/fd (is /proc mounted?)")?;
        Ok(InProcFd { previous })
    }
}

impl Drop for InProcFd {
    fn drop(&mut self) {
        // The working directory only matters to relative paths, which nothing after the
        // walk uses; failing to go back is harmless.
        let _ = nix::unistd::fchdir(&self.previous);
    }
}

impl Shared {
    fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.pending += jobs.len();
        queue.jobs.extend(jobs);
        drop(queue);
        self.wake.notify_all();
    }

    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.jobs.pop() {
                        break job;
                    }
                    if queue.pending == 0 {
                        return;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            if !self.stop.load(Ordering::Relaxed) {
                let children = self.read_dir(&job);
                self.push(children);
            }
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.pending -= 1;
            if queue.pending == 0 {
                self.wake.notify_all();
            }
        }
    }

    /// Prints progress while the workers run (from the spawning thread).
    fn report_progress(&self, progress: &(dyn Fn(u64) + Sync)) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while queue.pending > 0 {
            let (q, _) = self
                .wake
                .wait_timeout(queue, std::time::Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner());
            queue = q;
            progress(self.entries.load(Ordering::Relaxed));
            if crate::sys::signals::pending_interrupt().is_some() {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    fn problem(&self, rel: &Path, why: impl std::fmt::Display) {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        problems.1 += 1;
        if problems.0.len() < PROBLEMS_LISTED {
            problems.0.push(format!("{}: {why}", printable(rel)));
        }
    }

    /// Reads one directory; returns its subdirectories as new jobs.
    fn read_dir(&self, job: &Job) -> Vec<Job> {
        let Some((dir_fd, dir)) = self.open_job_dir(job) else {
            return Vec::new();
        };
        let dir_fd = Arc::new(dir_fd);
        let names = self.list_names(job, dir);
        let mut children = Vec::new();
        for name in names {
            if let Some(child) = self.visit(job, &dir_fd, name) {
                children.push(child);
            }
        }
        children
    }

    /// Opens the job's directory by name under its parent's descriptor, checks it is still
    /// the directory the parent's walk saw, and opens it for reading. `None` when it is gone
    /// (silently) or cannot be used (a problem).
    fn open_job_dir(&self, job: &Job) -> Option<(OwnedFd, Dir)> {
        let opened = openat(
            job.parent.as_fd(),
            job.name.as_c_str(),
            PATH_FLAGS | OFlag::O_DIRECTORY,
            Mode::empty(),
        );
        let dir_fd = match opened {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return None,
            Err(e) => {
                self.problem(&job.rel, format_args!("cannot open: {}", e.desc()));
                return None;
            }
        };
        match fstat(&dir_fd) {
            Ok(st) if st.st_dev == job.dev && st.st_ino == job.ino => {}
            _ => {
                self.problem(&job.rel, "replaced during the walk: skipped");
                return None;
            }
        }
        let read = openat(
            &dir_fd,
            c".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(Dir::from_fd);
        match read {
            Ok(dir) => Some((dir_fd, dir)),
            Err(e) => {
                self.problem(&job.rel, format_args!("cannot read: {}", e.desc()));
                None
            }
        }
    }

    /// The entry names of a directory (without `.` and `..`); the directory is closed before
    /// its entries are visited. A read error ends the list (a problem).
    fn list_names(&self, job: &Job, mut dir: Dir) -> Vec<CString> {
        let mut names = Vec::new();
        for entry in dir.iter() {
            match entry {
                Ok(entry) => {
                    let name: &CStr = entry.file_name();
                    if name != c"." && name != c".." {
                        names.push(name.to_owned());
                    }
                }
                Err(e) => {
                    self.problem(&job.rel, format_args!("cannot read: {}", e.desc()));
                    break;
                }
            }
        }
        names
    }

    /// Opens one entry under its directory's descriptor and judges it; a directory to enter
    /// comes back as a job.
    fn visit(&self, job: &Job, dir_fd: &Arc<OwnedFd>, name: CString) -> Option<Job> {
        let rel = job.rel.join(OsStr::from_bytes(name.as_bytes()));
        let in_git = job.in_git || name.as_bytes() == b".git";
        let fd = match openat(dir_fd.as_fd(), name.as_c_str(), PATH_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return None,
            Err(e) => {
                self.problem(&rel, format_args!("cannot open: {}", e.desc()));
                return None;
            }
        };
        let stat = match fstat(&fd) {
            Ok(stat) => stat,
            Err(e) => {
                self.problem(&rel, format_args!("cannot stat: {}", e.desc()));
                return None;
            }
        };
        match self.apply(&fd, &stat, in_git, true) {
            Ok(true) => Some(Job {
                parent: Arc::clone(dir_fd),
                name,
                dev: stat.st_dev,
                ino: stat.st_ino,
                rel,
                in_git,
            }),
            Ok(false) => None,
            Err(e) => {
                self.problem(&rel, e);
                None
            }
        }
    }

    /// Judges one entry and acts on it. Returns whether it is a directory to enter.
    fn apply(
        &self,
        fd: &OwnedFd,
        stat: &FileStat,
        in_git: bool,
        check_links: bool,
    ) -> anyhow::Result<bool> {
        self.entries.fetch_add(1, Ordering::Relaxed);
        let is_dir = match kind(stat) {
            SFlag::S_IFDIR => true,
            SFlag::S_IFREG => false,
            // A symlink never gets an ACL (it has none) and is never followed; special files
            // (sockets, FIFOs, devices) are not shared.
            _ => return Ok(false),
        };
        if stat.st_dev != self.device {
            anyhow::bail!("on another file system (a mount point): skipped");
        }
        if !self.owners.contains(&stat.st_uid) {
            anyhow::bail!(
                "owned by uid {}, neither the share's owner nor the agent: skipped",
                stat.st_uid
            );
        }
        // A file with several names may have one outside the tree (`~/.netrc` linked in
        // where protected_hardlinks is off). Counting the links met during the walk is not
        // enough: an agent with write access can move a link between two directories while
        // the walk runs and have it counted twice. So only the agent's own files with
        // several links are granted (it can read those anyway).
        let agent = self.owners[1];
        if check_links
            && !is_dir
            && stat.st_nlink > 1
            && stat.st_uid != agent
            && matches!(self.op, Op::Grant { .. })
        {
            anyhow::bail!(
                "has {} hard links, which may lie outside the shared tree: skipped",
                stat.st_nlink
            );
        }
        self.act(fd, stat, in_git)?;
        if let Op::Revoke {
            hand_back: Some(to),
            ..
        } = self.op
        {
            if stat.st_uid == agent {
                // A file with several names may have one where the owner must not get a
                // file the agent chose (its home, /tmp): it stays the agent's.
                if check_links && !is_dir && stat.st_nlink > 1 {
                    anyhow::bail!(
                        "has {} hard links: left owned by the agent (uid {agent})",
                        stat.st_nlink
                    );
                }
                hand_back(fd, stat, to)?;
                self.handed_back.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(is_dir)
    }

    fn act(&self, fd: &OwnedFd, stat: &FileStat, in_git: bool) -> anyhow::Result<()> {
        let is_dir = kind(stat) == SFlag::S_IFDIR;
        let path = proc_path(fd);
        let changed = match self.op {
            Op::Grant {
                mut grant,
                git_writes,
            } => {
                if in_git && !git_writes {
                    grant.write = false;
                }
                let entry = Entry {
                    is_dir,
                    mode: stat.st_mode,
                    uid: stat.st_uid,
                };
                acl::grant(&path, entry, grant)
            }
            Op::Revoke { agent, owner, .. } => acl::revoke(&path, is_dir, agent, owner),
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if changed {
            self.changed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Gives one of the agent's entries to the tree's owner, through the descriptor judged (a
/// directory or regular file: never a symlink). Setuid and setgid bits are cleared on a
/// file: the owner must not get a set-id program the agent wrote (the kernel clears them
/// on chown only in part).
fn hand_back(fd: &OwnedFd, stat: &FileStat, to: HandBack) -> anyhow::Result<()> {
    let path = proc_path(fd);
    let gid = to.gid.filter(|_| stat.st_gid == to.agent_gid);
    std::os::unix::fs::chown(&path, Some(to.uid), gid)
        .map_err(|e| anyhow::anyhow!("cannot give it to uid {}: {e}", to.uid))?;
    if kind(stat) == SFlag::S_IFREG {
        let now = fstat(fd).map_err(|e| anyhow::anyhow!("cannot stat: {}", e.desc()))?;
        if now.st_nlink > 1 {
            // A running agent linked it elsewhere between the check and the chown: it
            // goes back to the agent, like any file with several links.
            std::os::unix::fs::chown(&path, Some(stat.st_uid), Some(stat.st_gid))
                .map_err(|e| anyhow::anyhow!("cannot give it back to the agent: {e}"))?;
            anyhow::bail!(
                "got a second hard link while being handed back: left owned by the agent"
            );
        }
        if now.st_mode & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            let mode = now.st_mode & 0o7777 & !0o6000;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| anyhow::anyhow!("cannot clear its set-id bits: {e}"))?;
        }
    }
    Ok(())
}

/// A path made safe to print on one line: control characters and bytes that are not UTF-8
/// are escaped, so a file name cannot forge output.
pub fn printable(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.is_empty() { ".".into() } else { out }
}
