//! Credentials (DESIGN.md section 6): tracked copies, live files, environment values.
//!
//! - copy: read with the caller's rights ([`source`]), written into the agent's home as the
//!   agent without following any link ([`agent`]), 0600; source and copy digests recorded.
//! - live: the owner's file gets a read ACL entry for the agent and is bind-mounted read-only
//!   by the runner over an empty placeholder the agent owns ([`live`]).
//! - env: a value from stdin, stored root-only, injected at exec ([`env`]).
//!
//! `sync` and every exec re-copy changed sources; the agent's changes are reported and kept
//! unless forced ([`state`]). Values of environment credentials never leave [`env`] except
//! through [`env_vars`] to the runner.
#![forbid(unsafe_code)]

mod agent;
mod dest;
mod env;
mod live;
mod source;
mod state;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::names::check_agent_name;
use crate::registry::{AgentRecord, AgentState, Lock};
use crate::view::ViewMount;
use crate::{eventlog, policy};
use state::Outcome;

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
    /// Source file (copy, live; absolute) or variable name (env).
    pub source: PathBuf,
    /// Destination relative to the agent's home (copy, live).
    #[serde(default)]
    pub dest: Option<PathBuf>,
    /// SHA-256 of the source when it was last copied or checked (copy, live).
    #[serde(default)]
    pub sha256: Option<String>,
    /// SHA-256 of what was written into the agent's home (copy).
    #[serde(default)]
    pub dest_sha256: Option<String>,
    /// When the digests were recorded, seconds since the epoch.
    #[serde(default)]
    pub recorded: u64,
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

/// Loads an agent that is ready and that the caller may manage.
fn load_agent(ctx: &Context, name: &str) -> Result<AgentRecord> {
    check_agent_name(name)?;
    let record = ctx
        .registry
        .load(name)?
        .ok_or_else(|| anyhow!("agent '{name}': no such agent"))?;
    policy::authorize_agent(ctx, &record)?;
    if record.state != AgentState::Ready {
        bail!("agent '{name}': not ready (an interrupted create or delete: run it again)");
    }
    Ok(record)
}

/// `cred add`: a tracked copy, or with `live` a read-only bind of the original.
pub fn add(ctx: &Context, name: &str, file: &Path, to: Option<&Path>, live: bool) -> Result<()> {
    let given = dest::absolute(file)?;
    dest::check_printable(&given)?;
    let record = load_agent(ctx, name)?;
    let homes: Vec<PathBuf> = [ctx.caller.uid, record.owner_uid]
        .into_iter()
        .filter_map(policy::home_of)
        .collect();
    dest::resolve(to, &given, &homes, &record)?;
    let caller = ctx.caller.identity();
    // A live file is recorded by its real path (resolved with the caller's rights): the
    // runner binds it without following symlinks. A copy keeps the path as given, so sync
    // follows the owner's links as they are then.
    let source_path = if live {
        source::canonical(&given, &caller)?
    } else {
        given.clone()
    };
    dest::check_printable(&source_path)?;
    // Read before taking the lock: the caller's file (on a slow or hung file system, say)
    // must not be able to hold up every other command.
    let src = source::read(&source_path, &caller, ctx.config.cred_max_bytes)?;

    let lock = ctx.registry.lock()?;
    let mut record = load_agent(ctx, name)?;
    let dest = dest::resolve(to, &given, &homes, &record)?;
    let kind = if live { CredKind::Live } else { CredKind::Copy };
    // One credential per destination; adding the same one again refreshes it.
    let existing = record
        .credentials
        .iter()
        .position(|c| c.kind != CredKind::Env && c.dest.as_deref() == Some(dest.as_path()));
    if let Some(i) = existing {
        let other = &record.credentials[i];
        if other.kind != kind || other.source != source_path {
            bail!(
                "{}: already holds the {} credential from {} (remove it first)",
                record.home.join(&dest).display(),
                kind_word(other.kind),
                other.source.display()
            );
        }
    }

    let dest_sha256 = if live {
        live::check_owned(&src.file, &caller, &source_path)?;
        let created = agent::ensure_placeholder(&record, &dest)?;
        if let Err(e) = live::grant(&src.file, record.uid, &source_path) {
            // No ACL support there, say: take back the placeholder this add made.
            if created {
                let _ = agent::remove(&record, &dest);
            }
            return Err(e);
        }
        None
    } else {
        agent::write_copy(&record, &dest, &src.data)?;
        Some(src.sha256.clone())
    };
    let cred = CredentialRecord {
        kind,
        source: source_path.clone(),
        dest: Some(dest.clone()),
        sha256: Some(src.sha256.clone()),
        dest_sha256,
        recorded: now(),
    };
    match existing {
        Some(i) => record.credentials[i] = cred,
        None => record.credentials.push(cred),
    }
    ctx.registry.save(&lock, &record)?;
    eventlog::record(
        ctx,
        "cred-add",
        name,
        &format!(
            "kind={} source={} dest={}",
            kind_word(kind),
            source_path.display(),
            dest.display()
        ),
    );
    Ok(())
}

/// `cred env`: stores the value read from stdin for `var`.
pub fn set_env(ctx: &Context, name: &str, var: &str) -> Result<()> {
    env::check_var(var)?;
    // Authorize before prompting, and read before locking (a terminal may take a while).
    load_agent(ctx, name)?;
    let value = env::read_value(var)?;
    let lock = ctx.registry.lock()?;
    let mut record = load_agent(ctx, name)?;
    env::store(&ctx.registry.secrets_dir(name), var, &value)?;
    drop(value);
    let known = record
        .credentials
        .iter()
        .any(|c| c.kind == CredKind::Env && c.source == Path::new(var));
    if !known {
        record.credentials.push(CredentialRecord {
            kind: CredKind::Env,
            source: PathBuf::from(var),
            dest: None,
            sha256: None,
            dest_sha256: None,
            recorded: now(),
        });
    }
    ctx.registry.save(&lock, &record)?;
    eventlog::record(ctx, "cred-env", name, &format!("var={var}"));
    Ok(())
}

/// `cred list`.
pub fn list(ctx: &Context, name: &str, json: bool) -> Result<()> {
    let record = load_agent(ctx, name)?;
    let views = describe(ctx, &record);
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<17} {:<12} SOURCE -> DESTINATION",
        "KIND", "STATE", "SHA256"
    );
    for v in &views {
        let sha = v.sha256.as_deref().map_or("-", |s| &s[..12.min(s.len())]);
        println!(
            "{:<4} {:<17} {:<12} {} -> {}",
            kind_word(v.kind),
            v.state,
            sha,
            v.source,
            v.dest.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// `cred rm`: an environment credential by variable name, a file credential by its source
/// or destination path.
pub fn remove(ctx: &Context, name: &str, item: &OsStr) -> Result<()> {
    let path = dest::absolute(Path::new(item))?;
    // Live sources are recorded by their real path; the caller may name them through a link.
    // (Resolved before locking, like every access to the caller's files.)
    let real = source::canonical(&path, &ctx.caller.identity()).ok();
    let lock = ctx.registry.lock()?;
    let mut record = load_agent(ctx, name)?;
    let matches = |c: &CredentialRecord| {
        if c.kind == CredKind::Env {
            return c.source.as_os_str() == item;
        }
        c.source == path
            || Some(&c.source) == real.as_ref()
            || c.dest.as_ref().map(|d| record.home.join(d)) == Some(path.clone())
            || c.dest.as_deref() == Some(Path::new(item))
    };
    let chosen: Vec<usize> = (0..record.credentials.len())
        .filter(|&i| matches(&record.credentials[i]))
        .collect();
    if chosen.is_empty() {
        bail!(
            "agent '{name}': no credential '{}'",
            item.to_string_lossy().escape_default()
        );
    }
    for &i in chosen.iter().rev() {
        remove_one(ctx, &record, &record.credentials[i], true)?;
        let gone = record.credentials.remove(i);
        ctx.registry.save(&lock, &record)?;
        eventlog::record(
            ctx,
            "cred-rm",
            name,
            &format!(
                "kind={} source={}",
                kind_word(gone.kind),
                gone.source.display()
            ),
        );
    }
    Ok(())
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
        CredKind::Env => {
            let var = cred.source.to_str().context("variable name")?;
            env::remove(&ctx.registry.secrets_dir(&record.name), var)
        }
        CredKind::Copy | CredKind::Live => {
            if cred.kind == CredKind::Live {
                let revoked = policy::identity_of(record.owner_uid)
                    .and_then(|owner| live::revoke(&cred.source, &owner, record.uid));
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

/// `cred sync`: re-copies changed sources, reports what it did on stdout.
pub fn sync(ctx: &Context, name: &str, force: bool) -> Result<()> {
    let lock = ctx.registry.lock()?;
    let mut record = load_agent(ctx, name)?;
    let failed = sync_all(ctx, &lock, &mut record, force, false, |line| {
        println!("{line}")
    })?;
    if failed > 0 {
        bail!("agent '{name}': {failed} credential(s) could not be synced");
    }
    Ok(())
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
    let mut creds = std::mem::take(&mut record.credentials);
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
/// run. Takes the registry lock itself (call it without holding the lock) and reloads the
/// record. Quiet when nothing changed; otherwise one line per credential on stderr. A
/// credential that cannot be synced is reported, not fatal: the agent runs with what it has.
pub fn sync_before_exec(ctx: &Context, record: &mut AgentRecord) -> Result<()> {
    if !record.credentials.iter().any(|c| c.kind != CredKind::Env) {
        return Ok(());
    }
    let lock = ctx.registry.lock()?;
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

/// Environment credentials for the agent's environment, as (name, value).
pub fn env_vars(ctx: &Context, record: &AgentRecord) -> Result<Vec<(String, String)>> {
    let dir = ctx.registry.secrets_dir(&record.name);
    let mut vars = Vec::new();
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Env)
    {
        let var = cred.source.to_str().context("variable name")?;
        let value = env::load(&dir, var)?.ok_or_else(|| {
            anyhow!(
                "environment credential {var}: no stored value (set it with 'agentuser cred env {} {var}')",
                record.name
            )
        })?;
        vars.push((var.to_string(), value));
    }
    Ok(vars)
}
