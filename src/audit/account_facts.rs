//! What the agent's record and root-only files say about the account, beyond what a probe
//! measures: shares and credentials with their state, group memberships from the group
//! database, sudoers rules, and cron/at/linger (which run the account outside the view).
#![forbid(unsafe_code)]

use super::assess;
use super::findings::{Finding, Severity, View};
use super::host;
use super::sudoers;
use crate::context::Context;
use crate::creds;
use crate::registry::AgentRecord;

/// Supplementary groups the group database gives the agent's account.
pub fn database_groups(record: &AgentRecord) -> Vec<u32> {
    let Ok(user) = std::ffi::CString::new(record.user.as_bytes()) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&user, nix::unistd::Gid::from_raw(record.gid))
        .map(|groups| {
            groups
                .into_iter()
                .map(|g| g.as_raw())
                .filter(|&g| g != record.gid)
                .collect()
        })
        .unwrap_or_default()
}

/// What the record and root-only files say: shares, credentials, sudo rights, schedulers.
pub fn account_findings(
    ctx: &Context,
    record: &AgentRecord,
    groups: &[u32],
    view_nnp: bool,
) -> Vec<Finding> {
    let mut out = share_findings(record);
    out.extend(crate::git::protection::findings(ctx, record));
    out.extend(credential_findings(ctx, record));
    out.extend(sudo_findings(record, groups, view_nnp));
    out.extend(scheduler_findings(&record.user));
    out
}

/// Each share the record holds; one whose path is gone is worth a look.
fn share_findings(record: &AgentRecord) -> Vec<Finding> {
    let mut out = Vec::new();
    for share in &record.shares {
        let access = match share.access {
            crate::share::Access::Ro => "ro",
            crate::share::Access::Rw => "rw",
        };
        let exists = share.path.exists();
        out.push(Finding::new(
            if exists {
                Severity::Info
            } else {
                Severity::Medium
            },
            "share",
            share.path.display().to_string(),
            if exists {
                format!("shared {access}")
            } else {
                format!("shared {access}, but the path no longer exists")
            },
        ));
    }
    out
}

/// Each credential with its state; one not in a good state comes with the fix.
fn credential_findings(ctx: &Context, record: &AgentRecord) -> Vec<Finding> {
    let mut out = Vec::new();
    for cred in creds::describe(ctx, record) {
        // States as creds reports them: ok, source-changed, agent-modified, missing-source,
        // missing-copy, unreadable-source ("unknown" before a check exists).
        let fine = matches!(cred.state.as_str(), "ok" | "unknown");
        let subject = cred.dest.clone().unwrap_or_else(|| cred.source.clone());
        let detail = format!(
            "{:?} credential from {}: {}",
            cred.kind, cred.source, cred.state
        )
        .to_lowercase();
        let mut f = Finding::new(
            if fine {
                Severity::Info
            } else {
                Severity::Medium
            },
            "credential",
            subject,
            detail,
        );
        if !fine {
            f = f.fix(format!(
                "agentuser cred sync {} (or cred rm it if it is no longer needed)",
                record.name
            ));
        }
        out.push(f);
    }
    out
}

/// The sudoers rules that apply to the account (by user, uid or any of its groups). With
/// no_new_privs in the view, sudo is reached only from the host view.
fn sudo_findings(record: &AgentRecord, groups: &[u32], view_nnp: bool) -> Vec<Finding> {
    let mut named: Vec<(u32, String)> =
        groups.iter().map(|&g| (g, assess::group_name(g))).collect();
    named.push((record.gid, assess::group_name(record.gid)));
    let subject = sudoers::Subject {
        user: &record.user,
        uid: record.uid,
        groups: &named,
    };
    let mut out = Vec::new();
    for rule in sudoers::rules_for(&subject) {
        let (severity, how) = if rule.nopasswd {
            (Severity::High, "without a password")
        } else {
            (
                Severity::Medium,
                "with the account's password (locked, so only if someone sets one)",
            )
        };
        let views: &[View] = if view_nnp {
            &[View::Host]
        } else {
            &[View::View, View::Host]
        };
        out.push(
            Finding::new(
                severity,
                "sudo",
                format!("{}:{}", rule.file.display(), rule.line),
                format!("sudo rule applies to the agent {how}: {}", rule.text),
            )
            .fix("remove the agent (or its group) from this sudoers rule")
            .in_views(views),
        );
    }
    out
}

/// Cron, at and lingering user services run the agent's uid outside agentuser's view.
pub fn scheduler_findings(user: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if host::cron_access(user) == host::Access::Allowed {
        out.push(
            Finding::new(
                Severity::High,
                "scheduler",
                format!("crontab ({user})"),
                "the agent may install cron jobs, which run outside agentuser's view",
            )
            .fix(format!(
                "add {user} to /etc/cron.deny, or list the users who may in /etc/cron.allow"
            )),
        );
    }
    if host::at_access(user) == host::Access::Allowed {
        out.push(
            Finding::new(
                Severity::High,
                "scheduler",
                format!("at ({user})"),
                "the agent may queue at jobs, which run outside agentuser's view",
            )
            .fix(format!(
                "add {user} to /etc/at.deny, or list the users who may in /etc/at.allow"
            )),
        );
    }
    if host::lingers(user) {
        out.push(
            Finding::new(
                Severity::High,
                "scheduler",
                format!("linger ({user})"),
                "systemd keeps the agent's user services running outside agentuser's view",
            )
            .fix(format!("loginctl disable-linger {user}")),
        );
    }
    out
}
