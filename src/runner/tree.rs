//! The process tree of a run:
//!
//! ```text
//! runner (root, host namespaces: PAM session, pty relay, signal forwarding)
//!  ├─ beside the agent (its own system account; see below), e.g. the policy point
//!  └─ init (root, pid 1 of a new pid namespace; builds the view, reaps, forwards signals)
//!      └─ agent (the agent's uid: the command, or an audit probe)
//! ```
//!
//! **Processes beside the agent.** Work that must last the whole run next to the agent and
//! out of its reach (the network policy point, `network::start`/`network::point`; the
//! credential broker shares that process) has one place in this tree: a child of the
//! runner, forked by `runner::run` *before* [`start`], while the runner is still root and
//! single-threaded (`sys::spawn::fork` refuses otherwise). The rules it follows, in order:
//! do what needs root first (create the agent's network namespace, bind listeners, open its
//! log), hand init what it must join over a descriptor, then drop for good to its own
//! system account (never the agent's uid, never root while it reads agent input): no
//! groups, no capabilities, no-new-privs, not dumpable, Landlock, and `PR_SET_PDEATHSIG`
//! set after the uid change (which clears it) with a check that the runner still lives. It
//! stays in the host pid namespace, where the agent (in its own pid namespace, another uid)
//! can neither see, signal nor trace it; the runner kills and reaps it when the run ends
//! (a `Drop` guard covers every early return), and its death with the runner's covers a
//! killed runner. docs/design.md section 12.
//!
//! When the agent's command exits, init exits with its status, and the kernel kills every
//! process left in the pid namespace (docs/threat-model.md row 14). Failures before the command
//! runs travel back on a close-on-exec pipe as one status byte (125, 126 or 127) and a
//! message; a successful exec closes the pipe with nothing written.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, pipe2, setsid};

use super::freeze::{self, Frozen};
use super::sandbox::{self, ViewPlan};
use crate::sys::spawn::{catch_signals, exit_now, fork};

/// Signals the runner and init pass on to the agent's command.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A failure before the command ran, with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A started tree: the runner's direct child and the report pipe.
pub struct Started {
    pub child: Pid,
    report: OwnedFd,
    /// The gate's write end (see [`start`]).
    pub gate: Option<OwnedFd>,
    /// Readable when the command's status is known and the namespace is empty (one status
    /// byte), or when init died (end of file).
    pub status: OwnedFd,
}

/// The runner's signal set: forwarded signals, SIGCHLD, SIGWINCH and SIGCONT (to the
/// runner: it was continued; to init: continue the stopped agent).
pub fn runner_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set.add(Signal::SIGCONT);
    set
}

/// What init tells the runner on the status pipe, two bytes each.
pub enum Report {
    /// The agent's command stopped with this signal (or the runner asked for the stop with
    /// it), and so did every process of the namespace, but for one that had not within
    /// [`freeze`]'s deadline when the flag is false. Init continues them on SIGCONT.
    Stopped(Signal, bool),
    /// The command's status; the namespace is empty.
    Exited(u8),
}

const STOPPED: u8 = b'S';
const STOPPED_PARTLY: u8 = b's';
const EXITED: u8 = b'X';

impl Report {
    pub fn decode(message: [u8; 2]) -> Option<Report> {
        match message {
            [kind @ (STOPPED | STOPPED_PARTLY), sig] => Signal::try_from(i32::from(sig))
                .ok()
                .map(|sig| Report::Stopped(sig, kind == STOPPED)),
            [EXITED, code] => Some(Report::Exited(code)),
            _ => None,
        }
    }
}

/// Forks the tree. With a view, the child is init of a new pid namespace that builds the
/// view and forks the agent; without, the child is the agent itself (a plain uid switch).
/// `agent` runs in the agent process and returns only on failure.
///
/// With a `gate`, init builds the view and then waits for [`open_gate`] before it forks the
/// agent: the runner opens the PAM session meanwhile (on the other CPU, and without copying
/// the PAM modules into the tree), then passes on the resource limits the session set.
/// Should the gate close instead, init leaves without running anything.
///
/// With a `tty` (the agent's pty slave), init makes it the controlling terminal of its new
/// session, and the agent joins that session as a process group of its own in the
/// terminal's foreground, as a shell's job does: its parent in the same session keeps the
/// group from being orphaned, so a stop from the terminal (Ctrl-Z) is not discarded.
pub fn start(
    view: Option<&ViewPlan>,
    gated: bool,
    tty: Option<BorrowedFd>,
    agent: impl FnOnce() -> Result<()>,
) -> Result<Started> {
    let (report_r, report_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // init tells the runner the command's status once the namespace is empty, before it
    // exits (its exit tears the namespaces down, which the runner need not wait for).
    let (status_r, status_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (gate, gate_w) = match gated {
        true => {
            let (r, w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
            (Some(r), Some(w))
        }
        false => (None, None),
    };
    let saved_pid_ns = match view {
        Some(_) => {
            let ns =
                std::fs::File::open("/proc/self/ns/pid").context("opening /proc/self/ns/pid")?;
            unshare(CloneFlags::CLONE_NEWPID).context("creating the pid namespace")?;
            Some(ns)
        }
        None => None,
    };
    let forked = fork();
    if let Some(ns) = saved_pid_ns {
        // Later forks of the runner (none in exec; audit may run more) stay in its own pid
        // namespace. Failing that, the runner cannot go on safely.
        if matches!(forked, Ok(ForkResult::Parent { .. }) | Err(_))
            && setns(ns.as_fd(), CloneFlags::CLONE_NEWPID).is_err()
        {
            std::process::abort();
        }
    }
    match forked? {
        ForkResult::Child => {
            drop(report_r);
            // Only the runner may open the gate; closing it must reach init as EOF.
            drop(gate_w);
            drop(status_r);
            match view {
                Some(plan) => init(plan, gate, tty, report_w, status_w, agent),
                None => agent_process(report_w, agent),
            }
        }
        ForkResult::Parent { child } => {
            drop(gate);
            drop(status_w);
            Ok(Started {
                child,
                report: report_r,
                gate: gate_w,
                status: status_r,
            })
        }
    }
}

/// Resources whose limits the PAM session (pam_limits) may set for the agent.
const LIMITS: [Resource; 16] = [
    Resource::RLIMIT_AS,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_STACK,
];
const GATE_BYTES: usize = LIMITS.len() * 16;

/// Lets init go on: sends the runner's current resource limits (as the PAM session left
/// them), which init applies before it forks the agent.
pub fn open_gate(gate: OwnedFd) -> Result<()> {
    let mut message = Vec::with_capacity(GATE_BYTES);
    for resource in LIMITS {
        let (soft, hard) = getrlimit(resource).context("getrlimit")?;
        message.extend_from_slice(&soft.to_ne_bytes());
        message.extend_from_slice(&hard.to_ne_bytes());
    }
    // Below PIPE_BUF: one atomic write.
    let written = nix::unistd::write(gate.as_fd(), &message).context("starting the agent")?;
    if written != message.len() {
        anyhow::bail!("starting the agent: short write");
    }
    Ok(())
}

/// Waits at the gate; false when the runner closed it (nothing is to run).
fn pass_gate(gate: OwnedFd) -> Result<bool> {
    let mut message = vec![0u8; GATE_BYTES];
    match std::fs::File::from(gate).read_exact(&mut message) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e).context("waiting for the runner"),
    }
    for (resource, pair) in LIMITS.iter().zip(message.chunks_exact(16)) {
        let soft = u64::from_ne_bytes(pair[..8].try_into()?);
        let hard = u64::from_ne_bytes(pair[8..].try_into()?);
        setrlimit(*resource, soft, hard).with_context(|| format!("setrlimit {resource:?}"))?;
    }
    Ok(true)
}

/// Sends a failure up the report pipe and leaves.
fn fail(report: &OwnedFd, err: &anyhow::Error) -> ! {
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(super::EXIT_SETUP_FAILED, |f| f.code);
    let mut message = vec![code];
    message.extend_from_slice(crate::error::one_line(err).as_bytes());
    let _ = nix::unistd::write(report.as_fd(), &message);
    exit_now(code)
}

fn agent_process(report: OwnedFd, agent: impl FnOnce() -> Result<()>) -> ! {
    let err = match agent() {
        Ok(()) => anyhow!("agent process returned"),
        Err(e) => e,
    };
    fail(&report, &err)
}

/// Pid 1 of the agent's pid namespace.
fn init(
    plan: &ViewPlan,
    gate: Option<OwnedFd>,
    tty: Option<BorrowedFd>,
    report: OwnedFd,
    status: OwnedFd,
    agent: impl FnOnce() -> Result<()>,
) -> ! {
    let mut set = runner_signals();
    set.remove(Signal::SIGWINCH);
    // From the runner: stop the job (see `wait_for_agent`).
    set.add(Signal::SIGTTIN);
    let setup = (|| -> Result<()> {
        // Should the runner die (SIGKILL), the whole namespace goes with it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
        // Not in the caller's session: terminal signals reach the runner only, once.
        setsid().context("setsid")?;
        if let Some(tty) = tty {
            crate::sys::spawn::set_controlling_tty(tty)?;
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).context("sigprocmask")?;
        catch_signals(&set)?;
        sandbox::unshare_namespaces(plan)?;
        for warning in sandbox::build(plan)? {
            eprintln!("agentuser: warning: {warning}");
        }
        // Let go of the caller's directory (in the hidden tree).
        std::env::set_current_dir("/").context("chdir /")?;
        Ok(())
    })();
    if let Err(err) = setup {
        fail(&report, &err.context("building the agent's view"));
    }
    let gated = gate.is_some();
    if let Some(gate) = gate {
        match pass_gate(gate) {
            Ok(true) => {}
            Ok(false) => exit_now(super::EXIT_SETUP_FAILED),
            Err(err) => fail(&report, &err),
        }
    }
    let agent_pid = match fork() {
        Ok(ForkResult::Child) => agent_process(report, agent),
        Ok(ForkResult::Parent { child }) => child,
        Err(err) => fail(&report, &err),
    };
    drop(report);
    // Only exec's runner (which gated the start) reads the status pipe and can continue a
    // stopped agent.
    let report_stops = gated;
    let code = supervise_as_init(agent_pid, &set, &status, report_stops)
        .unwrap_or(super::EXIT_SETUP_FAILED);
    // Nothing is left in the namespace: the runner may close the session while the
    // namespaces are torn down.
    let _ = nix::unistd::write(status.as_fd(), &[EXITED, code]);
    exit_now(code)
}

/// Reaps every process of the namespace, passes signals on to the agent's command, reports
/// its stops (or, with nobody to report to, continues it at once), and returns its status.
fn supervise_as_init(agent: Pid, set: &SigSet, keep: &OwnedFd, report_stops: bool) -> Result<u8> {
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            let _ = crate::sys::spawn::dup_onto(null.as_fd(), fd);
        }
    }
    crate::sys::spawn::close_all_above_2_except(keep.as_fd())?;
    let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    let status = report_stops.then_some(keep);
    let code = wait_for_agent(agent, &sfd, status)?;
    // Everything the command left behind dies now (kill(-1) from pid 1 reaches every
    // other process of the namespace), and is reaped.
    if has_children() {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
    while waitpid(None, None).is_ok() {}
    Ok(code)
}

/// Whether init has a child, alive or not yet reaped. Every process of the namespace
/// descends from init, and an orphan becomes init's child (or a subreaper's, itself a
/// descendant), so with no child nothing else is left in the namespace. kill(-1) looks at
/// every process of the host, which 50 runs at once made a cost of each of them.
fn has_children() -> bool {
    use nix::sys::wait::{Id, waitid};
    let flags = WaitPidFlag::WEXITED
        | WaitPidFlag::WSTOPPED
        | WaitPidFlag::WCONTINUED
        | WaitPidFlag::WNOHANG
        | WaitPidFlag::WNOWAIT;
    // ECHILD: none. Anything else, including an error, is treated as a child.
    waitid(Id::All, flags) != Err(nix::errno::Errno::ECHILD)
}

fn wait_for_agent(agent: Pid, sfd: &SignalFd, status: Option<&OwnedFd>) -> Result<u8> {
    // While the caller's shell has the terminal back: the namespace, stopped.
    let mut frozen: Option<Frozen> = None;
    loop {
        // Reap first: the agent may already be gone.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == agent => return Ok(code as u8),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                    return Ok(128u8.wrapping_add(sig as u8));
                }
                // Stopped by the freeze itself, or again while frozen: nothing new.
                Ok(WaitStatus::Stopped(pid, _)) if pid == agent && frozen.is_some() => {}
                Ok(WaitStatus::Stopped(pid, sig)) if pid == agent => match status {
                    // The runner stops like the agent and sends SIGCONT once continued.
                    Some(status) => frozen = Some(stop_the_job(status, sig)),
                    None => continue_job(agent),
                },
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let Some(info) = sfd.read_signal().context("reading signals")? else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            // The runner, in the background, met the terminal (`pty::Relay`): the whole job
            // stops, as a shell's job would.
            Ok(Signal::SIGTTIN) => {
                if let (Some(status), None) = (status, &frozen) {
                    frozen = Some(stop_the_job(status, Signal::SIGTTIN));
                }
            }
            Ok(Signal::SIGCONT) => {
                if let Some(frozen) = frozen.take() {
                    freeze::thaw(frozen, agent);
                    // A redraw: TUIs repaint on a window-size change.
                    let _ = kill(Pid::from_raw(-agent.as_raw()), Signal::SIGWINCH);
                }
            }
            Ok(sig) => {
                let _ = kill(agent, sig);
                // A stopped command would not act on it before it is continued.
                if let Some(frozen) = frozen.take() {
                    freeze::thaw(frozen, agent);
                }
            }
        }
    }
}

/// Stops every process of the namespace, then reports the stop: the runner stops only
/// once nothing of the agent runs.
fn stop_the_job(status: &OwnedFd, sig: Signal) -> Frozen {
    let (frozen, all) = freeze::freeze();
    let kind = if all { STOPPED } else { STOPPED_PARTLY };
    let _ = nix::unistd::write(status.as_fd(), &[kind, sig as u8]);
    frozen
}

/// Continues the agent's process group (its command and what runs in its foreground with
/// it, such as the children of `sh -c`), or the command alone should it have left it.
fn continue_job(agent: Pid) {
    if kill(Pid::from_raw(-agent.as_raw()), Signal::SIGCONT).is_err() {
        let _ = kill(agent, Signal::SIGCONT);
    }
}

impl Started {
    /// Reads the report pipe to its end: `Err` with the failure when the agent process
    /// could not start the command, `Ok` once it did (the exec closed the pipe).
    pub fn wait_for_start(&mut self) -> std::result::Result<(), Failure> {
        let mut data = Vec::new();
        let mut file = std::fs::File::from(self.report.try_clone().map_err(|e| Failure {
            code: super::EXIT_SETUP_FAILED,
            message: format!("report pipe: {e}"),
        })?);
        let _ = file.read_to_end(&mut data);
        match data.split_first() {
            None => Ok(()),
            Some((&code, message)) => Err(Failure {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            }),
        }
    }
}

/// The exit status of a finished child, as a shell would report it.
pub fn status_code(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some(code as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
        _ => None,
    }
}
