//! Credentials (docs/design.md section 6): tracked copies, live files, environment values.
//!
//! - copy: read with the caller's rights ([`source`]), written into the agent's home as the
//!   agent without following any link ([`agent`]), 0600; source and copy digests recorded.
//! - live: the owner's file gets a read ACL entry for the agent and is bind-mounted read-only
//!   by the runner over an empty placeholder the agent owns ([`live`]).
//! - env: a value from stdin, stored root-only, injected at exec ([`env`]).
//!
//! `sync` and every exec re-copy changed sources; the agent's changes are reported and kept
//! unless forced ([`state`]). Values of environment credentials never leave [`env`] except
//! through [`env_vars`] to the runner. The subcommands themselves are in [`commands`].
#![forbid(unsafe_code)]

mod agent;
mod commands;
mod dest;
mod env_store;
mod live;
mod secure_path;
mod source;
mod state;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::eventlog;
use crate::registry::{AgentRecord, Lock};
use crate::view::ViewMount;
use state::Outcome;

pub use agent::stale_temps;
pub use commands::{add, list, remove, set_env, sync};

pub use crate::record::{CredKind, CredentialRecord};

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
            "{:<4} {:<17} {} -> {}",
            kind_word(self.kind),
            self.state,
            self.source,
            self.dest.as_deref().unwrap_or("-"),
        )
    }
}

fn kind_word(kind: CredKind) -> &'static str {
    match kind {
        CredKind::Copy => "copy",
        CredKind::Live => "live",
        CredKind::Env => "env",
        CredKind::Ssh => "ssh",
    }
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Each credential with its current state (reads sources as the owner, copies as the agent).
pub fn describe(ctx: &Context, record: &AgentRecord) -> Vec<CredentialView> {
    record
        .credentials
        .iter()
        .map(|c| CredentialView {
            kind: c.kind,
            source: c.source.display().to_string(),
            dest: c
                .dest
                .as_ref()
                .map(|d| record.home.join(d).display().to_string()),
            sha256: c.sha256.clone(),
            state: state::check(ctx, record, c).state.word().into(),
        })
        .collect()
}

/// Takes one credential away from the agent: the copy, the ACL entry and placeholder, or the
/// stored value. The agent's copy failing to go (it may have moved it behind a link) is only
/// reported: what it read is its own already, and the record must still go. With `strict`
/// false (delete, where the account itself goes), an ACL entry that cannot be reached is
/// reported too, so that delete always completes: the uid it names is never handed out again.
fn remove_one(
    ctx: &Context,
    record: &AgentRecord,
    cred: &CredentialRecord,
    strict: bool,
) -> Result<()> {
    match cred.kind {
        // Nothing of it is in the agent's reach: the record is all there is.
        CredKind::Ssh => Ok(()),
        CredKind::Env => {
            let var = cred.source.to_str().context("variable name")?;
            let dir = ctx.registry.secrets_dir(&record.name);
            env_store::remove(&dir, &env_store::placeholder_file(var))?;
            env_store::remove(&dir, var)
        }
        CredKind::Copy | CredKind::Live => {
            if cred.kind == CredKind::Live {
                let revoked = crate::account::identity_of(record.owner_uid).and_then(|owner| {
                    live::revoke(&cred.source, &owner, record.uid, cred.source_inode)
                });
                match revoked {
                    Err(e) if strict => return Err(e),
                    Err(e) => eprintln!("agentuser: warning: {}", crate::error::one_line(&e)),
                    Ok(()) => {}
                }
            }
            if let Some(dest) = &cred.dest {
                if let Err(e) = agent::remove(record, dest) {
                    eprintln!("agentuser: warning: {}", crate::error::one_line(&e));
                }
            }
            Ok(())
        }
    }
}

/// Syncs every file credential, saves the record when something changed, and returns how
/// many failed. `note` receives one line per credential that changed or needs attention;
/// with `quiet`, a copy the agent modified is mentioned only while it holds back a newer
/// source (exec would otherwise repeat it at every run).
fn sync_all(
    ctx: &Context,
    lock: &Lock,
    record: &mut AgentRecord,
    force: bool,
    quiet: bool,
    mut note: impl FnMut(String),
) -> Result<usize> {
    let mut failed = 0;
    let mut changed = false;
    agent::remove_stale_temps(record);
    // A working copy, not taken out of the record: checking a copy needs every credential
    // of the record (the brokered secrets it masks).
    let mut creds = record.credentials.clone();
    for cred in &mut creds {
        let label = match &cred.dest {
            Some(dest) => format!(
                "{} {}",
                kind_word(cred.kind),
                record.home.join(dest).display()
            ),
            None => format!("{} {}", kind_word(cred.kind), cred.source.display()),
        };
        match state::sync_one(ctx, record, cred, force) {
            Outcome::Unchanged => {}
            Outcome::Updated(what) => {
                changed = true;
                note(format!("{label}: {what}"));
            }
            Outcome::Kept {
                why,
                source_changed,
            } => {
                if source_changed || !quiet {
                    note(format!("{label}: {why}"));
                }
            }
            Outcome::Failed(why) => {
                failed += 1;
                note(format!("{label}: {why}"));
            }
        }
    }
    record.credentials = creds;
    if changed {
        ctx.registry.save(lock, record)?;
        eventlog::record(ctx, "cred-sync", &record.name, "");
    }
    Ok(failed)
}

/// Removes every credential of the agent (called by `delete`, which repeats until done).
pub fn remove_all(ctx: &Context, lock: &Lock, record: &mut AgentRecord) -> Result<()> {
    while let Some(cred) = record.credentials.last() {
        crate::error::check_interrupt()?;
        remove_one(ctx, record, cred, false)
            .with_context(|| format!("credential {}", cred.source.display()))?;
        record.credentials.pop();
        ctx.registry.save(lock, record)?;
    }
    Ok(())
}

/// The bind mounts the runner adds for live credentials: the owner's file, read-only, over
/// the placeholder at the destination in the agent's home.
pub fn view_mounts(record: &AgentRecord) -> Vec<ViewMount> {
    record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Live)
        .filter_map(|c| {
            Some(ViewMount {
                source: c.source.clone(),
                target: record.home.join(c.dest.as_ref()?),
                read_only: true,
            })
        })
        .collect()
}

/// Re-copies changed copy credentials and restores live placeholders and grants before a
/// run. Takes the agent's lock itself (call it without holding the lock) and reloads the
/// record. Quiet when nothing changed; otherwise one line per credential on stderr. A
/// credential that cannot be synced is reported, not fatal: the agent runs with what it has.
pub fn sync_before_exec(ctx: &Context, record: &mut AgentRecord) -> Result<()> {
    if !record
        .credentials
        .iter()
        .any(|c| matches!(c.kind, CredKind::Copy | CredKind::Live))
    {
        return Ok(());
    }
    let lock = ctx.registry.lock(&record.name)?;
    let mut fresh = ctx
        .registry
        .load(&record.name)?
        .ok_or_else(|| anyhow!("agent '{}': no such agent", record.name))?;
    sync_all(ctx, &lock, &mut fresh, false, true, |line| {
        eprintln!("agentuser: {}: {line}", record.name)
    })?;
    *record = fresh;
    Ok(())
}

/// Environment credentials for the agent's environment, as (name, value): the value, or for
/// a brokered credential its placeholder.
pub fn env_vars(ctx: &Context, record: &AgentRecord) -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Env)
    {
        let var = cred.source.to_str().context("variable name")?;
        let file = if cred.hosts.is_empty() {
            var.to_owned()
        } else {
            env_store::placeholder_file(var)
        };
        vars.push((var.to_string(), load_env(ctx, record, var, &file)?));
    }
    Ok(vars)
}

fn load_env(ctx: &Context, record: &AgentRecord, var: &str, file: &str) -> Result<String> {
    env_store::load(&ctx.registry.secrets_dir(&record.name), file)?.ok_or_else(|| {
        anyhow!(
            "environment credential {var}: no stored value (set it with 'agentuser cred env {} {var}')",
            record.name
        )
    })
}

/// What the agent's copy of a source holds: the source with the value of each of the
/// agent's brokered secrets replaced by its placeholder (issue 13 item 3). Fails closed: a
/// brokered secret that cannot be loaded stops the copy instead of letting its value through.
fn agent_content<'a>(
    ctx: &Context,
    record: &AgentRecord,
    data: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let secrets = brokered(ctx, record).context("masking brokered secrets in the copy")?;
    Ok(match secrets.mask_values(data) {
        Some(masked) => std::borrow::Cow::Owned(masked),
        None => std::borrow::Cow::Borrowed(data),
    })
}

/// What the agent reads that root (as the owner) reads for `audit`: the value of each raw
/// env credential (every run's environment) and each live credential's source (bound into
/// its view), as (where the agent sees it, content).
pub fn audit_contents(
    ctx: &Context,
    record: &AgentRecord,
) -> Result<Vec<(String, zeroize::Zeroizing<Vec<u8>>)>> {
    let mut out = Vec::new();
    for (var, value) in env_vars(ctx, record)? {
        let place = format!("env {var} (raw env credential, in every run's environment)");
        out.push((place, zeroize::Zeroizing::new(value.into_bytes())));
    }
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Live)
    {
        let (Some(dest), Ok(src)) = (&cred.dest, state::check(ctx, record, cred).source) else {
            continue;
        };
        let place = format!(
            "{} (live credential from {})",
            record.home.join(dest).display(),
            cred.source.display()
        );
        out.push((place, zeroize::Zeroizing::new(src.data)));
    }
    Ok(out)
}

/// The agent's brokered secrets, for the policy point (values wiped when dropped).
pub fn brokered(ctx: &Context, record: &AgentRecord) -> Result<crate::broker::Secrets> {
    let mut secrets = Vec::new();
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Env && !c.hosts.is_empty())
    {
        let var = cred.source.to_str().context("variable name")?;
        secrets.push(crate::broker::Secret {
            var: var.to_owned(),
            placeholder: load_env(ctx, record, var, &env_store::placeholder_file(var))?,
            value: zeroize::Zeroizing::new(load_env(ctx, record, var, var)?),
            hosts: cred.hosts.clone(),
        });
    }
    Ok(crate::broker::Secrets::new(secrets))
}
