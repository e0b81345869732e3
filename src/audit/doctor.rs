//! `doctor`: the installation and the host, checked for what weakens agentuser's isolation.
//! Every finding says how to fix it.
//!
//! Any caller but an agent may run it (app.rs refuses agents before dispatch): it reports
//! only what a local user can learn anyway (sysctls, mount options, modes of homes listed in
//! /etc/passwd, modes of agentuser's own files, and which agent accounts cron/at would
//! accept), never a file's content or a secret.
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::host;
use super::report::{self, Finding, Severity, Summary};
use crate::config::CONFIG_PATH;
use crate::context::Context;
use crate::registry::STATE_DIR;

const PAM_FILE: &str = "/etc/pam.d/agentuser";
const SYSCTL_FILE: &str = "/etc/sysctl.d/90-agentuser.conf";

#[derive(Serialize)]
struct DoctorReport {
    summary: Summary,
    findings: Vec<Finding>,
}

pub fn doctor(ctx: &Context, json: bool) -> Result<u8> {
    let mut findings = Vec::new();
    installation(ctx, &mut findings);
    sysctls(&mut findings);
    proc_hidepid(&mut findings);
    kernel_features(&mut findings);
    acls(ctx, &mut findings);
    human_homes(ctx, &mut findings);
    schedulers(ctx, &mut findings);
    report::sort(&mut findings);
    let summary = Summary::of(&findings);
    let code = u8::from(summary.high > 0);
    if json {
        let out = DoctorReport { summary, findings };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report::table(&findings, false));
        println!(
            "\n{} high, {} medium, {} info",
            summary.high, summary.medium, summary.info
        );
    }
    Ok(code)
}

fn installation(ctx: &Context, out: &mut Vec<Finding>) {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("agentuser"));
    let shown = exe.display().to_string();
    match std::fs::metadata("/proc/self/exe") {
        Ok(meta) => {
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                out.push(
                    Finding::new(
                        Severity::High,
                        "binary",
                        &shown,
                        format!(
                            "owned by uid {} with mode {:04o}: someone other than root can \
                             replace a setuid-root program",
                            meta.uid(),
                            meta.mode() & 0o7777
                        ),
                    )
                    .fix(format!("chown root:root {shown} && chmod 4755 {shown}")),
                );
            } else if meta.mode() & 0o4000 == 0 {
                out.push(
                    Finding::new(
                        Severity::Medium,
                        "binary",
                        &shown,
                        "not setuid-root: only root (or sudo) can use agentuser",
                    )
                    .fix(format!("chmod 4755 {shown}")),
                );
            } else {
                out.push(Finding::new(
                    Severity::Info,
                    "binary",
                    &shown,
                    "setuid-root, root-owned",
                ));
            }
            for dir in exe.ancestors().skip(1) {
                if let Some(f) = untrusted_dir(dir) {
                    out.push(f.fix(format!("chmod go-w {} (and make it root's)", dir.display())));
                }
            }
        }
        Err(e) => out.push(Finding::new(
            Severity::Medium,
            "binary",
            &shown,
            format!("cannot stat: {e}"),
        )),
    }
    match std::fs::symlink_metadata(PAM_FILE) {
        Ok(meta) if meta.is_file() && meta.uid() == 0 && meta.mode() & 0o022 == 0 => {
            out.push(Finding::new(
                Severity::Info,
                "pam",
                PAM_FILE,
                "present, root-owned",
            ));
        }
        Ok(_) => out.push(
            Finding::new(
                Severity::High,
                "pam",
                PAM_FILE,
                "not a root-owned file writable only by root",
            )
            .fix(format!(
                "install -o root -g root -m 0644 pam/agentuser {PAM_FILE}"
            )),
        ),
        Err(_) => out.push(
            Finding::new(
                Severity::High,
                "pam",
                PAM_FILE,
                "missing: exec and shell cannot open a PAM session",
            )
            .fix(format!(
                "install -o root -g root -m 0644 pam/agentuser {PAM_FILE}"
            )),
        ),
    }
    // Config::load refused an untrusted or invalid file before we got here.
    let config = if Path::new(CONFIG_PATH).exists() {
        "valid, root-owned, not writable by others"
    } else {
        "absent: built-in defaults apply"
    };
    out.push(Finding::new(Severity::Info, "config", CONFIG_PATH, config));
    for (path, mode) in [
        (PathBuf::from(STATE_DIR), 0o711),
        (Path::new(STATE_DIR).join("agents"), 0o700),
        (Path::new(STATE_DIR).join("secrets"), 0o700),
    ] {
        root_dir(&path, mode, out);
    }
    if ctx.config.home_base.exists() {
        if let Some(f) = untrusted_dir(&ctx.config.home_base) {
            out.push(f.fix(format!(
                "chown root:root {0} && chmod 0755 {0}",
                ctx.config.home_base.display()
            )));
        }
    }
    for record in ctx.registry.all().unwrap_or_default() {
        let home = record.home.display().to_string();
        match std::fs::symlink_metadata(&record.home) {
            Ok(meta) if meta.is_dir() && meta.uid() == record.uid && meta.mode() & 0o077 == 0 => {}
            Ok(meta) => out.push(
                Finding::new(
                    Severity::High,
                    "agent-home",
                    &home,
                    format!(
                        "home of agent '{}' is owned by uid {} with mode {:04o} (want uid {} and 0700)",
                        record.name,
                        meta.uid(),
                        meta.mode() & 0o7777,
                        record.uid
                    ),
                )
                .fix(format!("chmod 0700 {home}")),
            ),
            Err(_) => out.push(Finding::new(
                Severity::Medium,
                "agent-home",
                &home,
                format!("home of agent '{}' is missing", record.name),
            )),
        }
    }
}

/// A directory someone other than root could change (rename a root file inside it).
fn untrusted_dir(dir: &Path) -> Option<Finding> {
    let meta = std::fs::metadata(dir).ok()?;
    let writable = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    (meta.uid() != 0 || writable).then(|| {
        Finding::new(
            Severity::High,
            "install-dir",
            dir.display().to_string(),
            format!(
                "owned by uid {} with mode {:04o}: someone other than root can replace what is inside",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        )
    })
}

/// A state directory: root's and not writable by others (high), and no wider than `mode`
/// (medium: names become listable, nothing more, since the files inside are 0600).
fn root_dir(path: &Path, mode: u32, out: &mut Vec<Finding>) {
    let shown = path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            out.push(Finding::new(
                Severity::High,
                "state-dir",
                &shown,
                format!("cannot stat: {e}"),
            ));
            return;
        }
    };
    let actual = meta.mode() & 0o7777;
    let severity = if !meta.is_dir() || meta.uid() != 0 || actual & 0o022 != 0 {
        Severity::High
    } else if actual & !mode != 0 {
        Severity::Medium
    } else {
        return;
    };
    out.push(
        Finding::new(
            severity,
            "state-dir",
            &shown,
            format!(
                "owned by uid {} with mode {actual:04o} (want root and {mode:04o})",
                meta.uid()
            ),
        )
        .fix(format!(
            "chown root:root {shown} && chmod {mode:04o} {shown}"
        )),
    );
}

/// (sysctl, weak value test, severity, why, good value).
type SysctlRule = (
    &'static str,
    fn(&str) -> bool,
    Severity,
    &'static str,
    &'static str,
);

const SYSCTLS: &[SysctlRule] = &[
    (
        "dev.tty.legacy_tiocsti",
        |v| v != "0",
        Severity::High,
        "a process can push input into its terminal (TIOCSTI): an agent run without a pty can type commands into the owner's shell",
        "0",
    ),
    (
        "fs.protected_symlinks",
        |v| v == "0",
        Severity::High,
        "symlinks in sticky world-writable directories are followed across owners (/tmp symlink attacks)",
        "1",
    ),
    (
        "fs.protected_hardlinks",
        |v| v == "0",
        Severity::High,
        "anyone can hardlink files they do not own (e.g. into an agent's home, then have them rewritten)",
        "1",
    ),
    (
        "fs.protected_regular",
        |v| v == "0",
        Severity::Medium,
        "O_CREAT opens of files pre-created by another user in sticky directories succeed (/tmp squatting)",
        "2",
    ),
    (
        "fs.protected_fifos",
        |v| v == "0",
        Severity::Medium,
        "FIFOs pre-created by another user in sticky directories are opened (/tmp squatting)",
        "1",
    ),
];

fn sysctls(out: &mut Vec<Finding>) {
    for (name, weak, severity, why, good) in SYSCTLS {
        match host::sysctl(name) {
            Some(value) if weak(&value) => out.push(
                Finding::new(*severity, "sysctl", format!("{name}={value}"), *why).fix(format!(
                    "sysctl -w {name}={good} and add `{name} = {good}` to {SYSCTL_FILE}"
                )),
            ),
            Some(value) => out.push(Finding::new(Severity::Info, "sysctl", format!("{name}={value}"), "ok")),
            None if *name == "dev.tty.legacy_tiocsti" => out.push(Finding::new(
                Severity::Medium,
                "sysctl",
                *name,
                "absent (kernel before 6.2): TIOCSTI cannot be disabled; agentuser's pty relay is the only protection",
            )),
            None => out.push(Finding::new(Severity::Medium, "sysctl", *name, "absent on this kernel")),
        }
    }
    match host::sysctl("kernel.yama.ptrace_scope") {
        None => out.push(Finding::new(
            Severity::Info,
            "sysctl",
            "kernel.yama.ptrace_scope",
            "no Yama: processes may trace others of the same uid (agents are separate uids, so this only matters within one agent)",
        )),
        Some(v) => out.push(Finding::new(Severity::Info, "sysctl", format!("kernel.yama.ptrace_scope={v}"), "ok")),
    }
}

/// hidepid from the super options of the /proc mount (after " - proc SOURCE ").
fn proc_hidepid(out: &mut Vec<Finding>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hidden = hidepid_of(&mountinfo);
    match hidden {
        Some(mode) => out.push(Finding::new(
            Severity::Info,
            "proc",
            format!("/proc hidepid={mode}"),
            "other users' processes are hidden",
        )),
        None => out.push(
            Finding::new(
                Severity::Medium,
                "proc",
                "/proc",
                "mounted without hidepid: outside agentuser's view, any account, an agent outside agentuser's view included, reads every process's command line (THREAT-MODEL row 8)",
            )
            .fix("mount -o remount,hidepid=invisible /proc and add hidepid=invisible to /proc in /etc/fstab"),
        ),
    }
}

fn hidepid_of(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4) != Some(&"/proc") {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        if fields.get(sep + 1) != Some(&"proc") {
            return None;
        }
        let options = fields.get(sep + 3)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("hidepid="))
            .filter(|v| !matches!(*v, "0" | "off"))
            .map(str::to_string)
    })
}

fn kernel_features(out: &mut Vec<Finding>) {
    match crate::sys::landlock::landlock_abi() {
        Some(abi) if abi >= 6 => out.push(Finding::new(
            Severity::Info,
            "landlock",
            format!("ABI {abi}"),
            "available, with abstract unix socket scoping",
        )),
        Some(abi) => out.push(Finding::new(
            Severity::Info,
            "landlock",
            format!("ABI {abi}"),
            "available, but abstract socket scoping needs ABI 6 (kernel 6.12): use --network none",
        )),
        None => out.push(
            Finding::new(
                Severity::Medium,
                "landlock",
                "unavailable",
                "Landlock is not enabled: abstract unix sockets are reachable unless --network none",
            )
            .fix("boot with lsm=...,landlock (CONFIG_SECURITY_LANDLOCK)"),
        ),
    }
    let missing: Vec<&str> = ["mnt", "pid", "net"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        out.push(Finding::new(
            Severity::Info,
            "namespaces",
            "mnt, pid, net",
            "available for the agent's view",
        ));
    } else {
        out.push(Finding::new(
            Severity::High,
            "namespaces",
            missing.join(", "),
            "missing: exec cannot build the agent's view",
        ));
    }
    let max = host::sysctl("user.max_user_namespaces");
    let clone = host::sysctl("kernel.unprivileged_userns_clone");
    let unprivileged = max.as_deref() != Some("0") && clone.as_deref() != Some("0");
    let mut userns = Finding::new(
        Severity::Info,
        "namespaces",
        "user namespaces",
        if unprivileged {
            "unprivileged user namespaces are enabled: agents can create them (kernel attack surface; agentuser does not need them)"
        } else {
            "unprivileged user namespaces are disabled"
        },
    );
    if unprivileged {
        userns = userns.fix(
            "if nothing on the host needs them: sysctl -w kernel.unprivileged_userns_clone=0 (Debian) or user.max_user_namespaces=0",
        );
    }
    out.push(userns);
}

/// Sharing needs POSIX ACLs: set one on a scratch file in the state directory and read it
/// back, and check that the file system of /home answers ACL queries.
fn acls(ctx: &Context, out: &mut Vec<Finding>) {
    let dir = Path::new(STATE_DIR);
    let scratch = dir.join(format!(".doctor-acl.{}", std::process::id()));
    let result = (|| -> Result<bool> {
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&scratch)?;
        let mut acl = posix_acl::PosixACL::read_acl(&scratch)?;
        acl.set(posix_acl::Qualifier::User(65534), posix_acl::ACL_READ);
        acl.fix_mask();
        acl.write_acl(&scratch)?;
        let back = posix_acl::PosixACL::read_acl(&scratch)?;
        Ok(back.get(posix_acl::Qualifier::User(65534)) == Some(posix_acl::ACL_READ))
    })();
    let _ = std::fs::remove_file(&scratch);
    match result {
        Ok(true) => out.push(Finding::new(
            Severity::Info,
            "acl",
            STATE_DIR,
            "POSIX ACLs work",
        )),
        Ok(false) | Err(_) => out.push(
            Finding::new(
                Severity::High,
                "acl",
                STATE_DIR,
                "POSIX ACLs do not work here: share cannot grant access",
            )
            .fix("mount the file system with ACL support (ext4/xfs/btrfs have it by default)"),
        ),
    }
    let _ = ctx;
    if Path::new("/home").is_dir() && posix_acl::PosixACL::read_acl("/home").is_err() {
        out.push(
            Finding::new(Severity::High, "acl", "/home", "the file system of /home does not answer ACL queries: share cannot grant access there")
                .fix("mount /home with ACL support"),
        );
    }
}

/// Homes of human accounts that others can enter or list.
fn human_homes(ctx: &Context, out: &mut Vec<Finding>) {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    let mut open = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(name), Some(uid), Some(home)) = (
            f.first(),
            f.get(2).and_then(|u| u.parse::<u32>().ok()),
            f.get(5),
        ) else {
            continue;
        };
        if uid < 1000 || uid == 65534 || ctx.config.uid_in_range(uid) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(home) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            open.push((name.to_string(), home.to_string(), mode));
        }
    }
    for (name, home, mode) in open {
        out.push(
            Finding::new(
                Severity::Medium,
                "home-mode",
                &home,
                format!(
                    "home of {name} is {mode:04o}: every account (agents outside agentuser's view too) can enter it and read its world-readable files"
                ),
            )
            .fix(format!(
                "chmod 0750 {home}; set HOME_MODE 0750 in /etc/login.defs (and DIR_MODE=0750 in /etc/adduser.conf)"
            )),
        );
    }
}

/// Whether agent accounts can schedule jobs that run outside agentuser.
fn schedulers(ctx: &Context, out: &mut Vec<Finding>) {
    // An account name that is in no allow or deny list stands for a newly created agent.
    let fresh = ctx.config.user_name("doctor-probe");
    let agents: Vec<String> = ctx
        .registry
        .all()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.user)
        .collect();
    for (tool, access, allow, deny) in [
        (
            "cron",
            host::cron_access as fn(&str) -> host::Access,
            "/etc/cron.allow",
            "/etc/cron.deny",
        ),
        (
            "at",
            host::at_access as fn(&str) -> host::Access,
            "/etc/at.allow",
            "/etc/at.deny",
        ),
    ] {
        let allowed: Vec<&str> = agents
            .iter()
            .filter(|a| access(a) == host::Access::Allowed)
            .map(String::as_str)
            .collect();
        match access(&fresh) {
            host::Access::NotInstalled if allowed.is_empty() => {
                out.push(Finding::new(
                    Severity::Info,
                    "scheduler",
                    tool,
                    "not installed",
                ));
            }
            state => {
                let new_ones = state == host::Access::Allowed;
                if new_ones || !allowed.is_empty() {
                    let who = match (new_ones, allowed.is_empty()) {
                        (true, true) => "new agent accounts".to_string(),
                        (true, false) => format!("new agent accounts and {}", allowed.join(", ")),
                        (false, _) => allowed.join(", "),
                    };
                    out.push(
                        Finding::new(
                            Severity::High,
                            "scheduler",
                            tool,
                            format!("{who} may schedule {tool} jobs, which run outside agentuser's view"),
                        )
                        .fix(format!(
                            "create {allow} listing the users who may (agents then may not), or add each agent to {deny}"
                        )),
                    );
                } else {
                    out.push(Finding::new(
                        Severity::Info,
                        "scheduler",
                        tool,
                        "agents may not use it",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidepid_is_read_from_super_options() {
        let plain = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n";
        assert_eq!(hidepid_of(plain), None);
        let hidden = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw,hidepid=invisible\n";
        assert_eq!(hidepid_of(hidden).as_deref(), Some("invisible"));
        let other = "30 22 0:40 / /proc/sys/fs/binfmt_misc rw - binfmt_misc x rw\n";
        assert_eq!(hidepid_of(other), None);
    }
}
