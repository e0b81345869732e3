//! Dropping to the agent's identity for good (DESIGN.md section 4 step 6, THREAT-MODEL row
//! 19): groups first, then gid, then uid, then a check that nothing of root or of the
//! caller survived, then no-new-privs.
#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, getgroups, getresgid, getresuid, setgroups, setresgid, setresuid};

/// Switches every uid and gid slot to the agent's and keeps its own group only.
pub fn drop_to(uid: u32, gid: u32) -> Result<()> {
    if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX {
        bail!("refusing to run as uid {uid} gid {gid}");
    }
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[g]).context("setgroups")?;
    setresgid(g, g, g).context("setresgid")?;
    setresuid(u, u, u).context("setresuid")?;
    verify(uid, gid)?;
    nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    Ok(())
}

/// Checks the result of the switch from the kernel's point of view.
fn verify(uid: u32, gid: u32) -> Result<()> {
    let ru = getresuid().context("getresuid")?;
    let rg = getresgid().context("getresgid")?;
    let uids = [ru.real, ru.effective, ru.saved].map(Uid::as_raw);
    let gids = [rg.real, rg.effective, rg.saved].map(Gid::as_raw);
    let groups: Vec<u32> = getgroups()
        .context("getgroups")?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if uids != [uid; 3] || gids != [gid; 3] || groups.iter().any(|&g| g != gid) {
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
