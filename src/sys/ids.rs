//! Acting with someone else's access rights for a moment (no confused deputy).
//!
//! The helper reads files on the caller's behalf with the caller's effective uid, gid and
//! groups, so it can reach nothing the caller could not. Only the effective ids change: the
//! real and saved uid stay 0, so the caller still cannot signal or trace the process.

use anyhow::{Context, Result};
use nix::unistd::{Gid, Uid, setegid, seteuid, setgroups};

/// A Unix identity: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Runs `f` with the effective ids of `who`, then restores root. The process must be
/// single-threaded (setgroups and the effective ids are per process in glibc).
pub fn with_identity<T>(who: &Identity, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if who.uid == 0 {
        return f();
    }
    let groups: Vec<Gid> = who.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&groups).context("setgroups")?;
    let switched = setegid(Gid::from_raw(who.gid))
        .and_then(|()| seteuid(Uid::from_raw(who.uid)))
        .context("switching to the caller's identity");
    let result = switched.and_then(|()| f());
    restore_root();
    result
}

fn restore_root() {
    // Failing to get root back would leave the process half-privileged: stop at once.
    if seteuid(Uid::from_raw(0)).is_err()
        || setegid(Gid::from_raw(0)).is_err()
        || setgroups(&[]).is_err()
    {
        std::process::abort();
    }
}
