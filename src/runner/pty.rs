//! The terminal side of a run (docs/design.md section 4 step 4, docs/threat-model.md row 1), like
//! sudo's `use_pty`: when any standard stream is a terminal, the agent gets a fresh pseudo-terminal
//! of its own and the runner relays bytes between it and the caller's terminal, which is in raw
//! mode meanwhile (so Ctrl-C, Ctrl-Z and friends travel as bytes and the agent's line discipline
//! turns them into signals for its own foreground job). The agent never holds a descriptor of the
//! caller's terminal, so TIOCSTI and friends cannot reach it. What the agent writes passes
//! [`super::term_filter`] on its way to the caller's terminal (row 2).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::stat::{Mode, fchmod};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::{Gid, Uid, fchown, isatty};

use super::term_filter::{self, TermFilter};
use crate::sys::spawn::{set_window_size, window_size};

/// Which of stdin, stdout, stderr are terminals.
pub fn terminal_streams() -> [bool; 3] {
    [
        isatty(std::io::stdin().as_fd()).unwrap_or(false),
        isatty(std::io::stdout().as_fd()).unwrap_or(false),
        isatty(std::io::stderr().as_fd()).unwrap_or(false),
    ]
}

fn stdio(index: usize) -> BorrowedFd<'static> {
    crate::sys::spawn::std_fd(index as i32)
}

/// A pseudo-terminal for the agent.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub name: String,
}

/// Opens a pty whose slave belongs to the agent (mode 0620, group tty, as login(1) does),
/// with the caller's terminal settings and window size.
pub fn open(ttys: [bool; 3], uid: u32) -> Result<Pty> {
    let model = (0..3).find(|&i| ttys[i]).map(stdio);
    let termios = model.and_then(|fd| tcgetattr(fd).ok());
    let ws = model.and_then(window_size);
    let winsize = ws.map(|w| nix::pty::Winsize {
        ws_row: w.ws_row,
        ws_col: w.ws_col,
        ws_xpixel: w.ws_xpixel,
        ws_ypixel: w.ws_ypixel,
    });
    let pair = openpty(winsize.as_ref(), termios.as_ref()).context("opening a pseudo-terminal")?;
    let tty_gid = nix::unistd::Group::from_name("tty")
        .ok()
        .flatten()
        .map(|g| g.gid)
        .unwrap_or(Gid::from_raw(0));
    fchown(pair.slave.as_fd(), Some(Uid::from_raw(uid)), Some(tty_gid))
        .context("giving the pseudo-terminal to the agent")?;
    fchmod(pair.slave.as_fd(), Mode::from_bits_truncate(0o620)).context("chmod pty")?;
    let name = nix::unistd::ttyname(pair.slave.as_fd())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let flags = fcntl(pair.master.as_fd(), FcntlArg::F_GETFL).context("fcntl")?;
    fcntl(
        pair.master.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .context("fcntl")?;
    Ok(Pty {
        master: pair.master,
        slave: pair.slave,
        name,
    })
}

/// The caller's terminal in raw mode while the run is its foreground job; restored when
/// dropped (every return path of the runner, error or not; signals are handled by the relay
/// loop, never fatal). A job in the background never changes the settings of the shell's
/// terminal (the runner ignores SIGTTOU, so the kernel would not stop it for trying).
pub struct RawMode {
    saved: Termios,
    raw: Termios,
    /// Whether the terminal is in `raw` by this run's doing.
    applied: Cell<bool>,
}

impl RawMode {
    /// Puts stdin in raw mode when it is a terminal and the run is in the foreground (else
    /// that waits for [`RawMode::reenter`]).
    pub fn enter(ttys: [bool; 3]) -> Result<Option<RawMode>> {
        if !ttys[0] {
            return Ok(None);
        }
        let fd = std::io::stdin();
        let saved = tcgetattr(fd.as_fd()).context("reading terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let mode = RawMode {
            saved,
            raw,
            applied: Cell::new(false),
        };
        if in_foreground(fd.as_fd()) {
            tcsetattr(fd.as_fd(), SetArg::TCSADRAIN, &mode.raw).context("setting raw mode")?;
            mode.applied.set(true);
        }
        Ok(Some(mode))
    }

    /// Gives the caller's terminal its own settings back while the run is stopped.
    pub fn leave(&self) {
        if self.applied.replace(false) {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
        }
    }

    /// Raw mode again after a stop, when the run is the terminal's foreground job.
    pub fn reenter(&self) {
        let stdin = std::io::stdin();
        if in_foreground(stdin.as_fd()) {
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &self.raw);
            self.applied.set(true);
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Whether the runner's process group is the foreground job of the terminal `fd`.
fn in_foreground(fd: BorrowedFd) -> bool {
    nix::unistd::tcgetpgrp(fd).is_ok_and(|pgrp| pgrp == nix::unistd::getpgrp())
}

/// Whether a read of the terminal `fd` that failed with EIO means the run must stop as a
/// job in the background does at the terminal: the runner ignores SIGTTIN, so that the
/// kernel never stops it by itself (the agent would run on, unwatched, see `freeze`), and
/// a background read fails instead. Not for a group the kernel calls orphaned (its parent
/// is gone from the session or shares its group), which nobody could continue: there EIO
/// is the end of input, as it would be without agentuser.
fn stops_at_terminal(fd: BorrowedFd) -> bool {
    use nix::unistd::{getpgid, getppid, getsid};
    if nix::unistd::tcgetpgrp(fd).is_err() || in_foreground(fd) {
        return false;
    }
    let parent = getppid();
    let own_group = nix::unistd::getpgrp();
    getpgid(Some(parent)).is_ok_and(|group| group != own_group)
        && getsid(Some(parent)).ok() == getsid(None).ok()
}

/// Copies the caller's window size to the agent's pty (on SIGWINCH).
pub fn forward_window_size(ttys: [bool; 3], master: BorrowedFd) {
    if let Some(ws) = (0..3)
        .find(|&i| ttys[i])
        .and_then(|i| window_size(stdio(i)))
    {
        set_window_size(master, &ws);
    }
}

/// Byte relay between the caller's terminal and the pty master. The runner's event loop
/// calls `poll_fds`/`handle` around its own signal descriptor.
pub struct Relay {
    pub master: OwnedFd,
    ttys: [bool; 3],
    to_master: Vec<u8>,
    input_open: bool,
    /// Input is not read while the run stops at the terminal (see [`Relay::stop_request`]).
    input_paused: bool,
    stop_requested: bool,
    master_open: bool,
    filter: TermFilter,
    /// What the filter let through of the last read.
    filtered: Vec<u8>,
}

const BUF: usize = 64 * 1024;

impl Relay {
    pub fn new(master: OwnedFd, ttys: [bool; 3], filter: term_filter::Options) -> Relay {
        Relay {
            master,
            ttys,
            to_master: Vec::new(),
            input_open: ttys[0],
            input_paused: false,
            stop_requested: false,
            master_open: true,
            filter: TermFilter::new(filter),
            filtered: Vec::with_capacity(BUF),
        }
    }

    /// Where the agent's output goes: stdout when it is a terminal, else stderr.
    fn output(&self) -> BorrowedFd<'static> {
        if self.ttys[1] { stdio(1) } else { stdio(2) }
    }

    /// Waits for terminal input, agent output, or one of `extra` (the runner's signal and
    /// status descriptors) to be ready, and moves bytes. Returns which of `extra` are
    /// readable.
    pub fn step(&mut self, extra: [BorrowedFd; 2]) -> Result<[bool; 2]> {
        let stdin = std::io::stdin();
        let mut fds = vec![
            PollFd::new(extra[0], PollFlags::POLLIN),
            PollFd::new(extra[1], PollFlags::POLLIN),
        ];
        let mut master_events = PollFlags::empty();
        if self.master_open {
            master_events |= PollFlags::POLLIN;
        }
        if !self.to_master.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        fds.push(PollFd::new(self.master.as_fd(), master_events));
        let want_input = self.input_open && !self.input_paused && self.to_master.len() < BUF;
        if want_input {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => return Ok([false; 2]),
            r => r.context("poll")?,
        };
        let ready = |f: &PollFd| f.revents().unwrap_or(PollFlags::empty());
        let extra_ready = [!ready(&fds[0]).is_empty(), !ready(&fds[1]).is_empty()];
        let master_ready = ready(&fds[2]);
        let input_ready = want_input && !ready(&fds[3]).is_empty();
        drop(fds);
        if input_ready {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Err(Errno::EIO) if stops_at_terminal(stdin.as_fd()) => {
                    self.input_paused = true;
                    self.stop_requested = true;
                }
                Ok(0) | Err(Errno::EIO) | Err(Errno::EBADF) => self.input_open = false,
                Ok(n) => self.to_master.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                Err(e) => return Err(e).context("reading the terminal"),
            }
        }
        if master_ready.contains(PollFlags::POLLOUT) || !self.to_master.is_empty() {
            self.flush_to_master()?;
        }
        if master_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.pump_output()?;
        }
        Ok(extra_ready)
    }

    /// Whether the run, a job in the background, read the terminal and must stop (once).
    /// The terminal is not read again before [`Relay::resume_input`].
    pub fn stop_request(&mut self) -> bool {
        std::mem::take(&mut self.stop_requested)
    }

    /// The run was continued: read the terminal again.
    pub fn resume_input(&mut self) {
        self.input_paused = false;
    }

    fn flush_to_master(&mut self) -> Result<()> {
        while !self.to_master.is_empty() {
            match nix::unistd::write(self.master.as_fd(), &self.to_master) {
                Ok(n) => {
                    self.to_master.drain(..n);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => break,
                Err(Errno::EIO) => {
                    self.to_master.clear();
                    break;
                }
                Err(e) => return Err(e).context("writing to the pseudo-terminal"),
            }
        }
        Ok(())
    }

    /// Copies what the agent wrote until nothing more is ready; false once it hung up.
    fn pump_output(&mut self) -> Result<()> {
        let mut buf = [0u8; BUF];
        loop {
            match nix::unistd::read(self.master.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    self.master_open = false;
                    return Ok(());
                }
                Ok(n) => {
                    self.filtered.clear();
                    self.filter.filter(&buf[..n], &mut self.filtered);
                    write_all(self.output(), &self.filtered)?;
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading the pseudo-terminal"),
            }
        }
    }

    /// After the agent's pid namespace is gone: copy its last output.
    pub fn drain(&mut self) -> Result<()> {
        if self.master_open {
            self.pump_output()?;
        }
        Ok(())
    }
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            // The caller's terminal went away: nothing left to show output on.
            Err(Errno::EIO) | Err(Errno::EPIPE) => return Ok(()),
            Err(e) => return Err(e).context("writing to the terminal"),
        }
    }
    Ok(())
}
