//! The runner: `exec` and `shell` (docs/design.md section 4), and the probes `audit` runs in the
//! same view.
//!
//! Steps, each failing closed with status 125 and nothing run:
//! 1. (app.rs) caller recorded, process fully root, limits reset, no core dumps;
//! 2. agent resolved, caller authorized (root or owner), run logged, credentials synced,
//!    a killed run's shares swept and this run's repository watcher prepared ([`planted`]);
//! 3. PAM account check and session ([`pam`]);
//! 4. a pty and relay when a standard stream is a terminal ([`pty`]), else a new session;
//! 5. pid namespace, then mount/IPC/network namespaces and the view ([`tree`], [`sandbox`]);
//! 6. privilege drop and no-new-privs ([`privdrop`]);
//! 7. descriptors above 2 closed at exec, environment from the allowlist ([`env`]);
//! 8. working directory; 9. exec, wait, kill the namespace, close the session.
#![forbid(unsafe_code)]

mod environment;
mod freeze;
mod jobctl;
mod launch;
mod missing;
mod pam;
pub(crate) mod planted;
mod privdrop;
mod pty;
mod sandbox;
mod term_filter;
mod tree;

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;

use crate::context::Context;
use crate::error::{print_error, usage};
use crate::record::Network;
use crate::registry::AgentRecord;
use launch::{Agent, Streams};

/// Exit status when agentuser fails before running the command.
pub const EXIT_SETUP_FAILED: u8 = 125;

/// What to run: a command, or the agent's login shell. `app` builds it from the command
/// line; nothing here knows clap.
pub struct Request<'a> {
    pub name: &'a str,
    pub cwd: Option<&'a PathBuf>,
    pub env: &'a [String],
    pub network: Option<Network>,
    /// Pass OSC 52 clipboard writes to the caller's terminal.
    pub clipboard_write: bool,
    pub publish: &'a [u16],
    /// None: the login shell.
    pub command: Option<&'a [OsString]>,
}

/// `exec` and `shell`: runs the request as the agent and returns the exit status.
pub fn exec(ctx: &Context, req: &Request) -> u8 {
    logged(ctx, req)
}

/// Runs the request and logs how it ended: refused with the reason, or the command's exit
/// status and the run's duration (docs/threat-model.md row 26).
fn logged(ctx: &Context, req: &Request) -> u8 {
    let action = if req.command.is_some() {
        "exec"
    } else {
        "shell"
    };
    let started = std::time::Instant::now();
    let result = run(ctx, req);
    match &result {
        Ok(code) => crate::eventlog::record(
            ctx,
            &format!("{action}-end"),
            req.name,
            &format!(
                "status={code} duration={:.3}s",
                started.elapsed().as_secs_f64()
            ),
        ),
        Err(err) => crate::eventlog::refused(&ctx.caller, action, Some(req.name), err),
    }
    finish(result)
}

/// Runs a fixed command of agentuser's own (the git remote helper's `git upload-pack`) as
/// the agent, exactly as `exec` would, without a network.
pub fn serve(ctx: &Context, name: &str, command: &[OsString]) -> u8 {
    finish(run(
        ctx,
        &Request {
            name,
            cwd: None,
            env: &[],
            network: Some(Network::None),
            command: Some(command),
            clipboard_write: false,
            publish: &[],
        },
    ))
}

fn finish(result: Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            if crate::error::exit_code(&err) == 2 {
                2
            } else {
                EXIT_SETUP_FAILED
            }
        }
    }
}

fn run(ctx: &Context, req: &Request) -> Result<u8> {
    let mut prepared = prepare(ctx, req)?;
    let ttys = pty::terminal_streams();
    let pty = ttys
        .iter()
        .any(|&t| t)
        .then(|| pty::open(ttys, prepared.record.uid))
        .transpose()?;
    let (master, slave, tty_name) = match pty {
        Some(p) => (Some(p.master), Some(p.slave), Some(p.name)),
        None => (None, None, None),
    };
    let agent = agent_for(&prepared.record, req, slave.as_ref(), ttys)?;
    // Signals wait in a signalfd from here on: none can kill the runner half way, and raw
    // mode is always restored.
    let signals = tree::runner_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("sigprocmask")?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let tty = slave.as_ref().map(|slave| slave.as_fd());
    let mut running = match start(ctx, &mut prepared, &agent, tty, tty_name.as_deref(), ttys)? {
        Ok(running) => running,
        Err(code) => return Ok(code),
    };
    // The agent's copies of the slave are the only ones left: its hang-up ends the relay.
    drop(agent);
    drop(slave);
    let filter = term_filter::Options {
        clipboard_write: req.clipboard_write,
        eight_bit: term_filter::eight_bit_locale(caller_locale(ctx)),
    };
    let mut relay = master.map(|m| pty::Relay::new(m, ttys, filter));
    let start = running.tree.wait_for_start();
    if let Some(guard) = running.guard.as_mut() {
        // The agent started: init's mount namespace is the view's by now.
        guard.hold_view(running.tree.child);
    }
    let status = supervise(
        &running.tree,
        &sfd,
        relay.as_mut(),
        Terminal {
            ttys,
            raw: running.raw.as_ref(),
        },
        running.guard.as_ref(),
    );
    tear_down(ctx, prepared, running, start, status)
}

/// What a run needs before anything starts: the agent's record, the view's plan, the git
/// directories to initialise, the command, the policy point (started), and the hint for a
/// command that is not found.
struct Prepared {
    record: AgentRecord,
    plan: sandbox::ViewPlan,
    git_init: Vec<crate::git::init::Job>,
    command: launch::Command,
    point: Option<crate::network::PolicyPoint>,
    not_found_hint: Option<String>,
    /// Run marker slots the recovery found free, for the guard.
    free_slots: planted::FreeSlots,
    /// `none` mode: the network namespace slot this run holds until it ends.
    _kept_net: Option<crate::network::pool::Lease>,
}

/// Phase 1: authorize, log, sync credentials, recover an interrupted run, plan the view,
/// prepare git directories, start the policy point, build the command. All of it while the
/// runner is single-threaded.
fn prepare(ctx: &Context, req: &Request) -> Result<Prepared> {
    let mut record = crate::policy::ready_agent(ctx, req.name)?;
    crate::share::check_complete(&record)?;
    let command_name = match req.command {
        Some(cmd) => cmd[0].to_string_lossy().into_owned(),
        None => "(login shell)".into(),
    };
    let action = if req.command.is_some() {
        "exec"
    } else {
        "shell"
    };
    crate::eventlog::record(
        ctx,
        action,
        &record.name,
        &format!("command={command_name:?}"),
    );
    let mut extra_env = explicit_env(req.env)?;
    crate::creds::sync_before_exec(ctx, &mut record)?;
    // Before the view is planned: nothing a killed run left may pass for the owner's.
    let free_slots = planted::recover(ctx, &record)?;
    let network = req.network.or(record.network).unwrap_or(ctx.config.network);
    if !req.publish.is_empty() && network != Network::Allowlist {
        return Err(usage("--publish needs the allowlist network mode"));
    }
    // Started as early as it can be: it builds the agent's network namespace while the rest
    // of this, the view and the PAM session are made (init waits for the namespace). Killed
    // when dropped, so on every early return.
    let started = match network {
        Network::Allowlist => Some(crate::network::start(ctx, &record, req.publish)?),
        _ => None,
    };
    // The shares' .git entries, once for the whole run, from their indexes.
    let contents = crate::share::Contents::for_run(ctx, &record);
    let mut plan = sandbox::plan(ctx, &record, network, &contents)?;
    // Before any thread starts (gitfiles are read with the owner's rights).
    let git = crate::git::prepare(ctx, &record, &contents)?;
    plan.mounts.extend(git.mounts);
    plan.warnings.extend(git.warnings);
    // Also before any thread: checked with the caller's rights, printed only on "not found".
    let not_found_hint = req
        .command
        .and_then(|cmd| missing::hint(ctx, &record, &cmd[0]));
    let kept_net = keep_network(ctx, &record, network, &mut plan);
    let point = match started {
        Some((point, channel)) => {
            plan.join_net = Some(std::sync::Arc::new(channel));
            extra_env.splice(0..0, crate::network::agent_env());
            let (mounts, env) = point.trust();
            plan.mounts.extend(mounts);
            extra_env.splice(0..0, env);
            Some(point)
        }
        None => None,
    };
    for warning in &plan.warnings {
        eprintln!("agentuser: warning: {warning}");
    }
    let shell = login_shell(ctx, &record)?;
    let command = build_command(ctx, &record, req, &shell, &extra_env, &contents)?;
    Ok(Prepared {
        record,
        plan,
        git_init: git.init,
        command,
        point,
        not_found_hint,
        free_slots,
        _kept_net: kept_net,
    })
}

/// `none` mode: a network namespace kept for the agent's runs (`network::pool`), for init
/// to join. On any failure the run makes a namespace of its own, as it would without.
fn keep_network(
    ctx: &Context,
    record: &AgentRecord,
    network: Network,
    plan: &mut sandbox::ViewPlan,
) -> Option<crate::network::pool::Lease> {
    if network != Network::None {
        return None;
    }
    let lease = crate::network::pool::lease(ctx.registry.root(), &record.name).ok()??;
    plan.kept_net = Some(std::sync::Arc::new(lease.namespace.try_clone().ok()?));
    Some(lease)
}

/// The agent's login shell, after checking that its account is still the recorded one.
fn login_shell(ctx: &Context, record: &AgentRecord) -> Result<PathBuf> {
    let account = crate::account::user_by_name(&record.user)?.ok_or_else(|| {
        anyhow!(
            "agent '{}': account {} does not exist",
            record.name,
            record.user
        )
    })?;
    if account.uid.as_raw() != record.uid || account.gid.as_raw() != record.gid {
        bail!(
            "agent '{}': account {} has uid/gid {}/{}, the record says {}/{}",
            record.name,
            record.user,
            account.uid,
            account.gid,
            record.uid,
            record.gid
        );
    }
    Ok(if account.shell.as_os_str().is_empty() {
        ctx.config.shell.clone()
    } else {
        account.shell.clone()
    })
}

/// Who the agent process becomes and where it starts.
fn agent_for<'a>(
    record: &AgentRecord,
    req: &Request,
    slave: Option<&'a std::os::fd::OwnedFd>,
    ttys: [bool; 3],
) -> Result<Agent<'a>> {
    Ok(Agent {
        uid: record.uid,
        gid: record.gid,
        groups: privdrop::groups_of(&record.user, record.gid)?,
        home: record.home.clone(),
        // Relative to the caller's directory, then looked up in the view as the agent.
        cwd: req
            .cwd
            .map(std::path::absolute)
            .transpose()
            .context("--cwd")?
            .or_else(|| record.cwd.clone()),
        cwd_source: if req.cwd.is_some() {
            "--cwd"
        } else {
            "the agent's cwd setting"
        },
        preferred_cwd: caller_dir_in_share(record),
        scope_sockets: true,
        streams: match slave {
            Some(slave) => Streams::Pty {
                slave: slave.as_fd(),
                ttys,
            },
            None => Streams::Inherit,
        },
    })
}

/// A started run: the process tree, the PAM session, the caller's terminal in raw mode and
/// the planted-repository guard.
struct Running<'a> {
    tree: tree::Started,
    pam: pam::PamSession,
    raw: Option<pty::RawMode>,
    guard: Option<planted::Guard<'a>>,
}

/// Phase 2: the repository guard, the process tree (init builds the view while the PAM
/// session opens), then the gate. `Err(code)` when init reported a failure before the gate.
fn start<'a>(
    ctx: &'a Context,
    prepared: &mut Prepared,
    agent: &Agent,
    tty: Option<std::os::fd::BorrowedFd>,
    tty_name: Option<&str>,
    ttys: [bool; 3],
) -> Result<std::result::Result<Running<'a>, u8>> {
    let record = &prepared.record;
    // Planted repositories are watched for from before the agent exists to after it is gone.
    let known = prepared.plan.known_repositories.iter().copied().collect();
    // Dropped, it handles the last events and tells the owner: on every path, after init
    // has been reaped.
    let free_slots = std::mem::take(&mut prepared.free_slots);
    let mut guard = planted::Guard::begin(ctx, record, known, free_slots)?;
    let mut started = tree::start(Some(&prepared.plan), true, tty, || {
        agent.prepare()?;
        crate::git::init::run(&prepared.git_init);
        launch::exec(&prepared.command)
    })?;
    let gate = started.gate.take().context("no gate")?;
    let opened = pam::PamSession::open(&record.user, &ctx.caller.name, tty_name)
        .and_then(|pam| Ok((pam, pty::RawMode::enter(ttys)?)));
    let (pam, raw) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            // Closing the gate makes init leave without running anything.
            drop(gate);
            let _ = waitpid(started.child, None);
            return Err(err);
        }
    };
    if let Some(guard) = guard.as_mut() {
        // The watcher's thread starts after the PAM session opened (loading its modules maps
        // and protects memory: with a second thread alive, each change would shoot down
        // another CPU's TLB), and before the gate, so before the agent exists: its group
        // has queued every event since `Guard::begin`.
        guard.watch(started.child);
        // Init cannot have left before its gate opens (see planted::Guard::hold_view).
        guard.hold_view(started.child);
    }
    if let Err(err) = tree::open_gate(gate) {
        let _ = kill(started.child, Signal::SIGKILL);
        let _ = waitpid(started.child, None);
        drop(raw);
        let _ = pam.close();
        // A closed gate (EPIPE) means init gave up before it (building the view, say): its
        // report says why, which is what the caller needs to read.
        if let Err(failure) = started.wait_for_start() {
            report_failure(&failure, prepared.not_found_hint.as_deref());
            return Ok(Err(failure.code));
        }
        return Err(err);
    }
    Ok(Ok(Running {
        tree: started,
        pam,
        raw,
        guard,
    }))
}

/// Phase 4 (after `supervise`): restore the terminal, close the PAM session, reap init,
/// let the guard and the policy point report, and return the command's status.
fn tear_down(
    ctx: &Context,
    prepared: Prepared,
    running: Running<'_>,
    start: std::result::Result<(), tree::Failure>,
    status: Result<u8>,
) -> Result<u8> {
    let Running {
        tree,
        pam,
        raw,
        guard,
    } = running;
    drop(raw);
    if let (Ok(_), Some(point)) = (&status, &prepared.point) {
        // The command's status means the namespace is empty: no process of the agent is
        // left to use the network. The policy point dies meanwhile; `finish` reaps it.
        point.kill();
    }
    // init is gone or going: reap it. Then no process of the agent is left, and its last
    // events are queued for the guard.
    let closed = if guard.is_some() {
        // The watcher's thread must be gone before the session closes (unloading its
        // modules). Init's exit does not wait for the view's teardown: the guard holds
        // the view (`Guard::hold_view`).
        let _ = waitpid(tree.child, None);
        drop(guard);
        pam.close()
    } else {
        // Closing the session first overlaps init's exit, which tears its namespaces down.
        let closed = pam.close();
        let _ = waitpid(tree.child, None);
        closed
    };
    // After the terminal is restored: what the policy point refused.
    for line in prepared.point.map(|p| p.finish(ctx)).unwrap_or_default() {
        eprintln!("{line}");
    }
    if let Err(failure) = start {
        report_failure(&failure, prepared.not_found_hint.as_deref());
        return Ok(failure.code);
    }
    let code = status?;
    if let Err(err) = closed {
        print_error(&err);
    }
    Ok(code)
}

/// The failure before the command ran, and for "not found" why the caller may still have it.
fn report_failure(failure: &tree::Failure, not_found_hint: Option<&str>) {
    eprintln!("agentuser: {failure}");
    if let (127, Some(hint)) = (failure.code, not_found_hint) {
        eprintln!("agentuser: {hint}");
    }
}

/// The caller's terminal: which of stdin, stdout and stderr are one, and its raw mode.
struct Terminal<'a> {
    ttys: [bool; 3],
    raw: Option<&'a pty::RawMode>,
}

/// Relays the terminal and passes signals on until init reports the command's status
/// (the namespace is empty by then) or dies. When the command stops, the runner stops too
/// ([`jobctl`]), once every process of the agent is stopped and the watcher has handled
/// what they did (`freeze`); so does a run in the background that reads the terminal.
fn supervise(
    started: &tree::Started,
    sfd: &SignalFd,
    mut relay: Option<&mut pty::Relay>,
    terminal: Terminal,
    guard: Option<&planted::Guard>,
) -> Result<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let child = started.child;
    let ttys = terminal.ttys;
    let mut jobs = jobctl::JobControl::new(child, terminal.raw, ttys);
    loop {
        let [signal_ready, status_ready] = match relay.as_deref_mut() {
            Some(relay) => relay.step([sfd.as_fd(), started.status.as_fd()])?,
            None => {
                let mut fds = [
                    PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(started.status.as_fd(), PollFlags::POLLIN),
                ];
                let _ = poll(&mut fds, PollTimeout::NONE);
                let ready = |f: &PollFd| !f.revents().unwrap_or(PollFlags::empty()).is_empty();
                [ready(&fds[0]), ready(&fds[1])]
            }
        };
        if relay
            .as_deref_mut()
            .is_some_and(|relay| relay.stop_request())
        {
            // Init stops the agent's processes, then reports the stop like the command's.
            let _ = kill(child, Signal::SIGTTIN);
        }
        if status_ready {
            match read_report(started)? {
                tree::Report::Stopped(sig, all) => {
                    if !all {
                        eprintln!("agentuser: warning: a process of the agent did not stop");
                    }
                    if let Some(guard) = guard {
                        guard.settle();
                    }
                    jobs.agent_stopped(sig, relay.as_deref());
                    if let Some(relay) = relay.as_deref_mut() {
                        relay.resume_input();
                    }
                }
                tree::Report::Exited(code) => {
                    if let Some(relay) = relay.as_deref_mut() {
                        relay.drain()?;
                    }
                    return Ok(code);
                }
            }
        }
        if signal_ready {
            handle_signals(sfd, child, &mut jobs, relay.as_deref_mut(), ttys);
        }
    }
}

/// The runner's signals: SIGCONT continues the run, SIGWINCH passes the window size on, the
/// others go to the agent's command.
fn handle_signals(
    sfd: &SignalFd,
    child: nix::unistd::Pid,
    jobs: &mut jobctl::JobControl,
    mut relay: Option<&mut pty::Relay>,
    ttys: [bool; 3],
) {
    while let Ok(Some(info)) = sfd.read_signal() {
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGCONT => {
                jobs.resume(relay.as_deref());
                if let Some(relay) = relay.as_deref_mut() {
                    relay.resume_input();
                }
            }
            Signal::SIGWINCH => {
                if let Some(relay) = relay.as_deref() {
                    pty::forward_window_size(ttys, relay.master.as_fd());
                }
            }
            other => {
                let _ = kill(child, other);
            }
        }
    }
}

/// The next report of init; when init died without one, its own status as the command's.
fn read_report(started: &tree::Started) -> Result<tree::Report> {
    let mut message = [0u8; 2];
    let mut got = 0;
    while got < message.len() {
        match nix::unistd::read(started.status.as_fd(), &mut message[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    if let Some(report) = (got == 2).then(|| tree::Report::decode(message)).flatten() {
        return Ok(report);
    }
    loop {
        match waitpid(started.child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(status) => {
                let code = tree::status_code(status).unwrap_or(EXIT_SETUP_FAILED);
                return Ok(tree::Report::Exited(code));
            }
            Err(e) => return Err(e).context("waiting for the agent"),
        }
    }
}

/// Parses the `--env VAR=VALUE` assignments (they come last, so they win).
fn explicit_env(assignments: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    assignments
        .iter()
        .map(|a| environment::parse_assignment(a))
        .collect()
}

fn build_command(
    ctx: &Context,
    record: &AgentRecord,
    req: &Request,
    shell: &std::path::Path,
    explicit: &[(String, Vec<u8>)],
    contents: &crate::share::Contents,
) -> Result<launch::Command> {
    // The agent's settings first: what agentuser sets itself comes after them and wins.
    let mut extra: Vec<(String, Vec<u8>)> = record
        .env
        .iter()
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    extra.extend(
        crate::git::agent_env(ctx, record, contents)
            .into_iter()
            .map(|(n, v)| (n, v.into_bytes())),
    );
    extra.extend(
        crate::creds::env_vars(ctx, record)?
            .into_iter()
            .map(|(n, v)| (n, v.into_bytes())),
    );
    extra.extend(explicit.iter().cloned());
    let path = environment::agent_path(record.home.as_os_str(), &ctx.config.path);
    let environment = environment::build(
        &environment::Identity {
            home: record.home.as_os_str(),
            user: &record.user,
            shell: shell.as_os_str(),
            path: &path,
        },
        &ctx.caller_env,
        &ctx.config.env_allowlist,
        &extra,
    );
    let cstring = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| usage("the command contains a NUL byte"))
    };
    let (program, argv) = match req.command {
        Some(cmd) => (
            cstring(&cmd[0])?,
            cmd.iter().map(|a| cstring(a)).collect::<Result<Vec<_>>>()?,
        ),
        None => {
            // A login shell: argv[0] is "-" and the shell's base name.
            let base = shell.file_name().unwrap_or(shell.as_os_str());
            let mut argv0 = OsString::from("-");
            argv0.push(base);
            (cstring(shell.as_os_str())?, vec![cstring(&argv0)?])
        }
    };
    Ok(launch::Command {
        program,
        argv,
        envp: environment.to_cstrings()?,
        path,
    })
}

/// The caller's locale for character classification: LC_ALL, LC_CTYPE, LANG, first set.
fn caller_locale(ctx: &Context) -> Option<&str> {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .filter_map(|name| ctx.caller_env.get(name).and_then(OsStr::to_str))
        .find(|value| !value.is_empty())
}

/// The caller's working directory when it lies inside one of the agent's shares.
fn caller_dir_in_share(record: &AgentRecord) -> Option<PathBuf> {
    let dir = std::env::current_dir().ok()?;
    record
        .shares
        .iter()
        .any(|s| dir.starts_with(&s.path))
        .then_some(dir)
}

/// Runs `probe` in a child process as the agent, inside the same view `exec` builds (with
/// `network`), without a PAM session or a pty. Returns the probe's exit status and what it
/// wrote to its standard output. Used by `audit` so the sandbox logic exists once.
pub fn run_in_view(
    ctx: &Context,
    record: &AgentRecord,
    network: Network,
    probe: impl FnOnce() -> u8,
) -> Result<(u8, Vec<u8>)> {
    let contents = crate::share::Contents::of(ctx, record);
    let plan = sandbox::plan(ctx, record, network, &contents)?;
    run_probe(record, Some(&plan), probe)
}

/// Like [`run_in_view`] but with the plain uid switch only (the host's view, no namespaces),
/// so `audit` can show what the namespaces add.
pub fn run_as_agent_in_host_view(
    record: &AgentRecord,
    probe: impl FnOnce() -> u8,
) -> Result<(u8, Vec<u8>)> {
    run_probe(record, None, probe)
}

fn run_probe(
    record: &AgentRecord,
    plan: Option<&sandbox::ViewPlan>,
    probe: impl FnOnce() -> u8,
) -> Result<(u8, Vec<u8>)> {
    // The host view is the plain uid switch: no Landlock either.
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let agent = Agent {
        uid: record.uid,
        gid: record.gid,
        groups: privdrop::groups_of(&record.user, record.gid)?,
        home: record.home.clone(),
        cwd: None,
        cwd_source: "--cwd",
        preferred_cwd: None,
        scope_sockets: plan.is_some(),
        streams: Streams::Capture {
            stdout: out_w.as_fd(),
        },
    };
    let mut started = tree::start(plan, false, None, || {
        agent.prepare()?;
        crate::sys::spawn::close_from(3)?;
        let code = probe();
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::sys::spawn::exit_now(code)
    })?;
    drop(agent);
    drop(out_w);
    let start = started.wait_for_start();
    let mut output = Vec::new();
    let read = std::fs::File::from(out_r).read_to_end(&mut output);
    let status = loop {
        match waitpid(started.child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.context("waiting for the probe")?,
        }
    };
    if let Err(failure) = start {
        bail!("running as agent '{}': {failure}", record.name);
    }
    read.context("reading the probe's output")?;
    let code = tree::status_code(status).unwrap_or(EXIT_SETUP_FAILED);
    Ok((code, output))
}
