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
