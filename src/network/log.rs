//! Refused connections and DNS queries (docs/design.md section 8): one JSON line each in the
//! agent's log `/var/lib/agentuser/netlog/NAME.log` (root, 0600: read through `net NAME log`
//! by root and the owner), one syslog record each (authpriv), and a summary on the caller's
//! terminal when the run ends.
//!
//! The policy point appends through a descriptor root opened for it before it dropped its
//! privileges; it holds no other file-system access. A run writes at most [`MAX_PER_RUN`]
//! lines, so a refusal loop cannot fill the disk; a log over [`ROTATE_BYTES`] is moved to
//! `NAME.log.old` when a run starts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::context::Context;

pub const MAX_PER_RUN: u32 = 10_000;
const ROTATE_BYTES: u64 = 16 << 20;
/// Most blocked destinations the end-of-run summary names one by one.
const SUMMARY_LINES: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// Seconds since the epoch.
    pub time: u64,
    /// Which run (the runner's pid and start time).
    pub run: String,
    /// `connect` or `dns`.
    pub what: String,
    /// `HOST:PORT`, or the queried name; printable ASCII only.
    pub dest: String,
    pub reason: String,
    /// The allowlist entry that would allow it, when one would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
}

fn dir(ctx: &Context) -> PathBuf {
    ctx.registry.root().join("netlog")
}

pub fn path(ctx: &Context, agent: &str) -> PathBuf {
    dir(ctx).join(format!("{agent}.log"))
}

/// Opens the agent's log for appending (for the policy point) and returns it with its
/// current length, where this run's lines start.
pub fn open_for_run(ctx: &Context, agent: &str) -> Result<(File, u64)> {
    crate::registry::ensure_root_dir(&dir(ctx), 0o700)?;
    let path = path(ctx, agent);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let old = dir(ctx).join(format!("{agent}.log.old"));
        std::fs::rename(&path, old).with_context(|| format!("rotating {}", path.display()))?;
    }
    let file = File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let start = file.metadata()?.len();
    Ok((file, start))
}

/// Makes text from the agent safe to print and to parse: printable ASCII, escaped otherwise,
/// at most 300 characters.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .flat_map(|c| match c {
            ' '..='~' if c != '\\' => vec![c],
            _ => c.escape_default().collect(),
        })
        .take(300)
        .collect();
    out.shrink_to_fit();
    out
}

/// Appends one line (a single write, so concurrent runs never interleave inside a line).
pub fn append(file: &mut File, refusal: &Refusal) {
    if let Ok(mut line) = serde_json::to_vec(refusal) {
        line.push(b'\n');
        let _ = file.write_all(&line);
    }
}

/// `net NAME log`: the agent's log, one readable line per refusal.
pub fn print(ctx: &Context, name: &str) -> Result<()> {
    crate::policy::agent(ctx, name)?;
    let path = path(ctx, name);
    let text = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .with_context(|| format!("reading {}", path.display()))?;
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    for refusal in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Refusal>(l).ok())
    {
        let _ = writeln!(
            out,
            "{} {} refused {} {}: {}",
            iso_time(refusal.time),
            printable(&refusal.run),
            printable(&refusal.what),
            printable(&refusal.dest),
            printable(&refusal.reason)
        );
    }
    Ok(())
}

/// The summary of one run: a line per blocked destination, with the command allowing it.
pub fn summary(file: &mut File, start: u64, run: &str, agent: &str) -> Vec<String> {
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    // One line per destination: the first reason, and how often.
    let mut blocked: BTreeMap<String, (u32, String, Option<String>)> = BTreeMap::new();
    for refusal in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Refusal>(l).ok())
    {
        if refusal.run != run {
            continue;
        }
        let slot = blocked.entry(refusal.dest.clone()).or_insert((
            0,
            refusal.reason.clone(),
            refusal.allow.clone(),
        ));
        slot.0 += 1;
    }
    let mut lines = Vec::new();
    for (dest, (count, reason, allow)) in blocked.iter().take(SUMMARY_LINES) {
        let times = if *count == 1 {
            String::new()
        } else {
            format!(", {count} times")
        };
        let hint = match allow {
            Some(entry) => format!(
                "; to allow: agentuser net {agent} allow {}",
                printable(entry)
            ),
            None => String::new(),
        };
        lines.push(format!(
            "agentuser: network: blocked {} ({}{times}){hint}",
            printable(dest),
            printable(reason)
        ));
    }
    if blocked.len() > SUMMARY_LINES {
        lines.push(format!(
            "agentuser: network: and {} more blocked destinations: agentuser net {agent} log",
            blocked.len() - SUMMARY_LINES
        ));
    }
    lines
}

/// `YYYY-MM-DDTHH:MM:SSZ` from seconds since the epoch (days to civil date: H. Hinnant's
/// algorithm).
pub fn iso_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_escapes() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(printable("a\u{1b}]52;c;x\u{7}b"), "a\\u{1b}]52;c;x\\u{7}b");
    }
}
