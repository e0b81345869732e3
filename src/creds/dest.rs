//! Where a file credential goes in the agent's home. Only the shape of the path is checked
//! here; the write itself never follows a symlink (sys::agentfs), so a plain relative path
//! is all that is needed to stay inside the home.
#![forbid(unsafe_code)]

use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use crate::error::usage;
use crate::registry::AgentRecord;
use crate::sys::agentfs::TEMP_PREFIX;

/// The destination relative to the agent's home: `--to` (relative to the home, or an
/// absolute path inside it), else the source's path relative to one of `homes` (the
/// caller's, then the owner's).
pub fn resolve(
    to: Option<&Path>,
    source: &Path,
    homes: &[PathBuf],
    record: &AgentRecord,
) -> Result<PathBuf> {
    let rel = match to {
        Some(to) if to.is_absolute() => {
            let inside = to.strip_prefix(&record.home).map_err(|_| {
                usage(format!(
                    "--to {}: outside the agent's home {}",
                    to.display(),
                    record.home.display()
                ))
            })?;
            plain_relative(inside).map_err(|why| usage(format!("--to {}: {why}", to.display())))?
        }
        Some(to) => {
            plain_relative(to).map_err(|why| usage(format!("--to {}: {why}", to.display())))?
        }
        None => homes
            .iter()
            .filter(|home| home.as_os_str().len() > 1)
            .find_map(|home| plain_relative(source.strip_prefix(home).ok()?).ok())
            .ok_or_else(|| {
                usage(format!(
                    "{}: not inside your home; say where it goes with --to PATH",
                    source.display()
                ))
            })?,
    };
    check_printable(&rel)?;
    let full = record.home.join(&rel);
    for share in &record.shares {
        if full.starts_with(&share.path) || share.path.starts_with(&full) {
            return Err(usage(format!(
                "{}: inside the share {}; a credential may not go through a share",
                full.display(),
                share.path.display()
            )));
        }
    }
    Ok(rel)
}

/// Paths are recorded (TOML), printed and logged: they must be UTF-8 without control
/// characters, so that no file name can forge a log line or break a record.
pub fn check_printable(path: &Path) -> Result<()> {
    match path.to_str() {
        Some(text) if !text.chars().any(char::is_control) => Ok(()),
        _ => Err(usage(format!(
            "{}: only UTF-8 paths without control characters are supported",
            path.display().to_string().escape_default()
        ))),
    }
}

/// A non-empty relative path of plain names (no `..`, no root), normalized.
pub fn plain_relative(path: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the agent's home");
            }
        }
    }
    let Some(name) = out.file_name() else {
        return Err("names no file");
    };
    if name.to_string_lossy().starts_with(TEMP_PREFIX) {
        return Err("reserved file name");
    }
    Ok(out)
}

/// `path` made absolute against the current directory, without resolving anything (so
/// that the kernel later resolves it exactly as the user would).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(usage("empty file name"));
    }
    let base = if path.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().map_err(|e| anyhow::anyhow!("current directory: {e}"))?
    };
    let mut out = base;
    for part in path.components() {
        match part {
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths() {
        assert_eq!(
            plain_relative(Path::new("./.config//x/auth.json")).unwrap(),
            PathBuf::from(".config/x/auth.json")
        );
        for bad in [
            "",
            ".",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a/.agentuser-1.tmp",
        ] {
            assert!(plain_relative(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
