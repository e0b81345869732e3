//! Error kinds that decide the exit status (docs/design.md section 1).
//!
//! Everything else is an `anyhow::Error` whose context chain, printed with `{:#}`, reads
//! `what failed: why`.
#![forbid(unsafe_code)]

use std::fmt;

/// Bad input from the command line: exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds a usage error (exit 2) from a message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// A state change stopped at a safe point because of a hang-up or interrupt: the journal
/// says how far it got, and running the same command again completes it. Exit status
/// 128 + the signal number, as if the signal had ended the process.
#[derive(Debug)]
pub struct Interrupted(pub nix::sys::signal::Signal);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by {} (stopped at a safe point: run the same command again to finish)",
            self.0.as_str()
        )
    }
}

impl std::error::Error for Interrupted {}

pub fn interrupted(sig: nix::sys::signal::Signal) -> anyhow::Error {
    anyhow::Error::new(Interrupted(sig))
}

/// Fails with [`Interrupted`] when a hang-up or interrupt is pending: called by long
/// state changes at points where the journal is consistent.
pub fn check_interrupt() -> anyhow::Result<()> {
    match crate::sys::signals::pending_interrupt() {
        Some(sig) => Err(interrupted(sig)),
        None => Ok(()),
    }
}

/// Exit status for a failed command: 2 for usage errors, 128 + N for an interruption by
/// signal N, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else if let Some(Interrupted(sig)) = err.chain().find_map(|e| e.downcast_ref()) {
        128u8.saturating_add(*sig as u8)
    } else {
        1
    }
}

/// The one-line message printed for an error: the context chain joined by `: `, with any
/// embedded newline folded so that the error stays on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace(['\n', '\r'], " ")
}

/// Prints `agentuser: <message>` on stderr.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("agentuser: {}", one_line(err));
}

/// Says on stderr, in one line, what a state-changing command changed: only when stderr is
/// a terminal, so scripts see nothing.
pub fn changed(message: &str) {
    if nix::unistd::isatty(std::io::stderr()).unwrap_or(false) {
        eprintln!("agentuser: {message}");
    }
}
