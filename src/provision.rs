//! The life cycle of an agent: `create` and `delete`, the one place that makes and the one
//! place that undoes an agent.
//!
//! Both are journaled in the agent record: `create` tombstones the uid and writes a
//! `creating` record before touching /etc; `delete` marks the record `deleting` before
//! undoing anything. Either, interrupted at any point, is completed by running the same
//! command again, and a failed `create` rolls back what it made.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::account::{self, NewAccount};
use crate::cleanup::{self, Select};
use crate::context::Context;
use crate::error::usage;
use crate::names::check_agent_name;
use crate::policy::{self, Owner};
use crate::registry::{AgentRecord, AgentState, Lock, ensure_root_dir};
use crate::{creds, eventlog, share};

/// Where desktop account services look for per-user settings; `SystemAccount=true` there
/// keeps the agent off graphical login screens.
const ACCOUNTS_SERVICE_DIR: &str = "/var/lib/AccountsService/users";
/// Directories where an agent may leave files behind.
const SHARED_TEMP_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

pub fn create(ctx: &Context, name: &str, owner: Option<&str>, comment: Option<&str>) -> Result<()> {
    check_agent_name(name)?;
    let user = ctx.config.user_name(name);
    let comment = comment.unwrap_or("");
    if comment.contains([':', '\n', '\0']) || comment.len() > 255 {
        return Err(usage(
            "--comment: at most 255 characters, no ':' or newlines",
        ));
    }
    let owner = policy::authorize_create(ctx, owner)?;
    let lock = ctx.registry.lock()?;

    let record = match ctx.registry.load(name)? {
        Some(record) if record.state == AgentState::Creating => {
            // An interrupted create: finish it, for the same owner only.
            if record.owner_uid != owner.uid {
                bail!("agent '{name}' is being created for another owner");
            }
            record
        }
        Some(record) if record.state == AgentState::Deleting => {
            bail!("agent '{name}' is being deleted: run 'agentuser delete {name}' to finish")
        }
        Some(_) => bail!("agent '{name}' already exists"),
        None => new_record(ctx, &lock, name, &user, &owner, comment)?,
    };
    if let Err(err) = make_account(ctx, &record) {
        rollback_create(ctx, &lock, &record);
        return Err(err.context(format!("creating agent '{name}'")));
    }
    let record = AgentRecord {
        state: AgentState::Ready,
        ..record
    };
    ctx.registry.save(&lock, &record)?;
    eventlog::record(
        ctx,
        "create",
        name,
        &format!("user={} uid={}", record.user, record.uid),
    );
    Ok(())
}

/// Checks the request against the host and policy, picks a uid and journals the creation.
fn new_record(
    ctx: &Context,
    lock: &Lock,
    name: &str,
    user: &str,
    owner: &Owner,
    comment: &str,
) -> Result<AgentRecord> {
    if account::user_by_name(user)?.is_some() {
        bail!("user '{user}' already exists and is not an agent of agentuser");
    }
    if account::group_by_name(user)?.is_some() {
        bail!("group '{user}' already exists");
    }
    let home = ctx.config.home_of(user);
    if home.symlink_metadata().is_ok() {
        bail!(
            "home {} already exists (kept by 'delete --keep-home'?): move it away first",
            home.display()
        );
    }
    let all = ctx.registry.all()?;
    if !ctx.caller.is_root {
        let owned = all.iter().filter(|r| r.owner_uid == owner.uid).count();
        if owned >= ctx.config.max_agents_per_owner as usize {
            bail!(
                "agent limit reached: '{}' already owns {owned} agents (max_agents_per_owner)",
                owner.name
            );
        }
    }
    let uid = allocate_uid(ctx, &all)?;
    ctx.registry.mark_uid_used(lock, uid)?;
    let record = AgentRecord {
        name: name.to_string(),
        state: AgentState::Creating,
        owner: owner.name.clone(),
        owner_uid: owner.uid,
        user: user.to_string(),
        uid,
        gid: uid,
        home,
        comment: comment.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        shares: Vec::new(),
        credentials: Vec::new(),
        network: None,
        net_allow: Vec::new(),
    };
    ctx.registry.save(lock, &record)?;
    Ok(record)
}

/// The lowest uid of the range that was never handed out and that no user or group holds.
fn allocate_uid(ctx: &Context, records: &[AgentRecord]) -> Result<u32> {
    let used = ctx.registry.used_uids()?;
    let subordinate = subordinate_ranges()?;
    let (min, max) = (ctx.config.uid_min, ctx.config.uid_max);
    let mut uid = used
        .range(min..=max)
        .next_back()
        .map_or(min, |u| u.saturating_add(1));
    // Start after the highest tombstone: uids below it were handed out or skipped before.
    while uid <= max && uid >= min {
        let taken = records.iter().any(|r| r.uid == uid)
            || subordinate
                .iter()
                .any(|(start, count)| uid >= *start && uid - start < *count)
            || account::user_by_uid(uid)?.is_some()
            || account::group_by_gid(uid)?.is_some();
        if !taken {
            return Ok(uid);
        }
        uid += 1;
    }
    bail!("the agent uid range {min}-{max} is exhausted (uid_min/uid_max)")
}

/// Subordinate id ranges from /etc/subuid and /etc/subgid: an agent uid inside one would be
/// another user's container root.
fn subordinate_ranges() -> Result<Vec<(u32, u32)>> {
    let mut ranges = Vec::new();
    for path in ["/etc/subuid", "/etc/subgid"] {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        for line in text.lines() {
            let mut fields = line.split(':').skip(1);
            if let (Some(Ok(start)), Some(Ok(count))) = (
                fields.next().map(str::parse::<u32>),
                fields.next().map(str::parse::<u32>),
            ) {
                ranges.push((start, count));
            }
        }
    }
    Ok(ranges)
}

/// Makes (or finishes making) the group, account, home and login-screen hiding.
fn make_account(ctx: &Context, record: &AgentRecord) -> Result<()> {
    let base = &ctx.config.home_base;
    if let Some(parent) = base.parent() {
        check_root_chain(parent)?;
    }
    // Agents traverse the base to reach their home but cannot list it.
    ensure_root_dir(base, 0o711)?;
    // A tool left running by an interrupted create may finish the same step while we look,
    // so "it exists now, as we wanted" counts as success.
    let group_ok = || -> Result<bool> {
        match account::group_by_name(&record.user)? {
            None => Ok(false),
            Some(group) if group.gid.as_raw() == record.gid => Ok(true),
            Some(_) => bail!("group '{}' exists with another gid", record.user),
        }
    };
    if !group_ok()? {
        if let Err(e) = account::create_group(&record.user, record.gid) {
            if !group_ok()? {
                return Err(e);
            }
        }
    }
    let user_ok = || -> Result<bool> {
        match account::user_by_name(&record.user)? {
            None => Ok(false),
            Some(user) if user.uid.as_raw() == record.uid => Ok(true),
            Some(_) => bail!("user '{}' exists with another uid", record.user),
        }
    };
    if !user_ok()? {
        let made = account::create_user(&NewAccount {
            user: &record.user,
            uid: record.uid,
            gid: record.gid,
            home: &record.home,
            shell: &ctx.config.shell,
            comment: &record.comment,
        });
        if let Err(e) = made {
            if !user_ok()? {
                return Err(e);
            }
        }
    }
    check_home(record)?;
    hide_from_login_screens(&record.user)?;
    Ok(())
}

/// Every existing ancestor of the home base must be root's and not writable by others, or
/// someone could swap a component for a symlink while useradd works.
fn check_root_chain(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors() {
        ensure_root_dir(ancestor, 0o755)
            .with_context(|| format!("home_base ancestor {}", ancestor.display()))?;
    }
    Ok(())
}

fn check_home(record: &AgentRecord) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&record.home)
        .with_context(|| format!("home {}", record.home.display()))?;
    if !meta.is_dir() || meta.uid() != record.uid || meta.mode() & 0o7777 != 0o700 {
        bail!(
            "home {}: expected a 0700 directory owned by uid {}",
            record.home.display(),
            record.uid
        );
    }
    Ok(())
}

fn hide_from_login_screens(user: &str) -> Result<()> {
    let dir = Path::new(ACCOUNTS_SERVICE_DIR);
    if !dir.is_dir() {
        return Ok(());
    }
    crate::registry::write_atomic(&dir.join(user), b"[User]\nSystemAccount=true\n")
}

/// Undoes a failed create: whatever part of the account exists goes, the record goes, the
/// uid stays tombstoned. Best effort: the original error is what the user needs to see.
fn rollback_create(ctx: &Context, lock: &Lock, record: &AgentRecord) {
    // The home goes only if this create made it (it belongs to the new uid); anything else
    // at that path is someone's data.
    use std::os::unix::fs::MetadataExt;
    let ours = record
        .home
        .symlink_metadata()
        .is_ok_and(|m| m.is_dir() && m.uid() == record.uid);
    let _ = remove_account(record, !ours);
    let _ = ctx.registry.remove(lock, &record.name);
}

pub fn delete(ctx: &Context, name: &str, keep_home: bool) -> Result<()> {
    check_agent_name(name)?;
    let lock = ctx.registry.lock()?;
    let mut record = policy::agent(ctx, name)?;
    if record.state != AgentState::Deleting {
        record.state = AgentState::Deleting;
        ctx.registry.save(&lock, &record)?;
    }
    crate::sys::process::kill_all_of_uid(record.uid, record.gid)
        .with_context(|| format!("stopping the processes of '{}'", record.user))?;
    share::revoke_all(ctx, &lock, &mut record).context("revoking shares")?;
    creds::remove_all(ctx, &lock, &mut record).context("removing credentials")?;
    remove_account(&record, keep_home)?;
    let secrets = ctx.registry.secrets_dir(name);
    if cleanup::remove(&secrets, Select::All)? > 0 {
        bail!("could not remove {}", secrets.display());
    }
    ctx.registry.remove(&lock, name)?;
    eventlog::record(
        ctx,
        "delete",
        name,
        if keep_home { "keep-home" } else { "" },
    );
    Ok(())
}

/// Removes the account, its group, crontab, temp files, home (unless kept) and login-screen
/// entry. Each step tolerates "already gone", so a repeated delete converges.
fn remove_account(record: &AgentRecord, keep_home: bool) -> Result<()> {
    remove_crontab(&record.user);
    for dir in SHARED_TEMP_DIRS {
        cleanup::remove(Path::new(dir), Select::OwnedBy(record.uid))
            .with_context(|| format!("removing files of '{}' in {dir}", record.user))?;
    }
    if let Some(user) = account::user_by_name(&record.user)? {
        if user.uid.as_raw() != record.uid {
            bail!(
                "user '{}' has uid {}, not the agent's",
                record.user,
                user.uid
            );
        }
        account::delete_user(&record.user)?;
    }
    if let Some(group) = account::group_by_name(&record.user)? {
        if group.gid.as_raw() == record.gid {
            account::delete_group(&record.user)?;
        }
    }
    if !keep_home {
        let left = cleanup::remove(&record.home, Select::All)?;
        if left > 0 {
            bail!(
                "home {}: {left} entries could not be removed",
                record.home.display()
            );
        }
    }
    let hidden = Path::new(ACCOUNTS_SERVICE_DIR).join(&record.user);
    match std::fs::remove_file(&hidden) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", hidden.display()))
        }
        _ => Ok(()),
    }
}

/// Spool files of cron: a job left behind would run the agent again after its deletion.
fn remove_crontab(user: &str) {
    for spool in ["/var/spool/cron/crontabs", "/var/spool/cron"] {
        let path = Path::new(spool).join(user);
        if path.symlink_metadata().is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(path);
        }
    }
}
