//! Admin configuration: `/etc/agentuser/config.toml`, with built-in defaults when absent.
//!
//! The path is fixed: nothing in the environment or on the command line can point the
//! privileged process at another file. The file must be root-owned and not writable by group
//! or others, and unknown keys are refused, so a typo cannot silently weaken policy.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::names::{AGENT_NAME_MAX, is_valid_user_name};
use crate::record::Network;

pub const CONFIG_PATH: &str = "/etc/agentuser/config.toml";
const CONFIG_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Group whose members may create agents (root always may).
    pub creators_group: String,
    /// Most agents one non-root owner may have.
    pub max_agents_per_owner: u32,
    /// First uid (and gid) of the agent range.
    pub uid_min: u32,
    /// Last uid (and gid) of the agent range.
    pub uid_max: u32,
    /// Unix account name of an agent; `{name}` is replaced by the agent name.
    pub user_template: String,
    /// Directory holding agent homes.
    pub home_base: PathBuf,
    /// Login shell of agent accounts.
    pub shell: PathBuf,
    /// PATH inside the agent's environment.
    pub path: String,
    /// Caller environment variables passed through to the agent by name.
    pub env_allowlist: Vec<String>,
    /// Network view when neither `exec --network` nor the agent's own setting gives one.
    pub network: Network,
    /// HTTP proxy (`http://HOST:PORT`) the policy point connects through, for hosts whose
    /// own egress needs one. Empty: connect directly.
    pub upstream_proxy: String,
    /// Largest credential file `cred add` copies, in bytes.
    pub cred_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            creators_group: "agentuser".into(),
            max_agents_per_owner: 8,
            // Above every range in common use (human 1000-60000, systemd dynamic users
            // 61184-65519, subordinate ids from 100000, nspawn containers up to 1879048191),
            // so an agent uid never coincides with another user's uid or mapped subuid.
            uid_min: 1_900_000_000,
            uid_max: 1_900_999_999,
            user_template: "agent-{name}".into(),
            home_base: PathBuf::from("/var/lib/agentuser/homes"),
            shell: PathBuf::from("/bin/bash"),
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            env_allowlist: Vec::new(),
            network: Network::Allowlist,
            upstream_proxy: String::new(),
            cred_max_bytes: 1 << 20,
        }
    }
}

impl Config {
    /// Loads the config from its fixed path, or the defaults when the file does not exist.
    pub fn load() -> Result<Config> {
        Self::load_from(Path::new(CONFIG_PATH))
    }

    fn load_from(path: &Path) -> Result<Config> {
        let what = || format!("config {}", path.display());
        let mut file = match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(what),
        };
        let meta = file.metadata().with_context(what)?;
        check_trusted(&meta, true).with_context(what)?;
        if let Some(parent) = path.parent() {
            let dir = std::fs::symlink_metadata(parent).with_context(what)?;
            if !dir.is_dir() {
                bail!("config directory {}: not a directory", parent.display());
            }
            check_trusted(&dir, false)
                .with_context(|| format!("config directory {}", parent.display()))?;
        }
        if meta.len() > CONFIG_MAX_BYTES {
            bail!("{}: larger than {CONFIG_MAX_BYTES} bytes", what());
        }
        let mut text = String::new();
        file.read_to_string(&mut text).with_context(what)?;
        Self::parse(&text).with_context(what)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's messages span several lines with a source excerpt; keep the gist.
            anyhow::anyhow!("{}", e.message().trim())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !is_valid_user_name(&self.creators_group) {
            bail!(
                "creators_group: invalid group name '{}'",
                self.creators_group.escape_default()
            );
        }
        if self.uid_min < 1000 || self.uid_min > self.uid_max {
            bail!("uid_min/uid_max: need 1000 <= uid_min <= uid_max");
        }
        // -1 and the 16-bit -1 are "no id" to the kernel and tools; 65534 is nobody.
        for reserved in [65534u32, 65535, u32::MAX - 1, u32::MAX] {
            if (self.uid_min..=self.uid_max).contains(&reserved) {
                bail!("uid_min/uid_max: the range includes reserved id {reserved}");
            }
        }
        if self.user_template.matches("{name}").count() != 1 {
            bail!("user_template: must contain {{name}} exactly once");
        }
        let longest = self.user_name(&"a".repeat(AGENT_NAME_MAX));
        if !is_valid_user_name(&longest) || !is_valid_user_name(&self.user_name("a")) {
            bail!(
                "user_template: '{}' does not give valid user names of at most 32 characters",
                self.user_template.escape_default()
            );
        }
        check_absolute("home_base", &self.home_base)?;
        if self.home_base == Path::new("/") {
            bail!("home_base: must not be /");
        }
        check_absolute("shell", &self.shell)?;
        for dir in self.path.split(':') {
            check_absolute("path", Path::new(dir))?;
        }
        for var in &self.env_allowlist {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                bail!(
                    "env_allowlist: invalid variable name '{}'",
                    var.escape_default()
                );
            }
        }
        if !self.upstream_proxy.is_empty() {
            upstream_proxy_authority(&self.upstream_proxy)
                .map_err(|e| anyhow::anyhow!("upstream_proxy: {e}"))?;
        }
        if self.cred_max_bytes == 0 {
            bail!("cred_max_bytes: must be positive");
        }
        Ok(())
    }

    /// The Unix account name for an agent name.
    pub fn user_name(&self, agent: &str) -> String {
        self.user_template.replace("{name}", agent)
    }

    /// The home directory of an agent account.
    pub fn home_of(&self, user: &str) -> PathBuf {
        self.home_base.join(user)
    }

    pub fn uid_in_range(&self, uid: u32) -> bool {
        (self.uid_min..=self.uid_max).contains(&uid)
    }

    /// Every key the config file accepts, for documentation checks.
    pub fn keys() -> Vec<String> {
        match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

fn check_absolute(key: &str, path: &Path) -> Result<()> {
    let normal = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !normal {
        bail!(
            "{key}: '{}' is not a normalized absolute path",
            path.display()
        );
    }
    Ok(())
}

/// A file or directory the privileged process trusts must be root's and not writable by
/// anyone else.
fn check_trusted(meta: &std::fs::Metadata, want_file: bool) -> Result<()> {
    if want_file && !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.uid() != 0 {
        bail!("not owned by root");
    }
    if meta.mode() & 0o022 != 0 {
        bail!("writable by group or others");
    }
    Ok(())
}

/// The HOST:PORT of `upstream_proxy = "http://HOST:PORT"` (an HTTP proxy that supports
/// CONNECT; no user, no path), or why it is not one.
pub fn upstream_proxy_authority(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or("must be http://HOST:PORT (an HTTP proxy that supports CONNECT)")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let uri: hyper::Uri = format!("http://{authority}/")
        .parse()
        .map_err(|_| format!("'{}': not a valid HOST:PORT", authority.escape_default()))?;
    match (uri.host(), uri.port_u16()) {
        (Some(_), Some(_)) if !authority.contains(['@', '/']) => Ok(authority.to_owned()),
        _ => Err(format!(
            "'{}': give HOST:PORT (no user, no path)",
            authority.escape_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().user_name("coder"), "agent-coder");
        let c = Config::parse("").unwrap();
        assert_eq!(c.max_agents_per_owner, 8);
    }

    #[test]
    fn hostile_configs_are_refused() {
        for text in [
            "unknown_key = 1",
            "uid_min = 0",
            "uid_min = 60000\nuid_max = 70000",
            "uid_min = 5000\nuid_max = 4000",
            "user_template = \"agent\"",
            "user_template = \"{name}-{name}\"",
            "user_template = \"Agent-{name}\"",
            "user_template = \"an-extremely-long-prefix-{name}\"",
            "home_base = \"relative\"",
            "home_base = \"/\"",
            "home_base = \"/var/../etc\"",
            "shell = \"bash\"",
            "path = \"/usr/bin:.\"",
            "network = \"bridge\"",
            "upstream_proxy = \"socks5://proxy:1080\"",
            "upstream_proxy = \"http://proxy\"",
            "max_agents_per_owner = -1",
            "creators_group = \"a b\"",
            "env_allowlist = [\"A=B\"]",
            "[[[",
        ] {
            assert!(Config::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn keys_cover_fields() {
        let keys = Config::keys();
        assert!(keys.contains(&"uid_min".to_string()));
        assert!(keys.contains(&"cred_max_bytes".to_string()));
    }
}
