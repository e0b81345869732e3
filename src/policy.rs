//! Caller identity and authorization (DESIGN.md section 2).
//!
//! - The caller is the real uid; when the real uid is 0 and SUDO_UID is set, the caller is
//!   that user (so `sudo agentuser create coder` makes the human the owner), still with
//!   root's authority.
//! - Root may do anything. Others may `create` when they are in `creators_group` (up to
//!   `max_agents_per_owner`), and use every other command only on agents they own.
//! - An agent uid may never use agentuser.
#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, anyhow, bail};
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use crate::context::{CallerEnv, Context};
use crate::registry::AgentRecord;
use crate::sys::ids::Identity;

#[derive(Debug, Clone)]
pub struct Caller {
    /// The acting user (the human under sudo).
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    /// The real uid was 0: root authority.
    pub is_root: bool,
    /// Root authority came through sudo; `uid` is SUDO_UID.
    pub via_sudo: bool,
    /// The real uid of the process, whatever SUDO_UID says.
    pub real_uid: u32,
}

impl Caller {
    /// Identifies the caller. Must run before the process drops the caller's groups.
    pub fn identify(env: &CallerEnv) -> Result<Caller> {
        let real_uid = Uid::current().as_raw();
        if real_uid == 0 {
            if let Some(sudo_uid) = env.get("SUDO_UID").and_then(|v| v.to_str()) {
                let uid: u32 = sudo_uid.parse().map_err(|_| {
                    anyhow!("SUDO_UID '{}' is not a uid", sudo_uid.escape_default())
                })?;
                if uid != 0 {
                    let user = lookup_uid(uid)?;
                    let groups = supplementary_groups(&user)?;
                    return Ok(Caller {
                        uid,
                        gid: user.gid.as_raw(),
                        groups,
                        name: user.name,
                        is_root: true,
                        via_sudo: true,
                        real_uid,
                    });
                }
            }
        }
        let user = lookup_uid(real_uid)?;
        let groups = nix::unistd::getgroups()
            .context("getgroups")?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Ok(Caller {
            uid: real_uid,
            gid: Gid::current().as_raw(),
            groups,
            name: user.name,
            is_root: real_uid == 0,
            via_sudo: false,
            real_uid,
        })
    }

    /// The identity whose access rights apply to files read on the caller's behalf.
    pub fn identity(&self) -> Identity {
        Identity {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn lookup_uid(uid: u32) -> Result<User> {
    User::from_uid(Uid::from_raw(uid))
        .with_context(|| format!("looking up uid {uid}"))?
        .ok_or_else(|| anyhow!("caller uid {uid} has no passwd entry"))
}

fn supplementary_groups(user: &User) -> Result<Vec<u32>> {
    let name = std::ffi::CString::new(user.name.as_bytes())?;
    Ok(getgrouplist(&name, user.gid)
        .with_context(|| format!("groups of {}", user.name))?
        .into_iter()
        .map(Gid::as_raw)
        .collect())
}

/// The owner an agent is created for.
#[derive(Debug, Clone)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
}

/// Refuses every request from an agent account (THREAT-MODEL row 20): a uid with an agent
/// record, a uid ever handed to an agent, or any uid in the configured agent range.
///
/// Damage never lets a uid through (README, "State"): a damaged tombstone line counts every
/// number in it as tombstoned, and a damaged record still refuses the uid its text seems to
/// name and the uid of the account its name stands for.
pub fn refuse_agent_callers(ctx: &Context) -> Result<()> {
    let caller = &ctx.caller;
    let suspects = [caller.real_uid, caller.uid];
    let refuse = || anyhow!("permission denied: agent accounts may not use agentuser");
    let tombstones = ctx.registry.tombstones();
    tombstones.warn();
    for uid in suspects {
        if uid != 0 && (ctx.config.uid_in_range(uid) || tombstones.may_hold(uid)) {
            return Err(refuse());
        }
    }
    let scan = ctx.registry.scan()?;
    if scan.records.iter().any(|r| suspects.contains(&r.uid)) {
        return Err(refuse());
    }
    for damage in &scan.damaged {
        damage.warn();
        let account = crate::account::user_by_name(&ctx.config.user_name(&damage.name))?
            .map(|u| u.uid.as_raw());
        let named = [damage.uid, account];
        if named
            .iter()
            .flatten()
            .any(|uid| *uid != 0 && suspects.contains(uid))
        {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Decides who owns a new agent and whether the caller may create it.
pub fn authorize_create(ctx: &Context, owner: Option<&str>) -> Result<Owner> {
    let caller = &ctx.caller;
    let owner = match owner {
        Some(name) if caller.is_root => {
            let user = User::from_name(name)
                .with_context(|| format!("looking up owner '{name}'"))?
                .ok_or_else(|| anyhow!("unknown owner '{}'", name.escape_default()))?;
            Owner {
                name: user.name,
                uid: user.uid.as_raw(),
            }
        }
        Some(name) if name != caller.name => {
            bail!("permission denied: only root may create an agent for another owner")
        }
        _ => Owner {
            name: caller.name.clone(),
            uid: caller.uid,
        },
    };
    if ctx.config.uid_in_range(owner.uid) || ctx.registry.tombstones().may_hold(owner.uid) {
        bail!("owner '{}' is an agent account", owner.name);
    }
    if !caller.is_root {
        let group = Group::from_name(&ctx.config.creators_group)
            .with_context(|| format!("looking up group '{}'", ctx.config.creators_group))?;
        let member = group.is_some_and(|g| caller.in_group(g.gid.as_raw()));
        if !member {
            bail!(
                "permission denied: only root and members of group '{}' may create agents",
                ctx.config.creators_group
            );
        }
    }
    Ok(owner)
}

/// Root, or the agent's owner, may act on an agent.
pub fn authorize_agent(ctx: &Context, record: &AgentRecord) -> Result<()> {
    if may_see(ctx, record) {
        Ok(())
    } else {
        Err(not_yours(&record.name))
    }
}

/// Whether the caller may see an agent in `list` (root sees all).
pub fn may_see(ctx: &Context, record: &AgentRecord) -> bool {
    ctx.caller.is_root || record.owner_uid == ctx.caller.uid
}

/// The error for someone else's agent: the same as for a name no agent has, so that
/// non-root callers learn nothing about other owners' agents.
pub fn not_yours(name: &str) -> anyhow::Error {
    no_such_agent(name)
}

pub fn no_such_agent(name: &str) -> anyhow::Error {
    anyhow!("agent '{name}': no such agent")
}

/// Refuses, before any command looks at or locks the agent, a non-root caller naming an
/// agent it does not own: "no such agent", or for `create` "the name is unavailable",
/// whatever state the record is in (a damaged one that still names its owner included).
/// Nothing about the other agent (its owner, its lock holder, its state) reaches the caller.
pub fn refuse_hidden(ctx: &Context, name: &str, creating: bool) -> Result<()> {
    if ctx.caller.is_root || crate::names::check_agent_name(name).is_err() {
        return Ok(());
    }
    // A record too damaged to name its owner is not hidden: its errors say only that it is
    // damaged, and the account name is in /etc/passwd anyway.
    let owner = ctx.registry.owner_uid(name);
    if owner.is_none_or(|uid| uid == ctx.caller.uid) {
        return Ok(());
    }
    if creating {
        bail!("agent '{name}': the name is unavailable: choose another");
    }
    Err(no_such_agent(name))
}

/// The identity of a user who is not the caller (an agent's owner, whose rights apply when
/// `sync` reads a credential source without the owner present).
pub fn identity_of(uid: u32) -> Result<Identity> {
    let user = User::from_uid(Uid::from_raw(uid))
        .with_context(|| format!("looking up uid {uid}"))?
        .ok_or_else(|| anyhow!("uid {uid} has no passwd entry"))?;
    let groups = supplementary_groups(&user)?;
    Ok(Identity {
        uid,
        gid: user.gid.as_raw(),
        groups,
    })
}

/// The name of a user for messages: the passwd name, else "uid N".
pub fn name_of(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// The primary group of a user, from the passwd database (0 for root).
pub fn primary_gid_of(uid: u32) -> Option<u32> {
    if uid == 0 {
        return Some(0);
    }
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
}

/// The home directory of a user, from the passwd database (never from $HOME).
pub fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// The record of agent `name`, when it exists and the caller may act on it.
pub fn agent(ctx: &Context, name: &str) -> Result<AgentRecord> {
    crate::names::check_agent_name(name)?;
    refuse_hidden(ctx, name, false)?;
    let record = ctx
        .registry
        .load(name)?
        .ok_or_else(|| no_such_agent(name))?;
    authorize_agent(ctx, &record)?;
    Ok(record)
}

/// Like [`agent`], and the agent must be ready: not in the middle of an interrupted create
/// or delete.
pub fn ready_agent(ctx: &Context, name: &str) -> Result<AgentRecord> {
    let record = agent(ctx, name)?;
    if record.state != crate::registry::AgentState::Ready {
        bail!("agent '{name}': not ready (an interrupted create or delete: run it again)");
    }
    Ok(record)
}
