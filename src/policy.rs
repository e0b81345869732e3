//! Caller identity and authorization (docs/design.md section 2).
//!
//! - The caller is the real uid; when the real uid is 0 and SUDO_UID is set, the caller is
//!   that user (so `sudo agentuser create coder` makes the human the owner), still with
//!   root's authority.
//! - Root may do anything. Others may `create` when they are in `creators_group` (up to
//!   `max_agents_per_owner`), and use every other command only on agents they own.
//! - An agent uid may never use agentuser.
#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, anyhow, bail};
use nix::unistd::{Group, User};

use crate::config::Config;
use crate::context::{Caller, Context};
use crate::registry::AgentRecord;

/// The owner an agent is created for.
#[derive(Debug, Clone)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
}

/// Refuses every request from an agent account (docs/threat-model.md row 20): a uid with an agent
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
    let scan = ctx.registry.scan_once()?;
    let tombstoned = |uid| tombstones.may_hold(uid);
    if suspects
        .iter()
        .any(|&uid| is_agent_uid(uid, &ctx.config, tombstoned, &scan.records))
    {
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
    let owner_is_agent =
        ctx.config.uid_in_range(owner.uid) || ctx.registry.tombstones().may_hold(owner.uid);
    let creators_gid = if caller.is_root {
        None
    } else {
        Group::from_name(&ctx.config.creators_group)
            .with_context(|| format!("looking up group '{}'", ctx.config.creators_group))?
            .map(|g| g.gid.as_raw())
    };
    check_create(caller, &owner, owner_is_agent, creators_gid, &ctx.config)?;
    Ok(owner)
}

/// The decision behind [`authorize_create`], from facts alone: an owner that is an agent
/// account is refused; root may create for anyone; others must be in the creators group
/// (`creators_gid`, None when the group does not exist).
pub fn check_create(
    caller: &Caller,
    owner: &Owner,
    owner_is_agent: bool,
    creators_gid: Option<u32>,
    config: &Config,
) -> Result<()> {
    if owner_is_agent {
        bail!("owner '{}' is an agent account", owner.name);
    }
    if !caller.is_root && !creators_gid.is_some_and(|gid| caller.in_group(gid)) {
        bail!(
            "permission denied: only root and members of group '{}' may create agents",
            config.creators_group
        );
    }
    Ok(())
}

/// Whether one more agent fits the owner's quota (`max_agents_per_owner`; root's own
/// requests are not counted against it).
pub fn check_quota(caller: &Caller, owner: &Owner, owned: usize, config: &Config) -> Result<()> {
    if !caller.is_root && owned >= config.max_agents_per_owner as usize {
        bail!(
            "agent limit reached: '{}' already owns {owned} agents (max_agents_per_owner)",
            owner.name
        );
    }
    Ok(())
}

/// Whether `uid` is, or was, an agent's: in the configured range, tombstoned, or named by a
/// record. Such a caller is refused everything.
pub fn is_agent_uid(
    uid: u32,
    config: &Config,
    tombstoned: impl Fn(u32) -> bool,
    records: &[AgentRecord],
) -> bool {
    uid != 0
        && (config.uid_in_range(uid) || tombstoned(uid) || records.iter().any(|r| r.uid == uid))
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
    may_act_on(&ctx.caller, record)
}

/// Root, or the agent's owner, may act on an agent; nobody else.
pub fn may_act_on(caller: &Caller, record: &AgentRecord) -> bool {
    caller.is_root || record.owner_uid == caller.uid
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

#[cfg(test)]
mod tests {
    //! Authorization as functions of caller, config and records: no root, no state directory.
    use super::*;
    use crate::record::{AgentState, Network};

    fn caller(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: groups.to_vec(),
            name: format!("user{uid}"),
            is_root: uid == 0,
            via_sudo: false,
            real_uid: uid,
        }
    }

    fn owner(uid: u32) -> Owner {
        Owner {
            name: format!("user{uid}"),
            uid,
        }
    }

    fn record(name: &str, uid: u32, owner_uid: u32) -> AgentRecord {
        AgentRecord {
            name: name.into(),
            state: AgentState::Ready,
            owner: format!("user{owner_uid}"),
            owner_uid,
            user: format!("agent-{name}"),
            uid,
            gid: uid,
            home: format!("/var/lib/agentuser/homes/agent-{name}").into(),
            comment: String::new(),
            created: 0,
            shares: Vec::new(),
            credentials: Vec::new(),
            network: Some(Network::None),
            net_allow: Vec::new(),
            env: Default::default(),
            cwd: None,
        }
    }

    #[test]
    fn only_root_and_the_owner_may_act_on_an_agent() {
        let coder = record("coder", 1_900_000_000, 1000);
        assert!(may_act_on(&caller(0, &[]), &coder));
        assert!(may_act_on(&caller(1000, &[]), &coder));
        assert!(
            !may_act_on(&caller(1001, &[1000]), &coder),
            "same group is not enough"
        );
    }

    #[test]
    fn creators_need_the_group_and_owners_must_not_be_agents() {
        let config = Config::default();
        let alice = caller(1000, &[50]);
        assert!(check_create(&alice, &owner(1000), false, Some(50), &config).is_ok());
        let err = check_create(&alice, &owner(1000), false, Some(51), &config).unwrap_err();
        assert!(err.to_string().contains("members of group"), "{err}");
        assert!(check_create(&alice, &owner(1000), false, None, &config).is_err());
        assert!(check_create(&caller(0, &[]), &owner(1000), false, None, &config).is_ok());
        let err = check_create(&caller(0, &[]), &owner(1_900_000_000), true, None, &config);
        assert!(err.unwrap_err().to_string().contains("is an agent account"));
    }

    #[test]
    fn the_quota_binds_everyone_but_root() {
        let config = Config::default();
        let max = config.max_agents_per_owner as usize;
        let alice = caller(1000, &[50]);
        assert!(check_quota(&alice, &owner(1000), max - 1, &config).is_ok());
        let err = check_quota(&alice, &owner(1000), max, &config).unwrap_err();
        assert!(err.to_string().contains("agent limit reached"), "{err}");
        assert!(check_quota(&caller(0, &[]), &owner(1000), max + 5, &config).is_ok());
    }

    #[test]
    fn agent_uids_are_recognised_by_range_tombstone_and_record() {
        let config = Config::default();
        let records = [record("old", 5000, 1000)];
        let none = |_| false;
        assert!(is_agent_uid(config.uid_min, &config, none, &[]));
        assert!(is_agent_uid(config.uid_max, &config, none, &[]));
        assert!(!is_agent_uid(config.uid_max + 1, &config, none, &[]));
        assert!(is_agent_uid(4000, &config, |uid| uid == 4000, &[]));
        assert!(is_agent_uid(5000, &config, none, &records));
        assert!(!is_agent_uid(1000, &config, none, &records));
        assert!(
            !is_agent_uid(0, &config, |_| true, &records),
            "root is never an agent"
        );
    }
}
