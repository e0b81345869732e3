//! Process plumbing for the runner: fork, leaving a child without unwinding, descriptors
//! closed at exec, signal state reset, controlling terminal and window size.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::ForkResult;

/// fork(2), refused unless the calling process has exactly one thread. The child may then
/// run ordinary Rust code: no lock (allocator, stdio, environment) can be held by a thread
/// that does not exist in the child.
///
/// agentuser does start threads: the share walk and the share index's check run scoped
/// workers (`share::walk`, `share::index`), and the runner forks after the latter. Scoped
/// threads are joined before they return, but a joined thread, done with every lock, still
/// shows in `/proc/self/task` for a moment while the kernel ends it: the count is given up
/// to about a millisecond to settle, then a thread still there refuses the fork. Nothing in
/// the types keeps threads away from forks, hence this check at run time, before every one.
pub fn fork() -> Result<ForkResult> {
    let mut threads = thread_count()?;
    for _ in 0..200 {
        if threads == 1 {
            break;
        }
        std::thread::yield_now();
        threads = thread_count()?;
    }
    if threads != 1 {
        bail!(
            "refusing to fork with {threads} threads alive (the child could inherit a held lock)"
        );
    }
    // SAFETY: the process has one thread (checked just above; only this thread could start
    // another), so the child inherits no lock held by another thread. Callers end the child
    // with `exit_now` (or exec), so it never returns into the parent's frames.
    unsafe { nix::unistd::fork() }.context("fork")
}

/// The number of threads of this process, from `/proc/self/task` (a fresh `/proc` in the
/// agent's view shows its init the same way).
fn thread_count() -> Result<usize> {
    let tasks =
        std::fs::read_dir("/proc/self/task").context("counting threads: /proc/self/task")?;
    Ok(tasks.count())
}

/// Ends a forked child at once: no destructors, no atexit handlers, no stdio flush of the
/// parent's buffers (which would duplicate output).
pub fn exit_now(code: u8) -> ! {
    // SAFETY: _exit is async-signal-safe and does not return.
    unsafe { libc::_exit(i32::from(code)) }
}

/// Marks every descriptor from `first` up as close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC): the exec closes them all, while a failing exec can still report
/// through a descriptor among them.
pub fn cloexec_from(first: u32) -> Result<()> {
    // SAFETY: plain system call with integer arguments; it only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc)
        .map(drop)
        .context("close_range(CLOSE_RANGE_CLOEXEC)")
}

/// Closes every descriptor from `first` up, now.
pub fn close_from(first: u32) -> Result<()> {
    close_range(first, u32::MAX)
}

/// Restores default dispositions for every catchable signal and unblocks all signals, so
/// the command starts with the signal state a login would give it (SIG_IGN and the mask
/// survive exec; the caller of a setuid program chooses both).
pub fn reset_signals() -> Result<()> {
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL replaces no Rust handler whose state could be broken.
        unsafe { signal(sig, SigHandler::SigDfl) }.with_context(|| format!("resetting {sig}"))?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).context("sigprocmask")
}

/// Gives the signals in `set` a no-op handler. They are then never "ignored by default"
/// (which the kernel does for a pid namespace's init), yet a blocked one stays queued for
/// a signalfd.
pub fn catch_signals(set: &SigSet) -> Result<()> {
    extern "C" fn noop(_: libc::c_int) {}
    for sig in set.iter() {
        // SAFETY: the handler does nothing, so it is trivially async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(noop)) }
            .with_context(|| format!("handling {sig}"))?;
    }
    Ok(())
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: BorrowedFd) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).map(drop).context("TIOCSCTTY")
}

/// The window size of a terminal.
pub fn window_size(fd: BorrowedFd) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into `ws`, which is valid and writable.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(ws)
}

/// Sets the window size of a terminal (on a pty master, the kernel signals SIGWINCH to the
/// slave's foreground process group).
pub fn set_window_size(fd: BorrowedFd, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one struct winsize from `ws`, which is valid.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) };
}

/// Permitted, effective and ambient capability sets are all empty.
pub fn has_no_capabilities() -> bool {
    let mut header = libc_cap_header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [libc_cap_data::default(); 2];
    // SAFETY: capget with a version-3 header writes two cap_data structs into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    let ambient_empty = (0..64).all(|cap| {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        r != 1
    });
    data.iter().all(|d| d.effective == 0 && d.permitted == 0) && ambient_empty
}

#[repr(C)]
struct libc_cap_header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct libc_cap_data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the loopback interface of the current network namespace up.
pub fn loopback_up() -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes one ifreq, which is valid and writable.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc).context("SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the union's ifru_flags member, the one read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc).map(drop).context("SIOCSIFFLAGS")
}

/// Standard descriptor 0, 1 or 2 (always open: see `process::ensure_std_fds`).
pub fn std_fd(fd: RawFd) -> BorrowedFd<'static> {
    assert!((0..=2).contains(&fd));
    // SAFETY: descriptors 0-2 are opened at start-up and never closed by the process.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// dup2(2) onto a standard descriptor (nix's dup2 wants an owned target).
pub fn dup_onto(src: BorrowedFd, target: RawFd) -> Result<()> {
    // SAFETY: plain system call on two descriptor numbers; `target` is 0-2, replaced
    // atomically.
    let rc = unsafe { libc::dup2(src.as_raw_fd(), target) };
    Errno::result(rc).map(drop).context("dup2")
}

/// Joins a new anonymous session keyring, so the process no longer possesses the keyring it
/// inherited (the caller's: possession grants access to its keys whatever their owner).
pub fn join_new_session_keyring() -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a null name pointer creates an anonymous keyring; no memory of ours
    // is read or written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::ENOSYS) => Ok(()),
        Err(e) => Err(e).context("joining a new session keyring"),
    }
}

/// Closes `fds` in a detached child instead of here: the last close of some kernel objects
/// blocks (a fanotify group with a file-system mark waits for an SRCU grace period, 10-20 ms
/// measured; a mount namespace, for an expedited RCU grace period), and nobody needs to wait
/// for it. The child holds nothing else (its standard
/// streams and every other descriptor, locks included, are closed first), leaves the
/// caller's session, waits until this process has dropped its own copy, and exits. It is
/// not waited for: this is the last thing a run does, and once this process exits whoever
/// adopts the child reaps it (one fork, not two: each costs a copy of the page tables and
/// its teardown, at every run). Without a fork, closes here.
pub fn close_detached(fds: Vec<OwnedFd>) {
    let Ok((wait_r, wait_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return drop(fds);
    };
    // The watcher's thread was just joined: `fork` waits for it to leave /proc/self/task.
    match fork() {
        Ok(ForkResult::Parent { .. }) => {
            drop(fds);
            drop(wait_w);
        }
        Ok(ForkResult::Child) => {
            let mut keep: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
            keep.push(wait_r.as_raw_fd());
            let _ = nix::unistd::setsid();
            for stream in 0..=2 {
                // SAFETY: closes a descriptor number; no Rust object in this process
                // refers to the standard streams (it only waits and exits).
                unsafe { libc::close(stream) };
            }
            if super::net::close_all_except(&keep).is_ok() {
                let mut byte = [0u8; 1];
                // Returns at EOF: the parent dropped its copies of `fds` and the pipe.
                while nix::unistd::read(&wait_r, &mut byte).is_err_and(|e| e == Errno::EINTR) {}
            }
            exit_now(0)
        }
        Err(_) => drop(fds),
    }
}

/// The mount namespace of process `pid`, held open; None when it cannot be opened.
pub fn open_mount_namespace(pid: nix::unistd::Pid) -> Option<OwnedFd> {
    std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(OwnedFd::from)
}

/// Closes every descriptor from 3 up except `keep`.
pub fn close_all_above_2_except(keep: BorrowedFd) -> Result<()> {
    let keep = keep.as_raw_fd() as u32;
    if keep > 3 {
        close_range(3, keep - 1)?;
    }
    close_range(keep + 1, u32::MAX)
}

/// close_range(2) without flags: closes `first..=last`.
fn close_range(first: u32, last: u32) -> Result<()> {
    // SAFETY: plain system call on descriptor numbers; the callers own every descriptor in
    // the range (no Rust object that outlives this call refers to one).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    Errno::result(rc).map(drop).context("close_range")
}

/// Stops the calling process with the stop signal `sig` under its default action, so the
/// caller's shell sees its job stopped, whatever disposition and mask the process had; the
/// old ones are back once it is continued. Returns at once when the kernel discards the stop
/// (an orphaned process group: nobody could continue it).
pub fn stop_self(sig: Signal) -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, sigaction};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no handler, so no Rust code can run in signal context; the
    // previous action is put back below.
    let previous = unsafe { sigaction(sig, &default) }.context("sigaction")?;
    let mut only = SigSet::empty();
    only.add(sig);
    let mut mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&only), Some(&mut mask)).context("sigprocmask")?;
    let sent = nix::sys::signal::raise(sig).context("raise");
    let restored = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None).context("sigprocmask");
    // SAFETY: puts back the action sigaction returned above.
    unsafe { sigaction(sig, &previous) }.context("sigaction")?;
    sent.and(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a second thread alive, fork refuses (the unit-test harness may add threads of
    /// its own; the single-threaded case is what every `exec` test exercises).
    #[test]
    fn fork_refuses_while_another_thread_lives() {
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || parked.recv());
        let forked = fork();
        if let Ok(ForkResult::Child) = forked {
            exit_now(0);
        }
        drop(stop);
        let _ = other.join();
        let err = forked.expect_err("fork went ahead with two threads");
        assert!(err.to_string().contains("threads alive"), "{err}");
    }
}
