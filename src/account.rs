//! Unix accounts: lookups through nix, changes through the system's own tools (`groupadd`,
//! `useradd`, `userdel`, `groupdel`), which take the shadow-utils locks and keep
//! /etc/passwd, /etc/shadow, /etc/group and /etc/gshadow consistent.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Group, Uid, User};

/// Fixed PATH for the tools we run; the caller's PATH is never used.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn user_by_name(name: &str) -> Result<Option<User>> {
    User::from_name(name).with_context(|| format!("looking up user '{name}'"))
}

pub fn user_by_uid(uid: u32) -> Result<Option<User>> {
    User::from_uid(Uid::from_raw(uid)).with_context(|| format!("looking up uid {uid}"))
}

pub fn group_by_name(name: &str) -> Result<Option<Group>> {
    Group::from_name(name).with_context(|| format!("looking up group '{name}'"))
}

pub fn group_by_gid(gid: u32) -> Result<Option<Group>> {
    Group::from_gid(Gid::from_raw(gid)).with_context(|| format!("looking up gid {gid}"))
}

/// What `useradd` is asked to make.
pub struct NewAccount<'a> {
    pub user: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a Path,
    pub shell: &'a Path,
    pub comment: &'a str,
}

/// Creates the agent's own group.
pub fn create_group(name: &str, gid: u32) -> Result<()> {
    run_tool(
        "groupadd",
        &["--system", "--gid", &gid.to_string(), "--", name],
    )
}

/// Creates the account: a system account (so useradd neither allocates subordinate ids nor
/// a mail spool nor password aging), locked password (useradd's default `!`), no
/// supplementary groups, no lastlog/faillog entries, and a 0700 home populated from
/// /etc/skel.
pub fn create_user(account: &NewAccount) -> Result<()> {
    if account.comment.contains([':', '\n', '\0']) {
        bail!("comment: must not contain ':' or newlines");
    }
    let uid = account.uid.to_string();
    let gid = account.gid.to_string();
    let home = path_arg(account.home)?;
    let shell = path_arg(account.shell)?;
    run_tool(
        "useradd",
        &[
            "--system",
            "--no-log-init",
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--home-dir",
            &home,
            "--create-home",
            "--key",
            "HOME_MODE=0700",
            "--shell",
            &shell,
            "--comment",
            account.comment,
            "--",
            account.user,
        ],
    )
}

/// Removes the account (not its home: the caller removes that without following links).
/// `--force` because the caller has just killed every process of the account and userdel
/// would otherwise trip over a zombie not yet reaped.
pub fn delete_user(name: &str) -> Result<()> {
    run_tool("userdel", &["--force", "--", name])
}

pub fn delete_group(name: &str) -> Result<()> {
    run_tool("groupdel", &["--", name])
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{}: not valid UTF-8", path.display()))
}

/// Runs a shadow-utils tool with a clean environment. The tools fail at once when another
/// one holds /etc/passwd.lock (for instance one left running by an interrupted agentuser),
/// so a busy lock is retried for a while before giving up.
fn run_tool(tool: &str, args: &[&str]) -> Result<()> {
    let program = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(tool))
        .find(|p| p.exists())
        .with_context(|| format!("{tool}: not found in /usr/sbin or /sbin"))?;
    let mut attempts = 0;
    loop {
        let output = Command::new(&program)
            .args(args)
            .env_clear()
            .env("PATH", TOOL_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {tool}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        attempts += 1;
        if stderr.contains("lock") && attempts < 100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        let why = stderr
            .lines()
            .map(|l| l.trim_start_matches(&format!("{tool}: ")).trim())
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        bail!("{tool} failed ({}): {why}", output.status);
    }
}
