//! doctor: what accounts meet: ACLs for sharing, human homes others can enter, and whether
//! agent accounts can schedule jobs that run outside agentuser.
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;

use crate::audit::host;
use crate::audit::report::{Finding, Severity};
use crate::context::Context;
use crate::registry::STATE_DIR;

pub fn check(ctx: &Context, out: &mut Vec<Finding>) {
    acls(out);
    human_homes(ctx, out);
    schedulers(ctx, out);
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
