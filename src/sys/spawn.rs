//! Process plumbing for the runner: fork, leaving a child without unwinding, descriptors
//! closed at exec, signal state reset, controlling terminal and window size.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libc::{c_int, c_void};

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
    extern "C" fn noop(_: c_int) {}
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
/// for it. The child holds nothing else (its standard streams and every other descriptor,
/// locks included, are closed first), leaves the caller's session, waits until this process
/// has dropped its own copy, and exits. It is not waited for: this is the last thing a run
/// does, and once this process exits whoever adopts the child reaps it. Without a child,
/// closes here.
///
/// The child shares this process's memory (`CLONE_VM`, as posix_spawn's child does) instead
/// of getting a copy: a fork of the runner at its largest copied its page tables, faulted in
/// copies of every page either side wrote, and tore the copy down again, about 0.3-0.5 ms of
/// CPU at every run (3-5% of a run, profiled 50 runs at a time). Such a child may run nothing
/// that touches memory this process uses: [`closer_main`] makes system calls only, on a stack
/// of its own, and reads only the leaked [`Closer`].
pub fn close_detached(fds: Vec<OwnedFd>) {
    let Ok((wait_r, wait_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return drop(fds);
    };
    if fds.len() >= CLOSER_KEEP {
        return drop(fds);
    }
    let mut closer = Closer {
        keep: [c_int::MAX; CLOSER_KEEP],
        wait: wait_r.as_raw_fd(),
    };
    for (slot, fd) in closer.keep.iter_mut().zip(&fds) {
        *slot = fd.as_raw_fd();
    }
    closer.keep[fds.len()] = wait_r.as_raw_fd();
    closer.keep.sort_unstable();
    // Leaked, both: the child reads them after this function returned.
    let closer: &'static Closer = Box::leak(Box::new(closer));
    let Some(stack_top) = closer_stack() else {
        return drop(fds);
    };
    // The child starts with every signal blocked, so no handler of this process ever runs
    // on its stack; SIGKILL still ends it.
    let mut old_mask = SigSet::empty();
    if sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old_mask),
    )
    .is_err()
    {
        return drop(fds);
    }
    // SAFETY: `closer_main` makes only system calls (no allocation, no unwinding, no errno
    // that this process reads: they do not fail on the descriptors it owns), on the stack
    // mapped for it, reading the leaked `closer`; it ends with _exit. Without CLONE_FILES
    // it has its own copy of the descriptor table, so its closes do not touch ours.
    let pid = unsafe {
        libc::clone(
            closer_main,
            stack_top,
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::from_ref(closer).cast_mut().cast(),
        )
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    // With or without a child (pid -1), this process's copies go; the child's last close
    // is the one that waits.
    let _ = pid;
    drop(fds);
    drop(wait_w);
}

/// How many descriptors the detached closer can keep (the run's are two or three).
const CLOSER_KEEP: usize = 8;

/// The detached closer's stack, above one inaccessible guard page.
const CLOSER_STACK: usize = 64 << 10;

/// What the detached closer keeps open (sorted, unused slots `c_int::MAX`) and the pipe end
/// it waits on.
struct Closer {
    keep: [c_int; CLOSER_KEEP],
    wait: c_int,
}

/// A stack for the closer, never unmapped (it goes with the address space), and its top.
fn closer_stack() -> Option<*mut c_void> {
    let page = 4096;
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CLOSER_STACK + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the lowest page of the mapping just made; an overflow faults instead of
    // writing below it.
    if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
        return None;
    }
    // SAFETY: one past the end of the mapping made above (the stack grows down from it).
    Some(unsafe { base.cast::<u8>().add(CLOSER_STACK + page) }.cast())
}

/// The detached closer: leaves the session, closes everything but `keep`, waits for end of
/// file on `wait` (this process closed its copies), exits; its exit closes `keep`. System
/// calls only (see [`close_detached`]). Every signal is blocked, so the read is never
/// interrupted.
extern "C" fn closer_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the leaked `Closer` of `close_detached`, never freed or written again.
    let closer = unsafe { &*arg.cast::<Closer>() };
    // SAFETY: a plain system call.
    unsafe { libc::setsid() };
    for stream in 0..=2 {
        // SAFETY: a descriptor number of this child's own table.
        unsafe { libc::close(stream) };
    }
    let mut first: c_int = 3;
    for i in 0..=CLOSER_KEEP {
        let next = closer.keep.get(i).copied().unwrap_or(c_int::MAX);
        if next > first {
            // SAFETY: descriptor numbers of this child's own table.
            unsafe { libc::syscall(libc::SYS_close_range, first, next - 1, 0u32) };
        }
        first = first.max(next.saturating_add(1));
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a local of this child's stack.
    unsafe { libc::read(closer.wait, std::ptr::from_mut(&mut byte).cast(), 1) };
    // SAFETY: ends this child without running anything of the parent's (no atexit, no
    // unwinding).
    unsafe { libc::_exit(0) }
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
