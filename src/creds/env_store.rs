//! Environment credentials: a value read from standard input (never argv), stored root-only
//! under /var/lib/agentuser/secrets/NAME/VAR (0700 directory, 0600 files, atomic writes) and
//! handed to the runner at exec. No value ever reaches an error message, a log or `show`.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};

use crate::error::usage;
use crate::registry::{ensure_root_dir, write_atomic};

/// Variables the runner sets itself; a credential may not replace them.
const RESERVED: [&str; 6] = ["HOME", "USER", "LOGNAME", "SHELL", "PATH", "TERM"];
/// Longest value accepted (a token or key, not a file).
const VALUE_MAX: u64 = 64 << 10;

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, not one the runner owns.
pub fn check_var(var: &str) -> Result<()> {
    let mut chars = var.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && var.len() <= 255;
    if !valid {
        return Err(usage(format!(
            "invalid variable name '{}': use letters, digits and '_', not starting with a digit",
            var.escape_default()
        )));
    }
    if RESERVED.contains(&var) {
        return Err(usage(format!(
            "{var}: set by agentuser itself, not a credential"
        )));
    }
    Ok(())
}

/// Reads the value from standard input: one line without echo from a terminal, else the
/// whole input (one trailing newline dropped).
pub fn read_value(var: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let mut raw = Vec::new();
    match tcgetattr(&stdin) {
        Ok(saved) => {
            // Keep terminal signals pending while echo is off, so Ctrl-C cannot leave the
            // caller's terminal silent: it takes effect once the terminal is restored.
            let mut signals = SigSet::empty();
            for s in [
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTSTP,
                Signal::SIGHUP,
            ] {
                signals.add(s);
            }
            let mut old_mask = SigSet::empty();
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut old_mask))
                .context("blocking signals")?;
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            quiet.local_flags.insert(LocalFlags::ICANON);
            // Echo goes off before the prompt appears, so nothing typed after it is echoed.
            let read = tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)
                .context("turning off terminal echo")
                .and_then(|()| {
                    eprint!("value for {var} (not echoed): ");
                    stdin
                        .lock()
                        .take(VALUE_MAX + 1)
                        .read_until(b'\n', &mut raw)
                        .context("reading the value from the terminal")
                });
            let _ = tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
            eprintln!();
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            read?;
        }
        Err(_) => {
            stdin
                .lock()
                .take(VALUE_MAX + 1)
                .read_to_end(&mut raw)
                .context("reading the value from standard input")?;
        }
    }
    if raw.len() as u64 > VALUE_MAX {
        bail!("the value on standard input is longer than {VALUE_MAX} bytes");
    }
    if raw.ends_with(b"\n") {
        raw.pop();
        if raw.ends_with(b"\r") {
            raw.pop();
        }
    }
    if raw.is_empty() {
        bail!("no value on standard input");
    }
    if raw.contains(&0) {
        bail!("the value contains a NUL byte");
    }
    // The value itself is never quoted back, only what is wrong with it.
    String::from_utf8(raw).map_err(|_| anyhow::anyhow!("the value is not valid UTF-8"))
}

/// Stores the value of `var` in the agent's secrets directory.
pub fn store(dir: &Path, var: &str, value: &str) -> Result<()> {
    ensure_root_dir(dir, 0o700)?;
    // ensure_root_dir accepts any mode without write bits for others; values are private.
    let mode = std::fs::symlink_metadata(dir)?.mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    write_atomic(&dir.join(var), value.as_bytes())
}

/// The stored value of `var`, or `None` when absent. Refuses anything but a root-owned,
/// private regular file.
pub fn load(dir: &Path, var: &str) -> Result<Option<String>> {
    let path = dir.join(var);
    let mut file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 || meta.len() > VALUE_MAX {
        bail!("{}: not a private root-owned file", path.display());
    }
    let mut value = String::new();
    file.read_to_string(&mut value)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(value))
}

/// Where the placeholder of a brokered `var` is stored (a name no variable can have).
pub fn placeholder_file(var: &str) -> String {
    format!("{var}.placeholder")
}

/// Whether a value is stored for `var`.
pub fn exists(dir: &Path, var: &str) -> bool {
    dir.join(var).symlink_metadata().is_ok_and(|m| m.is_file())
}

/// Removes the stored value of `var` (absent is fine).
pub fn remove(dir: &Path, var: &str) -> Result<()> {
    let path = dir.join(var);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names() {
        for ok in ["ANTHROPIC_API_KEY", "_x", "gh_token2"] {
            assert!(check_var(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1X", "A-B", "A=B", "A B", "PATH", "HOME", "é"] {
            assert!(check_var(bad).is_err(), "{bad}");
        }
    }
}
