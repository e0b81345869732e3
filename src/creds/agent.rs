//! Everything done in the agent's home is done as the agent (effective uid, gid, no groups)
//! and through sys::agentfs (no symlink followed, nothing outside the home): the helper can
//! never write, read or remove there anything the agent could not, and a planted link cannot
//! redirect it (docs/threat-model.md rows 10, 11, 22).
#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::{Context, Result};

use crate::registry::AgentRecord;
use crate::sys::agentfs::{Found, Tree};
use crate::sys::ids::{Identity, with_identity};

/// Mode of copies and placeholders.
const FILE_MODE: u32 = 0o600;

fn identity(record: &AgentRecord) -> Identity {
    Identity {
        uid: record.uid,
        gid: record.gid,
        groups: Vec::new(),
    }
}

fn in_home<T>(record: &AgentRecord, f: impl FnOnce(&Tree) -> Result<T>) -> Result<T> {
    with_identity(&identity(record), || {
        let home = Tree::open(&record.home, record.uid)
            .with_context(|| format!("the home of '{}'", record.user))?;
        f(&home)
    })
}

/// Writes a copy (0600, the agent's) at `dest`, relative to the home.
pub fn write_copy(record: &AgentRecord, dest: &Path, data: &[u8]) -> Result<()> {
    in_home(record, |home| home.replace_file(dest, data, FILE_MODE))
}

/// Creates the empty mount target of a live credential (kept if a plain file is there);
/// whether it was created.
pub fn ensure_placeholder(record: &AgentRecord, dest: &Path) -> Result<bool> {
    in_home(record, |home| home.ensure_placeholder(dest, FILE_MODE))
}

/// What the agent has at `dest`.
pub fn read(record: &AgentRecord, dest: &Path, max: u64) -> Result<Found> {
    in_home(record, |home| home.read_file(dest, max))
}

/// Removes the entry at `dest`; whether there was one.
pub fn remove(record: &AgentRecord, dest: &Path) -> Result<bool> {
    if record.home.symlink_metadata().is_err() {
        // No home (deleted, or a delete being completed): nothing to remove.
        return Ok(false);
    }
    in_home(record, |home| home.remove_file(dest))
}

/// Directories of the home where credential writes happen: the home itself and the parent
/// of every credential's destination.
fn write_dirs(record: &AgentRecord) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![std::path::PathBuf::new()];
    for dest in record.credentials.iter().filter_map(|c| c.dest.as_ref()) {
        if let Some(parent) = dest.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Removes the temp files interrupted credential writes left in the home (the caller holds
/// the agent's lock, so no write of ours is under way there). Best effort.
pub fn remove_stale_temps(record: &AgentRecord) {
    if record.home.symlink_metadata().is_err() {
        return;
    }
    let _ = in_home(record, |home| {
        for dir in write_dirs(record) {
            home.remove_temps_in(&dir);
        }
        Ok(())
    });
}

/// The temp files interrupted credential writes left in the home (for `doctor`).
pub fn stale_temps(record: &AgentRecord) -> Vec<String> {
    if record.home.symlink_metadata().is_err() {
        return Vec::new();
    }
    in_home(record, |home| {
        Ok(write_dirs(record)
            .iter()
            .flat_map(|dir| home.temps_in(dir))
            .collect())
    })
    .unwrap_or_default()
}
