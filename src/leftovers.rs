//! An agent's files in the state directory beside its record: its stored secrets, git
//! directories, share index, network log, run markers, the policy point's run files and
//! the network namespaces kept for `none` runs.
//! `delete` removes them with the agent; `doctor` reports those whose agent no longer exists
//! (left by a delete cut short, or by a version of agentuser that did not remove them).
//!
//! Every entry names its agent: it is `NAME`, `NAME.REST` or `.NAME.REST` (a temporary
//! file). Agent names contain no `.`, so the name is unambiguous.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::cleanup::{self, Select};
use crate::context::Context;

/// The directories below the state directory that hold per-agent entries. Records
/// (`agents/`) and lock files (`locks/`) are the registry's own.
const PLACES: &[&str] = &[
    "secrets", "git", "index", "netlog", "runs", "run-ssh", "run-ca", "netns",
];

/// The agent an entry of one of [`PLACES`] belongs to, if its name is one of an agent.
fn agent_of(entry: &str) -> Option<&str> {
    let name = entry.strip_prefix('.').unwrap_or(entry);
    let name = name.split('.').next()?;
    crate::names::check_agent_name(name).ok().map(|()| name)
}

/// Every per-agent entry below `state`, with the agent it belongs to.
fn entries(state: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for place in PLACES {
        let Ok(dir) = std::fs::read_dir(state.join(place)) else {
            continue;
        };
        for entry in dir.flatten() {
            let file_name = entry.file_name();
            if let Some(agent) = file_name.to_str().and_then(agent_of) {
                found.push((agent.to_string(), entry.path()));
            }
        }
    }
    found.sort();
    found
}

/// Whether the run marker holding `text` (`runs/NAME.N.json`) records a run: a marker slot
/// is blank between runs (a run blanks its slot when it ends, runner::planted).
pub fn marker_records_a_run(text: &[u8]) -> bool {
    !text.iter().all(u8::is_ascii_whitespace)
}

/// Removes the policy point's run files (`run-ca/NAME.PID-SECS.pem`, `run-ssh/...sock`)
/// of agent `name` whose runner is gone (killed: a run that ends removes its own). Each
/// `exec` in the allowlist mode calls it, so they do not pile up while the agent lives. A
/// pid reused by another process keeps its file until a later run: never a live run's.
pub fn remove_dead_run_files(ctx: &Context, name: &str) {
    for place in ["run-ca", "run-ssh"] {
        let Ok(dir) = std::fs::read_dir(ctx.registry.root().join(place)) else {
            continue;
        };
        for entry in dir.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(name))
                .and_then(|n| n.strip_prefix('.'))
            else {
                continue;
            };
            let Some(pid) = rest
                .split(['-', '.'])
                .next()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH);
            if gone && pid > 0 {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The entries of agent `name`.
pub fn of_agent(ctx: &Context, name: &str) -> Vec<PathBuf> {
    entries(ctx.registry.root())
        .into_iter()
        .filter(|(agent, _)| agent == name)
        .map(|(_, path)| path)
        .collect()
}

/// Removes every entry of agent `name`. Call with the agent's lock held, once its
/// processes are gone and the shares of its dead runs are searched (a run marker records
/// what to search).
pub fn remove(ctx: &Context, name: &str) -> Result<()> {
    // The share tracker lives between runs: it ends before its directory goes.
    crate::share::stop_tracker(ctx.registry.root(), name);
    for path in of_agent(ctx, name) {
        // A kept network namespace is mounted on its file.
        if path.starts_with(crate::network::pool::dir(ctx.registry.root())) {
            crate::network::pool::unpin(&path);
        }
        if cleanup::remove(&path, Select::All)? > 0 {
            bail!("could not remove {}", path.display());
        }
    }
    Ok(())
}

/// Entries of agents that have no record (a damaged record still counts as one), as
/// paths relative to the state directory, by agent.
pub fn orphans(ctx: &Context) -> Vec<(String, Vec<String>)> {
    let state = ctx.registry.root();
    let mut by_agent: Vec<(String, Vec<String>)> = Vec::new();
    for (agent, path) in entries(state) {
        if !matches!(ctx.registry.load(&agent), Ok(None)) {
            continue;
        }
        let relative = path
            .strip_prefix(state)
            .unwrap_or(&path)
            .display()
            .to_string();
        match by_agent.last_mut() {
            Some((last, paths)) if *last == agent => paths.push(relative),
            _ => by_agent.push((agent, vec![relative])),
        }
    }
    by_agent
}

#[cfg(test)]
mod tests {
    use super::agent_of;

    #[test]
    fn entries_name_their_agent() {
        assert_eq!(agent_of("coder"), Some("coder"));
        assert_eq!(agent_of("coder.log.old"), Some("coder"));
        assert_eq!(agent_of(".coder.123.json.tmp"), Some("coder"));
        assert_eq!(agent_of("coder.4242-1700000000.sock"), Some("coder"));
        // Run files named before runs carried their agent's name, and stray files.
        assert_eq!(agent_of("4242-1700000000.sock"), None);
        assert_eq!(agent_of(".."), None);
        assert_eq!(agent_of("Coder"), None);
    }
}
