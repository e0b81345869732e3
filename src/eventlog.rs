//! The audit trail, like sudo's: one authpriv record per state change, per `exec`/`shell`
//! and its end (status and duration), and per refused request (who asked, for what, why).
//! Never a secret value: callers pass names and paths only.
//!
//! When no syslog socket exists, glibc would drop every record without a word: the helper
//! says so instead, once per command on stderr (and `doctor` reports it).
#![forbid(unsafe_code)]

use std::sync::Once;

use crate::context::Caller;
use crate::context::Context;

/// Where syslog(3) sends records.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The warning printed when records cannot be delivered.
pub const NO_SYSLOG_WARNING: &str =
    "agentuser: warning: no syslog socket at /dev/log: this request is not logged";

/// Logs `action` on `agent` by the caller, e.g. `create`, `share /src/app rw`.
pub fn record(ctx: &Context, action: &str, agent: &str, detail: &str) {
    send(&ctx.caller, action, Some(agent), detail);
}

/// Logs a request that was not carried out, with the one-line reason.
pub fn refused(caller: &Caller, action: &str, agent: Option<&str>, err: &anyhow::Error) {
    let reason = crate::error::one_line(err).replace('"', "'");
    send(
        caller,
        action,
        agent,
        &format!("result=refused reason=\"{reason}\""),
    );
}

fn send(caller: &Caller, action: &str, agent: Option<&str>, detail: &str) {
    let mut message = format!("caller={} uid={}", caller.name, caller.uid);
    if caller.uid != caller.real_uid {
        message.push_str(&format!(" real_uid={}", caller.real_uid));
    }
    if let Some(agent) = agent {
        message.push_str(&format!(" agent={agent}"));
    }
    message.push_str(&format!(" action={action}"));
    if caller.via_sudo {
        message.push_str(" via=sudo");
    }
    if !detail.is_empty() {
        message.push_str(&format!(" {detail}"));
    }
    if !syslog_available() {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| eprintln!("{NO_SYSLOG_WARNING}"));
    }
    crate::sys::syslog::notice(&message);
}

/// Whether a syslog daemon listens on [`SYSLOG_SOCKET`] (checked once per process).
pub fn syslog_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // glibc tries a datagram socket, then a stream one.
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|socket| socket.connect(SYSLOG_SOCKET))
            .is_ok()
            || std::os::unix::net::UnixStream::connect(SYSLOG_SOCKET).is_ok()
    })
}
