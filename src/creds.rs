//! Credentials: tracked copies, live files, environment values (DESIGN.md section 6).
//! Placeholder until the credentials work lands: record types and the hooks other modules
//! call.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::not_implemented;
use crate::registry::{AgentRecord, Lock};
use crate::view::ViewMount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredKind {
    Copy,
    Live,
    Env,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub kind: CredKind,
    /// Source file (copy, live) or variable name (env).
    pub source: PathBuf,
    /// Destination in the agent's home (copy, live).
    #[serde(default)]
    pub dest: Option<PathBuf>,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// A credential as `show`, `list` and `cred list` print it; never an env value.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    pub kind: CredKind,
    pub source: String,
    pub dest: Option<String>,
    pub sha256: Option<String>,
    pub state: String,
}

impl fmt::Display for CredentialView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} -> {} [{}]",
            self.kind,
            self.source,
            self.dest.as_deref().unwrap_or("-"),
            self.state
        )
    }
}

pub fn describe(_ctx: &Context, record: &AgentRecord) -> Vec<CredentialView> {
    record
        .credentials
        .iter()
        .map(|c| CredentialView {
            kind: c.kind,
            source: c.source.display().to_string(),
            dest: c.dest.as_ref().map(|d| d.display().to_string()),
            sha256: c.sha256.clone(),
            state: "unknown".into(),
        })
        .collect()
}

pub fn add(
    _ctx: &Context,
    _name: &str,
    _file: &std::path::Path,
    _to: Option<&std::path::Path>,
    _live: bool,
) -> Result<()> {
    Err(not_implemented("cred add"))
}

pub fn set_env(_ctx: &Context, _name: &str, _var: &str) -> Result<()> {
    Err(not_implemented("cred env"))
}

pub fn list(_ctx: &Context, _name: &str, _json: bool) -> Result<()> {
    Err(not_implemented("cred list"))
}

pub fn remove(_ctx: &Context, _name: &str, _item: &OsStr) -> Result<()> {
    Err(not_implemented("cred rm"))
}

pub fn sync(_ctx: &Context, _name: &str, _force: bool) -> Result<()> {
    Err(not_implemented("cred sync"))
}

/// Removes every credential of the agent (called by `delete`).
pub fn remove_all(_ctx: &Context, _lock: &Lock, record: &mut AgentRecord) -> Result<()> {
    record.credentials.clear();
    Ok(())
}

/// The bind mounts the runner adds for live credentials.
pub fn view_mounts(_record: &AgentRecord) -> Vec<ViewMount> {
    Vec::new()
}

/// Re-copies changed copy credentials before a run (quiet when nothing changed).
pub fn sync_before_exec(_ctx: &Context, _record: &mut AgentRecord) -> Result<()> {
    Ok(())
}

/// Environment credentials for the agent's environment, as (name, value).
pub fn env_vars(_ctx: &Context, _record: &AgentRecord) -> Result<Vec<(String, String)>> {
    Ok(Vec::new())
}
