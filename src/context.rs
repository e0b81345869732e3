//! What every command gets: who called, the admin policy, the registry, and the caller's
//! environment (kept aside, never consulted by the privileged process itself).
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};

use crate::config::Config;
use crate::policy::Caller;
use crate::registry::Registry;

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
