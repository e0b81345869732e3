//! Stopping the whole agent with its command (docs/threat-model.md row 23). When the command
//! stops, the runner stops with it and the caller's shell gets the terminal back; so does
//! the repository watcher, a thread of the runner. Whatever the agent started in the
//! background must not run on meanwhile, unwatched: init stops every process of the pid
//! namespace, waits until each of them really is stopped (a stop takes effect when a process
//! next returns to user space), and only then tells the runner. On `fg` it continues them.
//!
//! Processes the agent had stopped itself stay stopped; the command's own process group is
//! continued as a shell's `fg` would.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process may take to stop (one in uninterruptible sleep, say) before init
/// reports the stop anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// The pid namespace, stopped by [`freeze`].
#[derive(Debug)]
pub struct Frozen {
    /// Processes that were stopped already, which [`thaw`] leaves stopped.
    stopped_before: Vec<i32>,
}

/// Stops every process of init's pid namespace (except init) and waits until each is.
/// Returns false as the second value when one was still not stopped at the deadline.
pub fn freeze() -> (Frozen, bool) {
    let stopped_before = processes()
        .into_iter()
        .filter(|&pid| is_stopped(pid))
        .collect();
    // From pid 1, kill(-1) reaches every other process of the namespace and nothing else. A
    // process forking meanwhile has its fork restarted after the stop, so none escapes.
    let _ = kill(Pid::from_raw(-1), Signal::SIGSTOP);
    let deadline = Instant::now() + STOP_DEADLINE;
    let all = loop {
        if processes().into_iter().all(is_stopped) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    (Frozen { stopped_before }, all)
}

/// Continues what [`freeze`] stopped, and the command's process group `agent`.
pub fn thaw(frozen: Frozen, agent: Pid) {
    for pid in processes() {
        if !frozen.stopped_before.contains(&pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
    if kill(Pid::from_raw(-agent.as_raw()), Signal::SIGCONT).is_err() {
        let _ = kill(agent, Signal::SIGCONT);
    }
}

/// Every process of the pid namespace of init's `/proc`, except init.
fn processes() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != 1)
        .collect()
}

/// Whether every thread of `pid` is stopped, traced, dead or gone.
fn is_stopped(pid: i32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    threads.filter_map(|t| t.ok()).all(|thread| {
        std::fs::read(thread.path().join("stat")).map_or(true, |stat| state_is_stopped(&stat))
    })
}

/// The state field of a `/proc/PID/stat` line says stopped, traced, zombie or dead. The
/// command name before it may hold anything, `)` included: the state follows the last `)`.
fn state_is_stopped(stat: &[u8]) -> bool {
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    matches!(stat.get(close + 2), Some(b'T' | b't' | b'Z' | b'X' | b'x'))
}

#[cfg(test)]
mod tests {
    use super::state_is_stopped;

    #[test]
    fn the_state_is_read_after_the_last_parenthesis() {
        assert!(state_is_stopped(b"42 (sleep) T 1 42 42 0"));
        assert!(state_is_stopped(b"42 (a) R (b) t 1"));
        assert!(state_is_stopped(b"42 (x) Z 1"));
        assert!(!state_is_stopped(b"42 (a) T) S 1 42"));
        assert!(!state_is_stopped(b"42 (sh) R 1"));
        assert!(!state_is_stopped(b"42 (sh) D 1"));
        assert!(!state_is_stopped(b"garbage"));
    }
}
