//! The agent's environment (docs/design.md section 4 step 7, docs/threat-model.md row 4): built
//! from nothing. The caller's environment contributes only TERM and locale variables that pass
//! validation and the names the admin allowlisted; everything else is fixed or explicit.
#![forbid(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;

use crate::context::CallerEnv;
use crate::error::usage;

/// An ordered environment in which a later value replaces an earlier one.
#[derive(Debug, Default)]
pub struct Env {
    vars: Vec<(String, Vec<u8>)>,
}

impl Env {
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref().to_vec();
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_owned(), value)),
        }
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// `NAME=VALUE` strings for execve; a value with a NUL byte is an error.
    pub fn to_cstrings(&self) -> Result<Vec<CString>> {
        self.vars
            .iter()
            .map(|(n, v)| {
                let mut entry = n.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(v);
                CString::new(entry)
                    .map_err(|_| anyhow::anyhow!("environment variable {n}: contains a NUL byte"))
            })
            .collect()
    }
}

/// The identity part of the environment.
pub struct Identity<'a> {
    pub home: &'a OsStr,
    pub user: &'a str,
    pub shell: &'a OsStr,
    pub path: &'a str,
}

/// The agent's PATH: its own directories for user-level installs first (as Debian's
/// /etc/profile does for ~/bin and ~/.local/bin; ~/.cargo/bin for `cargo install`), then
/// the configured PATH. They are the agent's own: it can only shadow commands for itself.
pub fn agent_path(home: &OsStr, configured: &str) -> String {
    let home = home.to_string_lossy();
    let home = home.trim_end_matches('/');
    format!("{home}/.local/bin:{home}/bin:{home}/.cargo/bin:{configured}")
}

/// Terminal capabilities that are not secrets: passed from the caller so TUIs keep
/// truecolor and their terminal-specific features.
const TERMINAL_CAPABILITIES: [&str; 4] = [
    "COLORTERM",
    "TERM_PROGRAM",
    "TERM_PROGRAM_VERSION",
    "NO_COLOR",
];

/// Names the fixed part owns; the admin allowlist cannot take them from the caller.
const FIXED: [&str; 5] = ["HOME", "USER", "LOGNAME", "SHELL", "PATH"];

/// Builds the environment: fixed identity, validated TERM and locale from the caller, the
/// allowlist, then `extra` in order (share and credential variables, then `--env`).
pub fn build(
    id: &Identity,
    caller: &CallerEnv,
    allowlist: &[String],
    extra: &[(String, Vec<u8>)],
) -> Env {
    let mut env = Env::default();
    env.set("HOME", id.home.as_bytes());
    env.set("USER", id.user);
    env.set("LOGNAME", id.user);
    env.set("SHELL", id.shell.as_bytes());
    env.set("PATH", id.path);
    // `npm install -g` into the agent's home, onto its PATH (~/.local/bin).
    let mut npm_prefix = id.home.as_bytes().to_vec();
    npm_prefix.extend_from_slice(b"/.local");
    env.set("NPM_CONFIG_PREFIX", npm_prefix);
    for (name, value) in caller.iter() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        let keep = match name {
            "TERM" => valid_term(value),
            "TZ" => valid_tz(value),
            _ if TERMINAL_CAPABILITIES.contains(&name) => valid_capability(value),
            _ if name == "LANG" || name.starts_with("LC_") => {
                valid_name(name) && valid_locale(value)
            }
            _ => false,
        };
        if keep {
            env.set(name, value);
        }
    }
    for name in allowlist {
        if FIXED.contains(&name.as_str()) {
            continue;
        }
        if let Some(value) = caller.get(name) {
            env.set(name, value.as_bytes());
        }
    }
    for (name, value) in extra {
        env.set(name, value);
    }
    env
}

/// Parses `--env VAR=VALUE`.
pub fn parse_assignment(arg: &str) -> Result<(String, Vec<u8>)> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err(usage(format!(
            "--env '{}': expected VAR=VALUE",
            arg.escape_default()
        )));
    };
    if !valid_name(name) {
        return Err(usage(format!(
            "--env: invalid variable name '{}'",
            name.escape_default()
        )));
    }
    Ok((name.to_owned(), value.as_bytes().to_vec()))
}

/// A portable variable name: letters, digits and '_', not starting with a digit.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A terminal type names a terminfo entry: no path, no control characters.
fn valid_term(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// Locale names such as `en_US.UTF-8` or `C.utf8@euro`. A '/' would make glibc load locale
/// files from an arbitrary path.
fn valid_locale(value: &str) -> bool {
    value.len() <= 64
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@+=,:".contains(c))
}

/// A terminal capability value (`truecolor`, `iTerm.app`, `3.5.0`, `1`): short and plain.
fn valid_capability(value: &str) -> bool {
    value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// Time zones such as `UTC`, `Europe/Paris` or `EST5EDT`: a relative zoneinfo name, never an
/// absolute path (leading '/' or ':') and never '..'.
fn valid_tz(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && !value.contains("..")
        && !value.starts_with('/')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+/,.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn only_allowlisted_and_valid_values_pass() {
        let caller = CallerEnv::new(
            [
                ("GITHUB_TOKEN", "ghp_x"),
                ("SSH_AUTH_SOCK", "/tmp/s"),
                ("LD_PRELOAD", "/tmp/x.so"),
                ("TERM", "xterm-256color"),
                ("LANG", "en_US.UTF-8"),
                ("LC_ALL", "/tmp/evil"),
                ("LC_CTYPE", "../../x"),
                ("TZ", "Europe/Paris"),
                ("EDITOR", "vim"),
                ("PATH", "/tmp/evil"),
                ("HOME", "/root"),
                ("COLORTERM", "truecolor"),
                ("TERM_PROGRAM", "iTerm.app"),
                ("TERM_PROGRAM_VERSION", "$(evil)"),
                ("NO_COLOR", "1"),
            ]
            .into_iter()
            .map(|(n, v)| (OsString::from(n), OsString::from(v)))
            .collect(),
        );
        let id = Identity {
            home: OsStr::new("/h"),
            user: "agent-a",
            shell: OsStr::new("/bin/bash"),
            path: "/usr/bin:/bin",
        };
        let allow = vec!["EDITOR".to_string(), "PATH".to_string()];
        let env = build(&id, &caller, &allow, &[("X".into(), b"1".to_vec())]);
        assert_eq!(env.get("PATH"), Some(&b"/usr/bin:/bin"[..]));
        assert_eq!(env.get("HOME"), Some(&b"/h"[..]));
        assert_eq!(env.get("EDITOR"), Some(&b"vim"[..]));
        assert_eq!(env.get("TZ"), Some(&b"Europe/Paris"[..]));
        assert_eq!(env.get("LANG"), Some(&b"en_US.UTF-8"[..]));
        assert_eq!(env.get("COLORTERM"), Some(&b"truecolor"[..]));
        assert_eq!(env.get("TERM_PROGRAM"), Some(&b"iTerm.app"[..]));
        assert_eq!(env.get("NO_COLOR"), Some(&b"1"[..]));
        assert_eq!(env.get("NPM_CONFIG_PREFIX"), Some(&b"/h/.local"[..]));
        assert_eq!(
            agent_path(OsStr::new("/h/"), "/usr/bin"),
            "/h/.local/bin:/h/bin:/h/.cargo/bin:/usr/bin"
        );
        for gone in [
            "GITHUB_TOKEN",
            "SSH_AUTH_SOCK",
            "LD_PRELOAD",
            "LC_ALL",
            "LC_CTYPE",
            "TERM_PROGRAM_VERSION",
        ] {
            assert_eq!(env.get(gone), None, "{gone}");
        }
        assert!(parse_assignment("1X=2").is_err());
        assert!(parse_assignment("X").is_err());
        assert_eq!(parse_assignment("A_1=x=y").unwrap().1, b"x=y");
        assert!(!valid_tz("/etc/passwd") && !valid_tz(":/x") && !valid_tz("a/../b"));
    }
}
