//! `set` and `unset`: an agent's persistent settings, kept in its record (environment
//! variables, network mode, working directory) and used by every exec and shell.
//!
//! Settings are not secrets: they are shown by `show` and pass through the command line.
//! Names that look like secrets are refused and pointed to `cred env`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::context::Context;
use crate::error::{changed, usage};
use crate::record::Network;
use crate::{eventlog, policy};

/// Variables agentuser sets itself (identity, proxies of the policy point, git's
/// `safe.directory`): a setting may not replace them.
const OWNED: [&str; 12] = [
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_GLOBAL",
];
/// Parts of a name that say "secret" anywhere in it: such values belong in `cred env`.
const SECRET_PARTS: [&str; 5] = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];
/// Words (between '_') that say "secret"; as words only, so GIT_AUTHOR_NAME is fine.
const SECRET_WORDS: [&str; 5] = ["AUTH", "KEY", "APIKEY", "PASS", "PAT"];
/// Longest value accepted for an environment setting.
const VALUE_MAX: usize = 4096;

/// One requested change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Env(String, String),
    Network(Network),
    Cwd(PathBuf),
}

/// One key to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Env(String),
    Network,
    Cwd,
}

/// `agentuser set NAME KEY=VALUE...`: every argument is checked before anything changes.
pub fn set(ctx: &Context, name: &str, args: &[String]) -> Result<()> {
    let settings = args
        .iter()
        .map(|a| parse_setting(a))
        .collect::<Result<Vec<_>>>()?;
    policy::ready_agent(ctx, name)?;
    let lock = ctx.registry.lock(name)?;
    let mut record = policy::ready_agent(ctx, name)?;
    for setting in &settings {
        match setting {
            Setting::Env(var, value) => {
                record.env.insert(var.clone(), value.clone());
            }
            Setting::Network(mode) => record.network = Some(*mode),
            Setting::Cwd(dir) => record.cwd = Some(dir.clone()),
        }
    }
    ctx.registry.save(&lock, &record)?;
    let keys: Vec<String> = settings.iter().map(describe).collect();
    eventlog::record(ctx, "set", name, &keys.join(" "));
    changed(&format!("agent {name}: set {}", keys.join(", ")));
    Ok(())
}

/// `agentuser unset NAME KEY...`: a key that is not set is an error and nothing changes.
pub fn unset(ctx: &Context, name: &str, args: &[String]) -> Result<()> {
    let keys = args
        .iter()
        .map(|a| parse_key(a))
        .collect::<Result<Vec<_>>>()?;
    policy::ready_agent(ctx, name)?;
    let lock = ctx.registry.lock(name)?;
    let mut record = policy::ready_agent(ctx, name)?;
    for (key, arg) in keys.iter().zip(args) {
        let was_set = match key {
            Key::Env(var) => record.env.remove(var).is_some(),
            Key::Network => record.network.take().is_some(),
            Key::Cwd => record.cwd.take().is_some(),
        };
        if !was_set {
            return Err(usage(format!(
                "unset: agent '{name}' has no setting '{}'",
                arg.escape_default()
            )));
        }
    }
    ctx.registry.save(&lock, &record)?;
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.escape_default().to_string())
        .collect();
    eventlog::record(ctx, "unset", name, &shown.join(" "));
    changed(&format!("agent {name}: unset {}", shown.join(", ")));
    Ok(())
}

fn parse_setting(arg: &str) -> Result<Setting> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(usage(format!(
            "set: '{}': expected KEY=VALUE (env.VAR=VALUE, network=MODE, cwd=DIR)",
            arg.escape_default()
        )));
    };
    match parse_key(key)? {
        Key::Env(var) => {
            if value.len() > VALUE_MAX || value.contains('\0') {
                return Err(usage(format!(
                    "set: env.{var}: the value must be at most {VALUE_MAX} bytes, without NUL"
                )));
            }
            Ok(Setting::Env(var, value.to_owned()))
        }
        Key::Network => Network::parse(value).map(Setting::Network).ok_or_else(|| {
            usage(format!(
                "set: network: '{}' is not allowlist, none or host",
                value.escape_default()
            ))
        }),
        Key::Cwd => cwd(value).map(Setting::Cwd),
    }
}

fn parse_key(key: &str) -> Result<Key> {
    match key {
        "network" => return Ok(Key::Network),
        "cwd" => return Ok(Key::Cwd),
        _ => {}
    }
    let Some(var) = key.strip_prefix("env.") else {
        return Err(usage(format!(
            "'{}': unknown setting (env.VAR, network, cwd)",
            key.escape_default()
        )));
    };
    check_env_name(var)?;
    Ok(Key::Env(var.to_owned()))
}

/// A portable name that is neither one agentuser owns nor one that looks like a secret.
fn check_env_name(var: &str) -> Result<()> {
    let mut chars = var.chars();
    let portable = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && var.len() <= 255;
    if !portable {
        return Err(usage(format!(
            "env.{}: invalid variable name: use letters, digits and '_', not starting with a digit",
            var.escape_default()
        )));
    }
    let upper = var.to_ascii_uppercase();
    if OWNED.contains(&upper.as_str()) || upper.starts_with("GIT_CONFIG_") {
        return Err(usage(format!("env.{var}: set by agentuser itself")));
    }
    let secret = SECRET_PARTS.iter().any(|p| upper.contains(p))
        || upper.split('_').any(|w| SECRET_WORDS.contains(&w));
    if secret {
        return Err(usage(format!(
            "env.{var}: looks like a secret: settings are shown by 'show'; store it with \
             'agentuser cred env NAME {var}' instead"
        )));
    }
    Ok(())
}

/// The directory, made absolute against the caller's current directory like `--cwd` and
/// cleaned of `.` and `..`; whether it exists is checked in the agent's view at exec.
fn cwd(value: &str) -> Result<PathBuf> {
    if value.is_empty() || value.contains('\0') {
        return Err(usage("set: cwd: expected a directory"));
    }
    let given = Path::new(value);
    let base = if given.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().map_err(|e| usage(format!("set: cwd: current directory: {e}")))?
    };
    let mut out = base;
    for component in given.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    if out.to_str().is_none() {
        return Err(usage("set: cwd: the path is not valid UTF-8"));
    }
    Ok(out)
}

/// How a setting is shown in the log and the note (values are not secret).
fn describe(setting: &Setting) -> String {
    match setting {
        Setting::Env(var, value) => format!("env.{var}={}", value.escape_default()),
        Setting::Network(mode) => format!("network={}", mode.word()),
        Setting::Cwd(dir) => format!("cwd={}", crate::share::printable(dir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse() {
        assert_eq!(
            parse_setting("env.EDITOR=vim -u x").unwrap(),
            Setting::Env("EDITOR".into(), "vim -u x".into())
        );
        assert_eq!(
            parse_setting("network=none").unwrap(),
            Setting::Network(Network::None)
        );
        assert_eq!(
            parse_setting("cwd=/home/a/../b/./c").unwrap(),
            Setting::Cwd("/home/b/c".into())
        );
        for bad in [
            "env.PATH=/x",
            "env.path=/x",
            "env.GIT_CONFIG_KEY_0=x",
            "env.https_proxy=x",
            "env.GITHUB_TOKEN=x",
            "env.OPENAI_API_KEY=x",
            "env.db_password=x",
            "env.NPM_AUTH=x",
            "env.SIGNING_KEY=x",
            "env.1X=y",
            "env.=y",
            "network=internet",
            "color=red",
            "EDITOR",
            "cwd=",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_key("env.EDITOR").unwrap(), Key::Env("EDITOR".into()));
        assert!(parse_key("env.HOME").is_err());
        assert!(parse_key("env.GIT_AUTHOR_NAME").is_ok());
        assert!(parse_key("env.KEYMAP").is_ok());
    }
}
