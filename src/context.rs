//! What every command gets: who called, the admin policy, the registry, and the caller's
//! environment (kept aside, never consulted by the privileged process itself).
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};

use anyhow::{Context as _, Result, anyhow};
use nix::unistd::{Gid, Uid, User};

use crate::account::supplementary_groups;
use crate::config::Config;
use crate::registry::Registry;
use crate::sys::ids::Identity;

pub struct Context {
    pub caller: Caller,
    pub config: Config,
    pub registry: Registry,
    pub caller_env: CallerEnv,
}

/// The caller's environment as it was at start-up. Only the runner may pick values out of
/// it, by an allowlist, for the agent. Paths, policy and log levels never come from here.
#[derive(Debug, Default, Clone)]
pub struct CallerEnv {
    vars: Vec<(OsString, OsString)>,
}

impl CallerEnv {
    pub fn new(vars: Vec<(OsString, OsString)>) -> Self {
        CallerEnv { vars }
    }

    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_os_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.as_os_str(), v.as_os_str()))
    }
}

/// Who called the helper (recorded before it becomes fully root).
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

    /// The identity whose rights resolve paths the caller names: root's for a root caller
    /// (under sudo too: the caller has root's authority), the caller's own otherwise.
    pub fn path_rights(&self) -> Identity {
        if self.is_root {
            Identity {
                uid: 0,
                gid: 0,
                groups: Vec::new(),
            }
        } else {
            self.identity()
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn lookup_uid(uid: u32) -> Result<User> {
    User::from_uid(Uid::from_raw(uid))
        .with_context(|| format!("looking up uid {uid}"))?
        .ok_or_else(|| anyhow!("caller uid {uid} has no passwd entry"))
}
