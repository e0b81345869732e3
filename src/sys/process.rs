//! Process-level discipline of the setuid helper: standard descriptors, environment,
//! becoming fully root, resource limits, core dumps; and killing every process of a uid.

use std::ffi::OsString;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, setgroups, setresgid, setresuid};

/// Makes sure descriptors 0, 1 and 2 are open, so that a file we open later can never
/// become someone's stdout or stderr (a classic setuid pitfall).
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        if nix::fcntl::fcntl(
            // SAFETY: fd 0..=2 is only probed with F_GETFD, which borrows nothing.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        ) == Err(Errno::EBADF)
        {
            match std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                // The lowest free descriptor is `fd`; keep it open for the process lifetime.
                Ok(file) if file.as_raw_fd() == fd => std::mem::forget(file),
                _ => std::process::abort(),
            }
        }
    }
}

/// Takes the whole environment out of the process and returns it. From here on nothing in
/// the privileged process (libc included) can be steered by an environment variable; only
/// the runner picks allowlisted values out of the returned list for the agent.
pub fn take_environment() -> Vec<(OsString, OsString)> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (name, _) in &vars {
        // SAFETY: called once at start-up, before any thread is spawned.
        unsafe { std::env::remove_var(name) };
    }
    // SAFETY: as above, single-threaded start-up.
    unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
    vars
}

/// Becomes root in every uid and gid slot and drops the caller's supplementary groups, so the
/// caller can no longer signal or ptrace the process and nothing of its identity is kept.
pub fn become_root() -> Result<()> {
    if !Uid::effective().is_root() {
        bail!("not running as root: agentuser must be installed setuid-root or run by root");
    }
    setgroups(&[]).context("setgroups")?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).context("setresgid")?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).context("setresuid")?;
    Ok(())
}

/// Resets resource limits inherited from the caller (a small RLIMIT_FSIZE would truncate a
/// root-written file, a small RLIMIT_NOFILE would make an operation fail half way), disables
/// core dumps and sets a known umask.
pub fn reset_limits() -> Result<()> {
    use nix::sys::resource::getrlimit;
    const UNLIMITED: u64 = libc::RLIM_INFINITY;
    // These must hold, or a root-written file could be truncated or a core dump could
    // hold secrets.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("setrlimit RLIMIT_CORE")?;
    if setrlimit(Resource::RLIMIT_FSIZE, UNLIMITED, UNLIMITED).is_err() {
        // Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts withhold even from
        // root. Then refuse rather than risk a truncated root-written file.
        bail!(
            "the file-size limit (ulimit -f) cannot be lifted on this host: run agentuser \
             without a file-size limit"
        );
    }
    // These are raised to sane values; where the host forbids raising one (some container
    // runtimes cap hard limits even for root), the soft limit goes up to the hard limit.
    let wanted = [
        (Resource::RLIMIT_CPU, UNLIMITED, UNLIMITED),
        (Resource::RLIMIT_DATA, UNLIMITED, UNLIMITED),
        (Resource::RLIMIT_AS, UNLIMITED, UNLIMITED),
        (Resource::RLIMIT_NPROC, UNLIMITED, UNLIMITED),
        (Resource::RLIMIT_STACK, 8 << 20, UNLIMITED),
        (Resource::RLIMIT_NOFILE, 65536, 65536),
    ];
    for (resource, soft, hard) in wanted {
        if setrlimit(resource, soft, hard).is_err() {
            let (_, hard) = getrlimit(resource).context("getrlimit")?;
            setrlimit(resource, soft.min(hard), hard)
                .with_context(|| format!("setrlimit {resource:?}"))?;
        }
    }
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE)")?;
    umask(Mode::from_bits_truncate(0o022));
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary group, for good, then sets no-new-privs and
/// clears dumpable (so no process of that uid can trace it or read its memory). Checks
/// that the drop held: all three uids are `uid`, no capability is left, root cannot be
/// taken back. Refuses root as the target. For the processes that live beside a run
/// (policy point, share tracker), which never keep root.
pub fn drop_for_good(uid: u32, gid: u32) -> Result<()> {
    if uid == 0 || gid == 0 {
        bail!("refusing to drop to root");
    }
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[]).context("setgroups")?;
    setresgid(gid, gid, gid).context("setresgid")?;
    setresuid(uid, uid, uid).context("setresuid")?;
    let ids = nix::unistd::getresuid().context("getresuid")?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || !super::spawn::has_no_capabilities()
        || setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok()
    {
        bail!("the privilege drop did not hold");
    }
    nix::sys::prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")?;
    nix::sys::prctl::set_dumpable(false).context("PR_SET_DUMPABLE")?;
    Ok(())
}

/// Kills every process whose real or saved uid is `uid`, including ones forked while we
/// kill. A child switches to that uid and signals -1: the kernel then delivers SIGKILL to
/// exactly the processes that uid may signal, in one pass, so a fork loop cannot outrun a
/// scan of /proc. (kill(-1) reports success whenever any other process exists, so whether
/// anything is left is judged by a scan for live, non-zombie processes.)
pub fn kill_all_of_uid(uid: u32, gid: u32) -> Result<()> {
    if uid == 0 || uid == u32::MAX {
        bail!("refusing to kill processes of uid {uid}");
    }
    for round in 0..100u64 {
        if live_processes_of(uid).is_empty() {
            return Ok(());
        }
        // The child only makes system calls and leaves with _exit.
        match super::spawn::fork()? {
            ForkResult::Child => {
                let switched = setgroups(&[]).is_ok()
                    && setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
                        .is_ok()
                    && setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
                        .is_ok();
                if switched {
                    for _ in 0..3 {
                        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    }
                }
                super::spawn::exit_now(if switched { 0 } else { 1 })
            }
            ForkResult::Parent { child } => {
                if let WaitStatus::Exited(_, 1) = waitpid(child, None).context("waitpid")? {
                    bail!("could not switch to uid {uid} to stop its processes");
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(round.min(20)));
    }
    bail!(
        "processes of uid {uid} survived SIGKILL: {:?}",
        live_processes_of(uid)
    )
}

/// Pids of processes (not zombies) whose real, effective or saved uid is `uid`.
pub fn live_processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .map(str::to_owned)
            };
            let zombie = field("State:").is_some_and(|l| l.contains('Z'));
            let uids = field("Uid:")?;
            let ours = uids
                .split_whitespace()
                .skip(1)
                .take(3)
                .any(|u| u == uid.to_string());
            (ours && !zombie).then_some(pid)
        })
        .collect()
}
