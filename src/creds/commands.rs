//! The `cred` subcommands: authorize, read what the caller names with the caller's rights
//! (before taking the registry lock), then change the agent and its record under the lock.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{
    CredKind, CredentialRecord, agent, agent_content, describe, dest, env_store, kind_word, live,
    now, remove_one, source, sync_all,
};
use crate::context::Context;
use crate::registry::AgentRecord;
use crate::{eventlog, policy};

/// Loads an agent that is ready and that the caller may manage.
fn load_agent(ctx: &Context, name: &str) -> Result<AgentRecord> {
    policy::ready_agent(ctx, name)
}

/// `cred add`: a tracked copy, or with `live` a read-only bind of the original.
pub fn add(ctx: &Context, name: &str, file: &Path, to: Option<&Path>, live: bool) -> Result<()> {
    let given = dest::absolute(file)?;
    dest::check_printable(&given)?;
    let record = load_agent(ctx, name)?;
    let homes: Vec<PathBuf> = [ctx.caller.uid, record.owner_uid]
        .into_iter()
        .filter_map(crate::account::home_of)
        .collect();
    dest::resolve(to, &given, &homes, &record)?;
    let caller = ctx.caller.identity();
    // Read before taking the lock: the caller's file (on a slow or hung file system, say)
    // must not be able to hold up every other command.
    let (source_path, src) = read_given(ctx, &record, &given, live)?;

    let lock = ctx.registry.lock(name)?;
    let mut record = load_agent(ctx, name)?;
    agent::remove_stale_temps(&record);
    let dest = dest::resolve(to, &given, &homes, &record)?;
    let kind = if live { CredKind::Live } else { CredKind::Copy };
    let existing = slot_for(&record, &dest, kind, &source_path)?;

    if live {
        live::check_owned(&src.file, &caller, &source_path)?;
    }
    // What the agent gets: brokered values replaced by their placeholders.
    let content = if live {
        None
    } else {
        Some(agent_content(ctx, &record, &src.data)?)
    };
    let cred = CredentialRecord {
        kind,
        source: source_path.clone(),
        dest: Some(dest.clone()),
        sha256: Some(src.sha256.clone()),
        dest_sha256: content.as_deref().map(super::sha256_hex),
        recorded: now(),
        source_inode: live.then_some(src.inode),
        hosts: Vec::new(),
        ssh: None,
    };
    let is_new = existing.is_none();
    match existing {
        Some(i) => record.credentials[i] = cred,
        None => record.credentials.push(cred),
    }
    if live {
        // Journaled before the ACL entry is made: should this add be killed after the
        // grant, `cred rm`, a rerun and `delete` all find the entry to take away.
        ctx.registry.save(&lock, &record)?;
        if let Err(e) = grant_live(&record, &dest, &src, &source_path) {
            if is_new {
                record.credentials.pop();
                ctx.registry.save(&lock, &record)?;
            }
            return Err(e);
        }
    } else if let Some(content) = &content {
        agent::write_copy(&record, &dest, content)?;
        ctx.registry.save(&lock, &record)?;
    }
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

/// The source of `cred add` as given, read with the caller's rights: its recorded path and
/// content. A live file is recorded by its real path (resolved with the caller's rights):
/// the runner binds it without following symlinks. A copy keeps the path as given, so sync
/// follows the owner's links as they are then.
fn read_given(
    ctx: &Context,
    record: &AgentRecord,
    given: &Path,
    live: bool,
) -> Result<(PathBuf, source::Source)> {
    let caller = ctx.caller.identity();
    let source_path = if live {
        source::canonical(given, &caller)?
    } else {
        given.to_path_buf()
    };
    dest::check_printable(&source_path)?;
    source::check_out_of_agent_reach(given, &caller, record)?;
    let links = if live {
        source::Links::Refuse
    } else {
        source::Links::Follow
    };
    let max = ctx.config.cred_max_bytes;
    let src = source::read(&source_path, &caller, record.owner_uid, max, links)?;
    Ok((source_path, src))
}

/// Where a credential for `dest` goes in the record: one credential per destination, and
/// adding the same one again refreshes it (its index); another at that destination is
/// refused.
fn slot_for(
    record: &AgentRecord,
    dest: &Path,
    kind: CredKind,
    source_path: &Path,
) -> Result<Option<usize>> {
    let existing = record
        .credentials
        .iter()
        .position(|c| c.kind != CredKind::Env && c.dest.as_deref() == Some(dest));
    if let Some(i) = existing {
        let other = &record.credentials[i];
        if other.kind != kind || other.source != source_path {
            bail!(
                "{}: already holds the {} credential from {} (remove it first)",
                record.home.join(dest).display(),
                kind_word(other.kind),
                other.source.display()
            );
        }
    }
    Ok(existing)
}

/// Gives the agent read access to a live source it was not refused: the placeholder in its
/// home, then the ACL entry on the very file that was read (and checked).
fn grant_live(
    record: &AgentRecord,
    dest: &Path,
    src: &source::Source,
    source_path: &Path,
) -> Result<()> {
    let created = agent::ensure_placeholder(record, dest)?;
    if let Err(e) = live::grant(&src.file, record.uid, source_path) {
        // No ACL support there, say: take back the placeholder this add made.
        if created {
            let _ = agent::remove(record, dest);
        }
        return Err(e);
    }
    Ok(())
}

/// `cred env`: stores the value read from stdin for `var`; with `hosts`, brokered: a
/// placeholder of the same shape is made for the agent's environment.
pub fn set_env(ctx: &Context, name: &str, var: &str, hosts: &[String]) -> Result<()> {
    env_store::check_var(var)?;
    let hosts = bound_hosts(hosts)?;
    // Authorize before prompting, and read before locking (a terminal may take a while).
    load_agent(ctx, name)?;
    let value = zeroize::Zeroizing::new(env_store::read_value(var)?);
    let placeholder = if hosts.is_empty() {
        None
    } else {
        Some(crate::broker::placeholder::make(&value)?)
    };
    let lock = ctx.registry.lock(name)?;
    let mut record = load_agent(ctx, name)?;
    let dir = ctx.registry.secrets_dir(name);
    env_store::store(&dir, var, &value)?;
    drop(value);
    match &placeholder {
        Some(p) => env_store::store(&dir, &env_store::placeholder_file(var), p)?,
        None => env_store::remove(&dir, &env_store::placeholder_file(var))?,
    }
    record
        .credentials
        .retain(|c| !(c.kind == CredKind::Env && c.source == Path::new(var)));
    record.credentials.push(CredentialRecord {
        kind: CredKind::Env,
        source: PathBuf::from(var),
        dest: None,
        sha256: None,
        dest_sha256: None,
        recorded: now(),
        source_inode: None,
        hosts: hosts.clone(),
        ssh: None,
    });
    ctx.registry.save(&lock, &record)?;
    // Copies made before this secret was brokered (or rotated) hold its old form: mask them
    // now rather than at the next run.
    sync_all(ctx, &lock, &mut record, false, true, |line| {
        eprintln!("agentuser: {name}: {line}")
    })?;
    let detail = match hosts.is_empty() {
        true => format!("var={var}"),
        false => format!("var={var} hosts={}", hosts.join(",")),
    };
    eventlog::record(ctx, "cred-env", name, &detail);
    Ok(())
}

/// `--host` names, normalized: exact host names (no wildcard, no port).
fn bound_hosts(hosts: &[String]) -> Result<Vec<String>> {
    crate::network::allowlist::exact_host_names(hosts)
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
    let lock = ctx.registry.lock(name)?;
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

/// `cred sync`: re-copies changed sources, reports what it did on stdout.
pub fn sync(ctx: &Context, name: &str, force: bool) -> Result<()> {
    let lock = ctx.registry.lock(name)?;
    let mut record = load_agent(ctx, name)?;
    let failed = sync_all(ctx, &lock, &mut record, force, false, |line| {
        println!("{line}")
    })?;
    if failed > 0 {
        bail!("agent '{name}': {failed} credential(s) could not be synced");
    }
    Ok(())
}
