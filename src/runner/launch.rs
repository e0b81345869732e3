//! The agent process, between fork and exec (docs/design.md section 4 steps 6 to 9): standard
//! streams, new session, privilege drop, working directory, descriptors, exec.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::unistd::{execve, setsid};

use super::privdrop;
use super::tree::Failure;
use crate::sys::spawn::{cloexec_from, dup_onto, join_new_session_keyring, reset_signals};

/// How the agent's standard streams are set up.
pub enum Streams<'a> {
    /// The caller's own descriptors, passed through untouched (no terminal among them).
    Inherit,
    /// The pty slave on every stream that is a terminal; the others passed through.
    Pty {
        slave: BorrowedFd<'a>,
        ttys: [bool; 3],
    },
    /// stdout into a pipe, stdin from /dev/null, stderr kept unless it is a terminal.
    Capture { stdout: BorrowedFd<'a> },
}

pub struct Agent<'a> {
    pub uid: u32,
    pub gid: u32,
    /// The account's groups from the group database (its own group first).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    /// An explicit `--cwd` or the agent's cwd setting: failing to enter it fails the run.
    pub cwd: Option<PathBuf>,
    /// Where `cwd` came from, for the error.
    pub cwd_source: &'static str,
    /// The caller's directory when it lies in a share: tried before the home.
    pub preferred_cwd: Option<PathBuf>,
    pub streams: Streams<'a>,
    /// Confine abstract unix sockets to the run with Landlock (every run in the view).
    pub scope_sockets: bool,
}

impl Agent<'_> {
    /// Everything up to the point where the agent's code runs.
    pub fn prepare(&self) -> Result<()> {
        match &self.streams {
            Streams::Pty { slave, .. } => join_foreground(*slave)?,
            _ => {
                setsid().context("setsid")?;
            }
        }
        reset_signals()?;
        self.set_streams()?;
        privdrop::drop_to(self.uid, self.gid, &self.groups)?;
        // As the agent: a keyring of its own, none of the caller's (or root's) keys.
        join_new_session_keyring()?;
        if self.scope_sockets {
            scope_abstract_sockets()?;
        }
        self.enter_directory()?;
        Ok(())
    }

    fn set_streams(&self) -> Result<()> {
        match &self.streams {
            Streams::Inherit => {}
            Streams::Pty { slave, ttys } => {
                for fd in (0..3).filter(|&i| ttys[i as usize]) {
                    dup_onto(*slave, fd)?;
                }
            }
            Streams::Capture { stdout } => {
                let null = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .context("/dev/null")?;
                dup_onto(null.as_fd(), 0)?;
                dup_onto(*stdout, 1)?;
                if nix::unistd::isatty(std::io::stderr()).unwrap_or(true) {
                    dup_onto(null.as_fd(), 2)?;
                }
            }
        }
        Ok(())
    }

    /// As the agent, so only directories it may enter can be entered; the view decides
    /// what exists.
    fn enter_directory(&self) -> Result<()> {
        if let Some(dir) = &self.cwd {
            return std::env::set_current_dir(dir).with_context(|| {
                format!(
                    "{} {}: not accessible in the agent's view",
                    self.cwd_source,
                    dir.display()
                )
            });
        }
        if let Some(dir) = &self.preferred_cwd {
            if std::env::set_current_dir(dir).is_ok() {
                return Ok(());
            }
        }
        std::env::set_current_dir(&self.home)
            .with_context(|| format!("entering the home {}", self.home.display()))
    }
}

/// Becomes a process group of its own in the foreground of `tty`, the controlling terminal
/// of init's session (see `tree::start`). SIGTTOU is blocked meanwhile: a background group
/// may then take the foreground.
fn join_foreground(tty: BorrowedFd) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    use nix::unistd::{Pid, getpgrp, setpgid, tcsetpgrp};
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("setpgid")?;
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut mask)).context("sigprocmask")?;
    let joined = tcsetpgrp(tty, getpgrp()).context("taking the terminal's foreground");
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None).context("sigprocmask")?;
    joined
}

/// Landlock abstract-unix-socket scoping (ABI 6, Linux 6.12+): the agent can connect only
/// to abstract sockets created inside its own run, not to the host's (X11, D-Bus shims,
/// other users' tools; docs/threat-model.md row 7), even with `--network host`. Best effort: on
/// older kernels the namespaces are the only layer.
fn scope_abstract_sockets() -> Result<()> {
    use landlock::{CompatLevel, Compatible, Ruleset, RulesetAttr, Scope};
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::AbstractUnixSocket)
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map(drop)
        .context("Landlock abstract-socket scoping")
}

/// What to exec: the program (found on `path` unless it contains a '/'), argv, envp.
pub struct Command {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub path: String,
}

/// Marks every descriptor above 2 close-on-exec and executes the command. Returns only
/// on failure: 127 when not found, 126 when found but not executable.
pub fn exec(cmd: &Command) -> Result<()> {
    cloexec_from(3)?;
    let name = cmd.program.as_bytes();
    let shown = String::from_utf8_lossy(name).into_owned();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![cmd.program.clone()]
    } else {
        cmd.path
            .split(':')
            .filter(|d| !d.is_empty())
            .filter_map(|d| {
                let mut p = Path::new(d).as_os_str().as_bytes().to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                CString::new(p).ok()
            })
            .collect()
    };
    let mut seen = Errno::ENOENT;
    for candidate in &candidates {
        let Err(e) = execve(candidate, &cmd.argv, &cmd.envp);
        match e {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => seen = Errno::EACCES,
            other => {
                seen = other;
                break;
            }
        }
    }
    let code = if seen == Errno::ENOENT { 127 } else { 126 };
    let why = if code == 127 && !name.contains(&b'/') {
        "command not found".to_owned()
    } else {
        std::io::Error::from(seen).to_string()
    };
    Err(anyhow!(Failure {
        code,
        message: format!("{shown}: {why}"),
    }))
}
