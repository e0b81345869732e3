//! One syslog record per state change and per `exec`: who, which agent, what. Never a
//! secret value: callers pass names and paths only.
#![forbid(unsafe_code)]

use crate::context::Context;

/// Logs `action` on `agent` by the caller, e.g. `create`, `share /src/app rw`.
pub fn record(ctx: &Context, action: &str, agent: &str, detail: &str) {
    let caller = &ctx.caller;
    let mut message = format!(
        "caller={} uid={} agent={} action={}",
        caller.name, caller.uid, agent, action
    );
    if caller.via_sudo {
        message.push_str(" via=sudo");
    }
    if !detail.is_empty() {
        message.push_str(&format!(" {detail}"));
    }
    crate::sys::syslog::notice(&message);
}
