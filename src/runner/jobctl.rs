//! Job control across the relay (issue 10 item 1), as sudo does with `use_pty`: the agent's
//! Ctrl-Z stops its command inside its own pty, where the caller's shell cannot see it. So
//! when init reports the command stopped, the runner gives the caller's terminal its
//! settings back and stops itself with the same signal: the caller's shell shows the job
//! stopped. On `fg` (SIGCONT, which the caller may send the root runner because it is in the
//! caller's session), the runner puts the terminal back in raw mode, passes the window size
//! on and has init continue the command, which also gets a SIGWINCH to redraw.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pty::{self, RawMode, Relay};

pub struct JobControl<'a> {
    init: Pid,
    raw: Option<&'a RawMode>,
    ttys: [bool; 3],
    /// The command is stopped and waits for the runner's SIGCONT to init.
    agent_stopped: bool,
}

impl<'a> JobControl<'a> {
    pub fn new(init: Pid, raw: Option<&'a RawMode>, ttys: [bool; 3]) -> JobControl<'a> {
        JobControl {
            init,
            raw,
            ttys,
            agent_stopped: false,
        }
    }

    /// The command stopped with `sig`: stop the runner the same way, then resume.
    pub fn agent_stopped(&mut self, sig: Signal, relay: Option<&Relay>) {
        self.agent_stopped = true;
        if let Some(raw) = self.raw {
            raw.leave();
        }
        // SIGSTOP would stop a runner nobody can continue (an orphaned process group, as
        // under `script -c`); the kernel discards SIGTSTP there and the run goes on.
        let own = match sig {
            Signal::SIGTTIN | Signal::SIGTTOU => sig,
            _ => Signal::SIGTSTP,
        };
        if let Err(err) = crate::sys::spawn::stop_self(own) {
            eprintln!("agentuser: warning: could not stop with the agent: {err:#}");
        }
        self.resume(relay);
    }

    /// The runner runs again (after its own stop, or any SIGCONT): raw mode if it is the
    /// terminal's foreground job, the current window size, and the command continued.
    pub fn resume(&mut self, relay: Option<&Relay>) {
        if let Some(raw) = self.raw {
            raw.reenter();
        }
        if let Some(relay) = relay {
            pty::forward_window_size(self.ttys, relay.master.as_fd());
        }
        if std::mem::take(&mut self.agent_stopped) {
            let _ = kill(self.init, Signal::SIGCONT);
        }
    }
}
