//! Why a command the agent cannot find may still exist for the caller: a path in the
//! caller's home (`~/.opencode/bin/opencode`), or a name found on the caller's PATH there.
//! The agent's view has no homes, so it is "not found" there; the hint says why and how to
//! make it available.
//!
//! Existence is checked with the caller's own rights (never root's for a non-root caller),
//! so the hint reveals nothing the caller could not see anyway. It is worked out before the
//! run starts (the process is still single-threaded, as switching the effective ids needs)
//! and printed only when the command was not found.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::registry::AgentRecord;
use crate::share::printable;
use crate::sys::ids::{Identity, with_identity};

/// Trees the agent's view hides or replaces, with why, for paths outside the caller's home.
const HIDDEN: [(&str, &str); 6] = [
    ("/home", "homes are not in the agent's view"),
    ("/root", "homes are not in the agent's view"),
    (
        "/run/user",
        "runtime directories are not in the agent's view",
    ),
    ("/tmp", "/tmp is private and empty at every run"),
    ("/var/tmp", "/var/tmp is private and empty at every run"),
    ("/dev/shm", "/dev/shm is private and empty at every run"),
];

/// The hint for `program` when the agent does not find it; `None` when it does not exist
/// for the caller either, or lies where the agent sees it.
pub fn hint(ctx: &Context, record: &AgentRecord, program: &OsStr) -> Option<String> {
    let who = ctx.caller.path_rights();
    let bare = !program.as_bytes().contains(&b'/');
    let found = if bare {
        on_caller_path(ctx, &who, program)?
    } else {
        let path = std::path::absolute(Path::new(program)).ok()?;
        exists_for(&who, &path).then_some(path)?
    };
    if record.shares.iter().any(|s| found.starts_with(&s.path)) {
        return None;
    }
    let shown = printable(&found);
    let dir = found.parent().map(printable).unwrap_or_default();
    let how = format!(
        "share its directory read-only ('agentuser share {} {dir} --ro') and run it by that path, \
         or install it for the agent (its ~/.local/bin is on its PATH)",
        record.name
    );
    let home = crate::account::home_of(ctx.caller.uid).filter(|h| h != Path::new("/"));
    let why = match home {
        Some(home) if found.starts_with(&home) => format!(
            "it is in your home ({}), which the agent cannot see",
            printable(&home)
        ),
        _ => HIDDEN
            .iter()
            .find(|(root, _)| found.starts_with(root))?
            .1
            .to_owned(),
    };
    Some(if bare {
        format!(
            "{}: found on your PATH at {shown}, but {why}: {how}",
            program.to_string_lossy().escape_default()
        )
    } else {
        format!("{shown} exists for you, but {why}: {how}")
    })
}

/// The first regular file named `program` in an absolute directory of the caller's PATH.
fn on_caller_path(ctx: &Context, who: &Identity, program: &OsStr) -> Option<PathBuf> {
    let path = ctx.caller_env.get("PATH")?;
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| Path::new(OsStr::from_bytes(dir)))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| exists_for(who, candidate))
}

/// Whether `path` is a regular file as `who` sees it.
fn exists_for(who: &Identity, path: &Path) -> bool {
    with_identity(who, || {
        Ok(std::fs::metadata(path).is_ok_and(|m| m.is_file()))
    })
    .unwrap_or(false)
}
