//! The runner: `exec` and `shell` (DESIGN.md section 4). Placeholder until the runner work
//! lands.
#![forbid(unsafe_code)]

use crate::cli::{ExecArgs, ShellArgs};
use crate::context::Context;
use crate::error::{not_implemented, report};

/// Exit status when agentuser fails before running the command.
pub const EXIT_SETUP_FAILED: u8 = 125;

pub fn exec(_ctx: &Context, _args: &ExecArgs) -> u8 {
    report(&not_implemented("exec"));
    1
}

pub fn shell(_ctx: &Context, _args: &ShellArgs) -> u8 {
    report(&not_implemented("shell"));
    1
}

/// Runs `probe` in a child process as the agent, inside the same view `exec` builds (with
/// `network`), without a PAM session or a pty. Returns the probe's exit status and what it
/// wrote to its standard output. Used by `audit` so the sandbox logic exists once.
pub fn run_in_view(
    _ctx: &Context,
    _record: &crate::registry::AgentRecord,
    _network: crate::cli::Network,
    _probe: impl FnOnce() -> u8,
) -> anyhow::Result<(u8, Vec<u8>)> {
    Err(not_implemented("running in the agent's view"))
}

/// Like [`run_in_view`] but with the plain uid switch only (the host's view, no namespaces),
/// so `audit` can show what the namespaces add.
pub fn run_as_agent_in_host_view(
    _ctx: &Context,
    _record: &crate::registry::AgentRecord,
    _probe: impl FnOnce() -> u8,
) -> anyhow::Result<(u8, Vec<u8>)> {
    Err(not_implemented("running as the agent"))
}
