//! Error kinds that decide the exit status (DESIGN.md section 1).
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

/// Exit status for a failed command: 2 for usage errors, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
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
pub fn report(err: &anyhow::Error) {
    eprintln!("agentuser: {}", one_line(err));
}
