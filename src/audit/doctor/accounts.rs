//! doctor: what accounts meet: ACLs for sharing, human homes others can enter, and whether
//! agent accounts can schedule jobs that run outside agentuser.
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;

use crate::audit::findings::{Finding, Severity};
use crate::audit::host;
use crate::context::Context;
use crate::registry::STATE_DIR;

pub fn check(ctx: &Context, out: &mut Vec<Finding>) {
    acls(out);
    human_homes(ctx, out);
    schedulers(ctx, out);
    orphans(ctx, out);
    stale_account_locks(out);
}

/// Accounts and homes of uids agentuser handed out that no record names (a create killed
/// at the wrong moment, or leftovers made by hand): root removes them with `delete NAME`.
fn orphans(ctx: &Context, out: &mut Vec<Finding>) {
    let Ok(scan) = ctx.registry.scan() else {
        return;
    };
    let tombstones = ctx.registry.tombstones();
    let known = |uid: u32| {
        scan.records.iter().any(|r| r.uid == uid) || scan.damaged.iter().any(|d| d.uid == Some(uid))
    };
    let ours = |uid: u32| uid != 0 && (ctx.config.uid_in_range(uid) || tombstones.may_hold(uid));
    let (prefix, suffix) = ctx
        .config
        .user_template
        .split_once("{name}")
        .unwrap_or(("", ""));
    let agent_name = |user: &str| {
        user.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .map(str::to_string)
    };
    let mut seen = Vec::new();
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let Some(uid) = f.get(2).and_then(|u| u.parse::<u32>().ok()) else {
                continue;
            };
            if ours(uid) && !known(uid) {
                seen.push(f[0].to_string());
                out.push(orphan_finding(f[0], uid, agent_name(f[0]), "account"));
            }
        }
    }
    // Homes: only root may list the home base (0711).
    let Ok(entries) = std::fs::read_dir(&ctx.config.home_base) else {
        return;
    };
    if !ctx.caller.is_root {
        return;
    }
    for entry in entries.flatten() {
        let user = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !seen.contains(&user) && ours(meta.uid()) && !known(meta.uid()) {
            out.push(orphan_finding(&user, meta.uid(), agent_name(&user), "home"));
        }
    }
}

fn orphan_finding(user: &str, uid: u32, agent: Option<String>, what: &str) -> Finding {
    let fix = match agent {
        Some(name) => format!("as root: agentuser delete {name}"),
        None => format!("remove the {what} by hand (userdel {user})"),
    };
    Finding::new(
        Severity::Medium,
        "orphan",
        user,
        format!("an agent {what} (uid {uid}) that no agent record names"),
    )
    .fix(&fix)
}

/// Account lock files of dead (or unreaped) processes: every useradd on the host fails
/// while they stay.
fn stale_account_locks(out: &mut Vec<Finding>) {
    for stale in crate::account::stale_locks() {
        out.push(
            Finding::new(Severity::Medium, "account-lock", "/etc", &stale)
                .fix("remove the lock file once no account tool runs (or reap the process)"),
        );
    }
}

/// Sharing needs POSIX ACLs: set one on a scratch file in the state directory and read it
/// back, and check that the file system of /home answers ACL queries.
fn acls(out: &mut Vec<Finding>) {
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
