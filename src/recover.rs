//! Root's `delete` of an agent whose record is damaged (README, "State"): the agent is
//! rebuilt from what can be trusted, written back as a valid `deleting` record (so the
//! journal is whole again and an interrupted delete is completed by running it again), and
//! deleted like any other.
//!
//! What is trusted: the account name from the name template, its uid from the passwd
//! database, and only when that uid is one agentuser hands out (in the range or
//! tombstoned); the home from the template. From the damaged text, read without its
//! unknown fields, only the shares and credentials are taken, and only when it names the
//! same uid: removing that uid's ACL entries can harm no one else.
#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt;

use anyhow::{Result, bail};

use crate::account;
use crate::context::Context;
use crate::registry::{AgentRecord, AgentState, Lock};

/// The record to delete a damaged agent by, saved as `deleting`; `None` when nothing but
/// the damaged record was left (it is removed then). Says on stderr what cannot be cleaned.
pub fn rebuild(
    ctx: &Context,
    lock: &Lock,
    name: &str,
    damage: &anyhow::Error,
) -> Result<Option<AgentRecord>> {
    let why = crate::error::one_line(damage);
    eprintln!("agentuser: warning: deleting agent '{name}' with a damaged record: {why}");
    let user = ctx.config.user_name(name);
    let salvage = ctx.registry.salvage(name);
    let account = account::user_by_name(&user)?;
    let uid = match (&account, &salvage) {
        (Some(account), _) => account.uid.as_raw(),
        (None, Some(salvage)) => salvage.uid,
        (None, None) => {
            remove_orphan_home(ctx, &user)?;
            ctx.registry.remove(lock)?;
            return Ok(None);
        }
    };
    let tombstones = ctx.registry.tombstones();
    if uid == 0 || !(ctx.config.uid_in_range(uid) || tombstones.may_hold(uid)) {
        bail!(
            "agent '{name}': user '{user}' has uid {uid}, which agentuser never handed out: \
             not removing it"
        );
    }
    let gid = match account::group_by_name(&user)? {
        Some(group) => group.gid.as_raw(),
        None => account.as_ref().map_or(uid, |a| a.gid.as_raw()),
    };
    let mut record = AgentRecord {
        name: name.to_string(),
        state: AgentState::Deleting,
        owner: String::new(),
        owner_uid: 0,
        user: user.clone(),
        uid,
        gid,
        home: ctx.config.home_of(&user),
        comment: String::new(),
        created: 0,
        shares: Vec::new(),
        credentials: Vec::new(),
        net_allow: Vec::new(),
        env: Default::default(),
        cwd: None,
        network: None,
    };
    match salvage {
        Some(salvage) if salvage.uid == uid => {
            record.owner = salvage.owner;
            record.owner_uid = salvage.owner_uid;
            record.shares = salvage.shares;
            record.credentials = salvage.credentials;
        }
        _ => eprintln!(
            "agentuser: warning: agent '{name}': its shares and credentials are unknown: ACL \
             entries of uid {uid} outside its home cannot be removed (find them with \
             'getfacl -R -s PATH | grep user:{uid}')"
        ),
    }
    ctx.registry.save(lock, &record)?;
    Ok(Some(record))
}

/// Whether an account or home by the name template of `name` exists that agentuser handed
/// out (its uid in the range or tombstoned) while no record names it: left by a create
/// killed at the wrong moment, or by hand. Root can remove it with `delete`.
pub fn orphan_exists(ctx: &Context, name: &str) -> Result<bool> {
    let user = ctx.config.user_name(name);
    let tombstones = ctx.registry.tombstones();
    let ours = |uid: u32| uid != 0 && (ctx.config.uid_in_range(uid) || tombstones.may_hold(uid));
    if let Some(account) = account::user_by_name(&user)? {
        return Ok(ours(account.uid.as_raw()));
    }
    let home = ctx.config.home_of(&user);
    Ok(home
        .symlink_metadata()
        .is_ok_and(|m| m.is_dir() && ours(m.uid())))
}

/// With no account and nothing readable in the record, the home (by the template) goes when
/// it belongs to a uid agentuser handed out.
fn remove_orphan_home(ctx: &Context, user: &str) -> Result<()> {
    let home = ctx.config.home_of(user);
    let Ok(meta) = home.symlink_metadata() else {
        return Ok(());
    };
    let tombstones = ctx.registry.tombstones();
    if meta.is_dir() && (ctx.config.uid_in_range(meta.uid()) || tombstones.may_hold(meta.uid())) {
        if crate::cleanup::remove(&home, crate::cleanup::Select::All)? > 0 {
            bail!("home {}: some entries could not be removed", home.display());
        }
    } else {
        eprintln!(
            "agentuser: warning: {} is not an agent's home: left in place",
            home.display()
        );
    }
    Ok(())
}
