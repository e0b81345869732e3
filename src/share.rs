//! Sharing trees with an agent through POSIX ACLs (DESIGN.md section 5). Placeholder until
//! the sharing work lands: the record types and the hooks `delete` and the runner call.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::not_implemented;
use crate::registry::{AgentRecord, Lock};
use crate::view::ViewMount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRecord {
    pub path: PathBuf,
    pub access: Access,
}

pub fn share(_ctx: &Context, _name: &str, _path: &Path, _access: Access) -> Result<()> {
    Err(not_implemented("share"))
}

pub fn unshare(_ctx: &Context, _name: &str, _path: &Path) -> Result<()> {
    Err(not_implemented("unshare"))
}

/// Removes every share of the agent (called by `delete`).
pub fn revoke_all(_ctx: &Context, _lock: &Lock, record: &mut AgentRecord) -> Result<()> {
    record.shares.clear();
    Ok(())
}

/// The bind mounts the runner adds to the agent's view for its shares.
pub fn view_mounts(_record: &AgentRecord) -> Vec<ViewMount> {
    Vec::new()
}

/// Environment the runner gives the agent for its shares (e.g. git's safe.directory through
/// GIT_CONFIG_COUNT/KEY/VALUE, so nothing is written into the agent's home).
pub fn agent_env(_record: &AgentRecord) -> Vec<(String, String)> {
    Vec::new()
}
