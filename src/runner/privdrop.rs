//! Dropping to the agent's identity for good (docs/design.md section 4 step 6, docs/threat-model.md
//! row 19): groups first, then gid, then uid, then a check that nothing of root or of the caller
//! survived, then no-new-privs.
#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, getgroups, getresgid, getresuid, setgroups, setresgid, setresuid};

/// The agent account's groups as the group database lists them (what login, su and cron
/// give it), its own group first. None of the caller's groups ever enters here; an admin
/// who adds the account to a group grants that access on purpose (and `audit` reports
/// groups such as docker or sudo). Membership in root's group is refused.
pub fn groups_of(user: &str, gid: u32) -> Result<Vec<u32>> {
    let name = std::ffi::CString::new(user).context("user name")?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .with_context(|| format!("groups of {user}"))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    groups.retain(|&g| g != gid);
    groups.insert(0, gid);
    groups.dedup();
    if groups.contains(&0) {
        bail!("{user} is a member of group 0: refusing to run it");
    }
    Ok(groups)
}

/// Switches every uid and gid slot to the agent's and sets exactly its groups.
pub fn drop_to(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX || groups.contains(&0) {
        bail!("refusing to run as uid {uid} gid {gid} groups {groups:?}");
    }
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let list: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&list).context("setgroups")?;
    setresgid(g, g, g).context("setresgid")?;
    setresuid(u, u, u).context("setresuid")?;
    verify(uid, gid, groups)?;
    nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    Ok(())
}

/// Checks the result of the switch from the kernel's point of view.
fn verify(uid: u32, gid: u32, expected_groups: &[u32]) -> Result<()> {
    let ru = getresuid().context("getresuid")?;
    let rg = getresgid().context("getresgid")?;
    let uids = [ru.real, ru.effective, ru.saved].map(Uid::as_raw);
    let gids = [rg.real, rg.effective, rg.saved].map(Gid::as_raw);
    let groups: Vec<u32> = getgroups()
        .context("getgroups")?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if uids != [uid; 3] || gids != [gid; 3] || groups.iter().any(|g| !expected_groups.contains(g)) {
        bail!("privilege drop left other ids: uids {uids:?} gids {gids:?} groups {groups:?}");
    }
    // Root's capabilities went with uid 0; getting uid 0 back must be impossible.
    if !crate::sys::spawn::has_no_capabilities() {
        bail!("privilege drop left capabilities");
    }
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        bail!("privilege drop is reversible");
    }
    Ok(())
}
