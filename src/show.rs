//! `list` and `show`: what exists, as text or JSON (fields named in docs/design.md section 1).
#![forbid(unsafe_code)]

use anyhow::Result;
use serde::Serialize;

use crate::context::Context;
use crate::creds::{self, CredentialView};
use crate::policy;
use crate::registry::{AgentRecord, AgentState};
use crate::share::{Access, ShareState};

#[derive(Debug, Serialize)]
pub struct AgentView {
    pub name: String,
    pub owner: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub state: AgentState,
    pub comment: String,
    pub created: u64,
    pub shares: Vec<ShareView>,
    pub credentials: Vec<CredentialView>,
    /// The network mode exec uses without --network (the agent's own, else the config's).
    pub network: &'static str,
    /// Where `network` comes from: `agent` (`set NAME network=...`) or `config`.
    pub network_from: &'static str,
    /// The network allowlist, canonical entries.
    pub net_allow: Vec<String>,
    /// Environment variables of `set NAME env.VAR=VALUE`.
    pub env: std::collections::BTreeMap<String, String>,
    /// The directory exec starts in without --cwd (`set NAME cwd=DIR`), if set.
    pub cwd: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ShareView {
    pub path: String,
    pub access: Access,
    /// `granting` or `revoking` when a share or unshare was interrupted; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ShareState>,
    /// How git is protected: `agent-repository`, `owner-git-writable` (--allow-git-writes)
    /// or `read-only`.
    pub git: &'static str,
    #[serde(skip)]
    git_note: &'static str,
}

fn view(ctx: &Context, record: &AgentRecord) -> AgentView {
    AgentView {
        name: record.name.clone(),
        owner: record.owner.clone(),
        user: record.user.clone(),
        uid: record.uid,
        gid: record.gid,
        home: record.home.display().to_string(),
        state: record.state,
        comment: record.comment.clone(),
        created: record.created,
        shares: record
            .shares
            .iter()
            .map(|s| ShareView {
                path: s.path.display().to_string(),
                access: s.access,
                state: (s.state != ShareState::Ready).then_some(s.state),
                git: crate::git::protection::word(s),
                git_note: crate::git::protection::note(s),
            })
            .collect(),
        credentials: creds::describe(ctx, record),
        network: record.network.unwrap_or(ctx.config.network).word(),
        network_from: if record.network.is_some() {
            "agent"
        } else {
            "config"
        },
        net_allow: record.net_allow.clone(),
        env: record.env.clone(),
        cwd: record.cwd.as_ref().map(|d| d.display().to_string()),
    }
}

pub fn list(ctx: &Context, json: bool, names: bool) -> Result<()> {
    let views: Vec<AgentView> = ctx
        .registry
        .all()?
        .iter()
        .filter(|r| policy::may_see(ctx, r))
        .map(|r| view(ctx, r))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if names {
        for v in &views {
            println!("{}", v.name);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<16} {:<32} {:>10} {:>6} {:>5}  STATE",
        "NAME", "OWNER", "USER", "UID", "SHARES", "CREDS"
    );
    for v in &views {
        println!(
            "{:<24} {:<16} {:<32} {:>10} {:>6} {:>5}  {}",
            v.name,
            v.owner,
            v.user,
            v.uid,
            v.shares.len(),
            v.credentials.len(),
            state_word(v.state)
        );
    }
    Ok(())
}

pub fn show(ctx: &Context, name: &str, json: bool) -> Result<()> {
    let record = policy::agent(ctx, name)?;
    let v = view(ctx, &record);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("name:    {}", v.name);
    println!("state:   {}", state_word(v.state));
    println!("owner:   {}", v.owner);
    println!("user:    {} (uid {}, gid {})", v.user, v.uid, v.gid);
    println!("home:    {}", v.home);
    if !v.comment.is_empty() {
        println!("comment: {}", v.comment);
    }
    println!("shares:");
    for s in &v.shares {
        let note = match s.state {
            Some(ShareState::Granting) => " (interrupted: run share again)",
            Some(ShareState::Revoking) => " (interrupted: run unshare again)",
            _ => "",
        };
        println!(
            "  {:<3} {}{note}{}",
            access_word(s.access),
            s.path,
            s.git_note
        );
    }
    println!("credentials:");
    for c in &v.credentials {
        println!("  {c}");
    }
    println!("network: {} (from the {})", v.network, v.network_from);
    for entry in &v.net_allow {
        println!("  allow {entry}");
    }
    if let Some(dir) = &record.cwd {
        println!("cwd:     {}", crate::share::printable(dir));
    }
    if !v.env.is_empty() {
        println!("env:");
        for (var, value) in &v.env {
            println!("  {var}={}", value.escape_default());
        }
    }
    Ok(())
}

fn state_word(state: AgentState) -> &'static str {
    match state {
        AgentState::Creating => "creating (interrupted: run create again)",
        AgentState::Ready => "ready",
        AgentState::Deleting => "deleting (interrupted: run delete again)",
    }
}

fn access_word(access: Access) -> &'static str {
    match access {
        Access::Ro => "ro",
        Access::Rw => "rw",
    }
}
