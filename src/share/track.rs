//! The share tracker (issue 15 item 9): a process per agent that lives between its runs and
//! notes which of its shares' directories had an entry made, removed or moved, so that a
//! run lists those few directories instead of checking every one ([`super::index`]).
//!
//! - A run asks the agent's tracker for its report. The report says, per share, which index
//!   file the tracker loaded, whether it saw every change since (no queue overflow), the
//!   recorded state of the directories that changed, and the recorded `.git` entries.
//! - The run relies on it when the index file is still that one and every changed
//!   directory kept its shape ([`super::index::vouched_entries`]): the index then still
//!   describes the tree, and the run tells the tracker to go on, forgetting what it
//!   reported. The tracker reads no event while it waits for that answer, so changes made
//!   meanwhile stay queued for the next run.
//! - Otherwise (no tracker, a share it does not follow, a changed shape, a lost event) the
//!   run makes a new fanotify group (directory records only, `FAN_REPORT_DIR_FID`) marked
//!   on the shares' file systems, then checks every share the way it does without a
//!   tracker, and forks the next tracker with that group and the index files opened for
//!   it. The group exists before the check starts, so no change falls between the two.
//! - The tracker drops to the system account `agentuser-track` (no groups, no capability,
//!   no-new-privs, not dumpable, no file system or network access under Landlock), reads the
//!   indexes, and from then on only compares the directory handles of events with the
//!   recorded ones. It handles no name and no path: nothing an agent chose reaches it but
//!   the identity of a directory.
//! - Its socket lives in the agent's index directory, which only root can enter, and it
//!   answers only a root peer. A lock serialises runs of the same agent while they talk to
//!   it.
//!
//! Without the account, after a reboot, when a group cannot be made, or for a share on a
//! file system that other machines can change (NFS, SMB, FUSE...: their changes make no
//! event here), nothing is tracked and every run checks every directory as before: the
//! tracker only ever saves work.
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::MaskFlags;
use nix::sys::inotify::{AddWatchFlags, InitFlags as InotifyFlags, Inotify, WatchDescriptor};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use super::index::{self, ShareReport};
use crate::sys::fanotify::{DirHandle, Watch};

/// The system account the tracker runs as (install.sh creates it).
pub const ACCOUNT: &str = "agentuser-track";

const SOCKET: &str = "tracker.sock";
const LOCK: &str = "tracker.lock";

/// How long a run waits for the tracker's report (it answers in microseconds; a stopped or
/// starved tracker costs a run this, then a full check).
const REPORT_TIMEOUT: Duration = Duration::from_millis(200);

/// More changed directories than this in one share and the tracker gives that share up:
/// checking every directory is then cheaper than listing each changed one.
const MAX_CHANGED: usize = 4096;

/// Entries made, removed or moved in or out, directories included.
const MASK: MaskFlags = MaskFlags::FAN_CREATE
    .union(MaskFlags::FAN_DELETE)
    .union(MaskFlags::FAN_MOVED_FROM)
    .union(MaskFlags::FAN_MOVED_TO)
    .union(MaskFlags::FAN_ONDIR);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    shares: Vec<ShareReport>,
}

/// The answer that keeps a tracker going; anything else (end of file) ends it.
const KEEP_GOING: u8 = b'k';

/// The largest report a run reads.
const MAX_REPORT: usize = 64 << 20;

/// A run's side: the agent's tracking lock, and the tracker it is talking to with what it
/// reported.
pub struct Tracking {
    dir: PathBuf,
    _lock: Flock<File>,
    previous: Option<(UnixStream, Report)>,
}

/// A new group watching the shares' file systems, for the next tracker.
pub struct Watching {
    watch: Watch,
    fsids: Vec<[i32; 2]>,
    /// Watches on the shares' roots: a file system unmounted since (its marks gone with
    /// it, so changes made while it was away or after it came back go unseen) shows there
    /// as IN_UNMOUNT, a root removed or moved as IN_DELETE_SELF or IN_MOVE_SELF.
    roots: Inotify,
    /// The watch on the tracker's socket file: when it goes, so does the tracker.
    home: Option<WatchDescriptor>,
}

impl Tracking {
    /// Takes the agent's tracking lock and its tracker's report. None when the lock cannot
    /// be taken (nothing is tracked then).
    pub fn begin(state: &Path, agent: &str) -> Option<Tracking> {
        let dir = index::agent_dir(state, agent);
        crate::registry::ensure_root_dir(&state.join("index"), 0o700).ok()?;
        crate::registry::ensure_root_dir(&dir, 0o700).ok()?;
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(LOCK))
            .ok()?;
        let lock = Flock::lock(lock, FlockArg::LockExclusive).ok()?;
        let previous = ask(&dir).ok();
        Some(Tracking {
            dir,
            _lock: lock,
            previous,
        })
    }

    /// What the tracker said of `share`, if anything.
    pub fn report_for(&self, share: &Path) -> Option<&ShareReport> {
        let (_, report) = self.previous.as_ref()?;
        report.shares.iter().find(|r| r.share == share)
    }

    /// The run relied on the report: the tracker forgets what it reported and goes on.
    pub fn keep_going(self) {
        if let Some((mut stream, _)) = self.previous {
            let _ = stream.write_all(&[KEEP_GOING]);
        }
    }

    /// Ends the tracker (if any) and starts watching the file systems of `shares` for the
    /// next one, before they are checked. None when a group cannot be made or marked.
    pub fn watch(&mut self, shares: &[&Path]) -> Option<Watching> {
        self.previous = None;
        let watch = Watch::new_dir_changes().ok()?;
        let mut fsids = Vec::new();
        let roots = Inotify::init(InotifyFlags::IN_NONBLOCK | InotifyFlags::IN_CLOEXEC).ok()?;
        for share in shares {
            // A mark needs a descriptor that is open, not O_PATH. A share that is a file
            // (or gone) has nothing to follow.
            let Ok(root) = open_directory(share) else {
                continue;
            };
            if !changes_are_all_local(root.as_fd()) {
                return None;
            }
            watch.mark_filesystem(root.as_fd(), MASK).ok()?;
            fsids.push(crate::sys::fanotify::fsid(root.as_fd()).ok()?);
            // Through the descriptor: exactly the directory marked, whatever the path
            // names by now.
            let exact = format!("/proc/self/fd/{}", root.as_raw_fd());
            let gone = AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR;
            roots.add_watch(exact.as_str(), gone).ok()?;
        }
        if fsids.is_empty() {
            return None;
        }
        Some(Watching {
            watch,
            fsids,
            roots,
            home: None,
        })
    }

    /// Forks the next tracker for the shares in `settled` (whose index files record them as
    /// just checked), with the group `watching` made before the check. Failing is
    /// harmless: the next run checks everything.
    pub fn hand_over(self, watching: Watching, state: &Path, agent: &str, settled: &[&Path]) {
        let mut indexes = Vec::new();
        for share in settled {
            let path = index::index_path(state, agent, share);
            let opened = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path);
            if let Ok(file) = opened {
                indexes.push((share.to_path_buf(), file));
            }
        }
        let (listener, own) = match listen(&self.dir) {
            Ok(listening) if !indexes.is_empty() => listening,
            _ => return watching.close(),
        };
        let mut watching = watching;
        watching.home = watch_own_socket(&watching.roots, &self.dir, own);
        if watching.home.is_none() {
            // Replaced already, or not watchable: a tracker nobody reaches, or one that
            // would never learn that nobody does.
            return watching.close();
        }
        match crate::sys::spawn::fork() {
            Ok(ForkResult::Child) => {
                let code = match become_tracker(watching, listener, indexes) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                crate::sys::spawn::exit_now(code)
            }
            // The parent's copies close here; the tracker holds its own.
            Ok(ForkResult::Parent { .. }) => {}
            Err(_) => watching.close(),
        }
    }
}

impl Watching {
    /// Closes a group no tracker took, off the run's path: the last close of a group with
    /// a file-system mark waits for an SRCU grace period.
    fn close(self) {
        crate::sys::spawn::close_detached(vec![self.watch.into_fd()]);
    }
}

/// Whether every change to the file system `fd` is on goes through this kernel, so that
/// fanotify sees it. Not so for network and cluster file systems (NFS, SMB, Ceph, 9p,
/// FUSE such as sshfs...): another client's `git clone` there makes no event here, and a
/// tracker would report the tree unchanged. Only local disk and memory file systems are
/// tracked; every other share is checked at every run, as without a tracker.
fn changes_are_all_local(fd: BorrowedFd) -> bool {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
        fstatfs,
    };
    let local = [
        EXT4_SUPER_MAGIC, // also ext2 and ext3
        XFS_SUPER_MAGIC,
        BTRFS_SUPER_MAGIC,
        F2FS_SUPER_MAGIC,
        TMPFS_MAGIC,
    ];
    fstatfs(fd).is_ok_and(|fs| local.contains(&fs.filesystem_type()))
}

/// The directory at `path`, opened for reading without following a symlink anywhere.
fn open_directory(path: &Path) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(nix::fcntl::AT_FDCWD, path, how)
}

/// Ends the agent's tracker, if one runs (the agent is being deleted).
pub fn stop(state: &Path, agent: &str) {
    let _ = ask(&index::agent_dir(state, agent));
}

/// Asks the tracker listening in `dir` for its report (a length, then the report). The
/// connection stays open for the answer; closing it ends the tracker.
fn ask(dir: &Path) -> Result<(UnixStream, Report)> {
    let mut stream = UnixStream::connect(dir.join(SOCKET))?;
    stream.set_read_timeout(Some(REPORT_TIMEOUT))?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_REPORT {
        return Err(anyhow!("a tracker report of {length} bytes"));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes)?;
    Ok((stream, postcard::from_bytes(&bytes)?))
}

/// A listening socket at `dir/tracker.sock`, bound under a name of its own and renamed over
/// the old one, so a run never finds the place empty while another hands over.
/// Also returns the socket file's inode, which tells it from the socket of a later run.
fn listen(dir: &Path) -> Result<(UnixListener, u64)> {
    // Named like every temp file of the state directory: one a killed run left behind is
    // removed here (its writer is gone) and reported by doctor meanwhile.
    crate::registry::remove_dead_temps(dir);
    let fresh = dir.join(format!(".{SOCKET}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh).context("binding the tracker's socket")?;
    let own = std::fs::symlink_metadata(&fresh)
        .context("the tracker's socket")?
        .ino();
    std::fs::rename(&fresh, dir.join(SOCKET)).context("placing the tracker's socket")?;
    Ok((listener, own))
}

/// Watches the tracker's socket file for its end: unlinked (the agent deleted, its
/// directory removed), moved or replaced by the next run's; nobody can reach this tracker
/// then. The socket file, not the directory: the bound socket pins the directory, which
/// then never reports its own deletion. None when the file in the place is not `own` (the
/// inode [`listen`] bound) any more: another run placed its socket between the rename and
/// the watch, and a watch on that one would keep this tracker alive, unreachable, until
/// that one went.
fn watch_own_socket(roots: &Inotify, dir: &Path, own: u64) -> Option<WatchDescriptor> {
    let place = dir.join(SOCKET);
    // Not followed: the place is root's alone, but a symlink there would move the watch.
    let gone = AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW;
    let watched = roots.add_watch(&place, gone).ok()?;
    // Looked at after the watch was made: a socket once replaced never comes back, so if
    // the place still holds `own`, it held it when the watch resolved the path.
    let found = std::fs::symlink_metadata(&place).ok()?;
    (found.ino() == own).then_some(watched)
}

/// One share as the tracker follows it.
struct Followed {
    share: PathBuf,
    index: index::Index,
    file: index::FileId,
    changed: BTreeSet<usize>,
    complete: bool,
}

/// The forked child: leaves the run's session and descriptors, drops to the tracker's
/// account, loads the indexes, then notes changes until a run asks for them.
fn become_tracker(
    watching: Watching,
    listener: UnixListener,
    indexes: Vec<(PathBuf, File)>,
) -> Result<()> {
    let Watching {
        watch,
        fsids,
        roots,
        home,
    } = watching;
    let _ = nix::unistd::setsid();
    let null = File::options().read(true).write(true).open("/dev/null")?;
    for stream in 0..=2 {
        crate::sys::spawn::dup_onto(null.as_fd(), stream)?;
    }
    // Closed here, not by close_all_except behind its owner's back.
    drop(null);
    let mut keep = vec![
        watch.fd().as_raw_fd(),
        listener.as_raw_fd(),
        roots.as_fd().as_raw_fd(),
    ];
    keep.extend(indexes.iter().map(|(_, file)| file.as_raw_fd()));
    crate::sys::net::close_all_except(&keep)?;
    crate::sys::spawn::reset_signals()?;
    // Holds no directory: a file system can be unmounted while it lives.
    nix::unistd::chdir("/")?;
    let account =
        nix::unistd::User::from_name(ACCOUNT)?.ok_or_else(|| anyhow!("no account {ACCOUNT}"))?;
    crate::sys::process::drop_for_good(account.uid.as_raw(), account.gid.as_raw())?;
    confine()?;
    let mut followed = Vec::new();
    let mut by_handle: HashMap<DirHandle, (usize, usize)> = HashMap::new();
    for (share, mut file) in indexes {
        let stat = nix::sys::stat::fstat(file.as_fd())?;
        let Some(index) = index::read(&mut file) else {
            continue;
        };
        // Events carry the file system's id: one not marked would never report a change.
        let handles = index.handles().filter(|_| fsids.contains(&index.fsid()));
        let slot = followed.len();
        for (position, handle) in handles.iter().flatten().enumerate() {
            by_handle.insert(handle.clone(), (slot, position));
        }
        followed.push(Followed {
            share,
            index,
            file: index::file_id(&stat),
            changed: BTreeSet::new(),
            complete: handles.is_some(),
        });
    }
    let roots = (roots, home);
    serve(&watch, &roots, &listener, &by_handle, &mut followed)
}

/// No file system access and no network from here on: the tracker needs neither.
fn confine() -> Result<()> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, Scope,
    };
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI::V6))?
        .handle_access(AccessNet::from_all(ABI::V6))?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .restrict_self()
        .context("Landlock")?;
    Ok(())
}

/// Notes changed directories; answers each root peer with a report, then goes on when told
/// to (forgetting what it reported) and returns otherwise.
fn serve(
    watch: &Watch,
    roots: &(Inotify, Option<WatchDescriptor>),
    listener: &UnixListener,
    by_handle: &HashMap<DirHandle, (usize, usize)>,
    followed: &mut [Followed],
) -> Result<()> {
    loop {
        let mut fds = [
            PollFd::new(watch.fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(roots.0.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => result?,
        };
        let asked = fds[1].revents().is_some_and(|r| !r.is_empty());
        // Not emptied: the poll above returns at once and reading goes on after the checks.
        drain(watch, by_handle, followed)?;
        if roots_changed(roots, followed) == Roots::HomeGone {
            return Ok(());
        }
        if !asked {
            continue;
        }
        let (mut stream, _) = listener.accept()?;
        if getsockopt(&stream, PeerCredentials).map(|c| c.uid()) != Ok(0) {
            continue;
        }
        // Everything a change made before the peer connected has been queued by then; if
        // the queue does not empty, the report cannot vouch for anything.
        if !drain(watch, by_handle, followed)? {
            followed.iter_mut().for_each(|f| f.complete = false);
        }
        if roots_changed(roots, followed) == Roots::HomeGone {
            return Ok(());
        }
        let report = Report {
            shares: followed
                .iter()
                .map(|f| {
                    let changed = f.changed.iter().copied();
                    f.index.report(f.share.clone(), f.file, f.complete, changed)
                })
                .collect(),
        };
        let bytes = postcard::to_stdvec(&report)?;
        let length = u32::try_from(bytes.len())?.to_le_bytes();
        let mut answer = [0u8; 1];
        let kept = stream.write_all(&length).is_ok()
            && stream.write_all(&bytes).is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && answer[0] == KEEP_GOING;
        if !kept {
            return Ok(());
        }
        followed.iter_mut().for_each(|f| f.changed.clear());
    }
}

#[derive(PartialEq)]
enum Roots {
    Same,
    HomeGone,
}

/// Reads the root watches. A share's root unmounted, removed or moved (any event: the
/// kernel also ends a watch with IN_IGNORED) makes every share incomplete, which one does
/// not matter: the next run checks everything. Its socket file gone ends the tracker.
fn roots_changed(
    (roots, home): &(Inotify, Option<WatchDescriptor>),
    followed: &mut [Followed],
) -> Roots {
    let Ok(events) = roots.read_events() else {
        return Roots::Same;
    };
    if events.iter().any(|e| Some(e.wd) == *home) {
        return Roots::HomeGone;
    }
    if !events.is_empty() {
        followed.iter_mut().for_each(|f| f.complete = false);
    }
    Roots::Same
}

/// Batches of events read before the tracker looks at its socket and roots again.
const READS_PER_DRAIN: usize = 16;

/// Reads queued events, at most [`READS_PER_DRAIN`] batches: a followed directory is
/// marked changed; a lost event makes every share incomplete. True when the queue was
/// found empty.
fn drain(
    watch: &Watch,
    by_handle: &HashMap<DirHandle, (usize, usize)>,
    followed: &mut [Followed],
) -> Result<bool> {
    // Bounded, like the planted-repository watcher's: something writing on the file system
    // at every system call of this process (an audit log there) would otherwise keep the
    // queue from ever emptying, and the tracker from ever answering or noticing its end.
    for _ in 0..READS_PER_DRAIN {
        let events = watch.read()?;
        if events.is_empty() {
            return Ok(true);
        }
        for event in events {
            if event.mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
                followed.iter_mut().for_each(|f| f.complete = false);
                continue;
            }
            let Some(&(slot, position)) = event.dir.as_ref().and_then(|d| by_handle.get(d)) else {
                continue;
            };
            let share = &mut followed[slot];
            if share.changed.len() >= MAX_CHANGED {
                share.complete = false;
            } else {
                share.changed.insert(position);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_whose_socket_was_replaced_before_its_watch_does_not_start() {
        let dir = std::env::temp_dir().join(format!("agentuser-track-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let roots = Inotify::init(InotifyFlags::IN_NONBLOCK | InotifyFlags::IN_CLOEXEC).unwrap();
        let (_first, first) = listen(&dir).unwrap();
        assert!(watch_own_socket(&roots, &dir, first).is_some());
        // The next run hands over before this one watched its socket.
        let (_second, second) = listen(&dir).unwrap();
        assert_ne!(first, second);
        assert!(watch_own_socket(&roots, &dir, first).is_none());
        assert!(watch_own_socket(&roots, &dir, second).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_file_systems_changed_through_this_kernel_are_tracked() {
        let dir = |path: &str| open_directory(Path::new(path)).unwrap();
        // /dev/shm is a tmpfs; /proc stands for every file system that is not on the list.
        assert!(changes_are_all_local(dir("/dev/shm").as_fd()));
        assert!(!changes_are_all_local(dir("/proc").as_fd()));
    }
}
