//! How git is protected in each share, for `show`, `audit` and `share` (issue 11 item 5).
#![forbid(unsafe_code)]

use crate::audit::findings::{Finding, Severity};
use crate::registry::AgentRecord;
use crate::share::{Access, ShareRecord};

/// One word per share, for `show --json` (`git` field).
pub fn word(share: &ShareRecord) -> &'static str {
    match share.access {
        Access::Ro => "read-only",
        Access::Rw if share.allow_git_writes => "owner-git-writable",
        Access::Rw => "agent-repository",
    }
}

/// A short note for `show`'s text output.
pub fn note(share: &ShareRecord) -> &'static str {
    match share.access {
        Access::Ro => "",
        Access::Rw if share.allow_git_writes => {
            " (--allow-git-writes: the agent can write your .git here; your git may run its code)"
        }
        Access::Rw => " (git: the agent commits into repositories of its own)",
    }
}

/// The warning `share --allow-git-writes` prints.
pub fn allow_git_writes_warning(path: &str) -> String {
    format!(
        "warning: {path}: --allow-git-writes gives the agent your .git (config, hooks): a git command you run there may run code the agent chose; without it the agent commits into a repository of its own and you fetch"
    )
}

/// `audit` findings: per read-write share, how git is protected.
pub fn findings(ctx: &crate::context::Context, record: &AgentRecord) -> Vec<Finding> {
    let contents = crate::share::Contents::of(ctx, record);
    let repos = super::repositories(record, &contents);
    let mut out = Vec::new();
    for share in record.shares.iter().filter(|s| s.access == Access::Rw) {
        let subject = share.path.display().to_string();
        if share.allow_git_writes {
            out.push(
                Finding::new(
                    Severity::High,
                    "git",
                    &subject,
                    "--allow-git-writes: the agent can write every .git in this share (config, hooks, redirects); git commands you run there can run code it chose",
                )
                .fix(format!(
                    "agentuser share {} {} --rw   (without --allow-git-writes: the agent commits into repositories of its own, you fetch)",
                    record.name, subject
                )),
            );
            continue;
        }
        let urls: Vec<String> = repos
            .iter()
            .filter(|r| r.share == share.path)
            .map(|r| format!("agentuser::{}:{}", record.name, r.worktree().display()))
            .collect();
        let detail = if urls.is_empty() {
            "no repository of yours found; one you make gets the protection at the next run; planted repositories are neutralised".to_string()
        } else {
            format!(
                "your .git is read-only and covered by the agent's own repository in its view; planted repositories are neutralised; fetch its commits from {}",
                urls.join(", ")
            )
        };
        out.push(Finding::new(Severity::Info, "git", &subject, detail));
    }
    out
}
