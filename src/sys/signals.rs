//! Signals of the privileged process (docs/threat-model.md row 18): terminal job control never
//! stops it, and a hang-up or interrupt is held back until a safe point of a state change.
//!
//! - SIGTSTP, SIGTTIN and SIGTTOU are ignored from start-up on: a stopped helper would keep
//!   its locks for as long as its caller likes. (SIGSTOP cannot be ignored, but only root
//!   may send it to the helper: the caller's uid is gone after `become_root`.) Children
//!   inherit the ignored dispositions; the runner resets them for the agent's command.
//!   The runner of `exec` and `shell` keeps them ignored too: it stops only on purpose,
//!   once the agent is stopped (`runner::freeze`); a run in the background that reads the
//!   terminal sees EIO and stops itself that way (`runner::pty`).
//! - SIGHUP, SIGINT, SIGTERM and SIGQUIT are blocked by commands that change state: they
//!   stay pending, long operations look for them at safe points ([`pending_interrupt`]) and
//!   stop there with the journal saying where, and a signal that arrives after the last
//!   safe point is dropped at exit, when the change is complete.

use anyhow::{Context, Result};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};

/// The signals a terminal or a session sends to end a command.
pub const INTERRUPTS: [Signal; 4] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
];

/// The signals of terminal job control, which would stop the process.
const JOB_CONTROL: [Signal; 3] = [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU];

/// Ignores the job-control stop signals for the life of the process.
pub fn ignore_job_control() -> Result<()> {
    for sig in JOB_CONTROL {
        // SAFETY: SIG_IGN installs no handler; no Rust state can be observed half-updated.
        unsafe { signal(sig, SigHandler::SigIgn) }.with_context(|| format!("ignoring {sig}"))?;
    }
    Ok(())
}

fn interrupt_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in INTERRUPTS {
        set.add(sig);
    }
    set
}

/// Blocks the interrupt signals in the calling thread and every thread it starts later.
/// Call before any thread exists.
pub fn defer_interrupts() -> Result<()> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&interrupt_set()), None)
        .context("blocking interrupt signals")
}

/// The first interrupt signal waiting to be delivered, if any (it stays pending).
pub fn pending_interrupt() -> Option<Signal> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes one sigset_t into `pending`, which is valid and writable.
    unsafe { libc::sigemptyset(&mut pending) };
    // SAFETY: sigpending writes one sigset_t into `pending`, which is valid and writable.
    if unsafe { libc::sigpending(&mut pending) } != 0 {
        return None;
    }
    INTERRUPTS.into_iter().find(|&sig| {
        // SAFETY: sigismember only reads the initialised set.
        unsafe { libc::sigismember(&pending, sig as libc::c_int) == 1 }
    })
}
