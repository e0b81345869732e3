//! doctor: the state agentuser keeps and its audit trail: damaged agent records, damaged
//! uid tombstones, temp files of interrupted writes, files of agents that no longer exist,
//! and a missing syslog socket.
#![forbid(unsafe_code)]

use crate::audit::findings::{Finding, Severity};
use crate::context::Context;
use crate::eventlog;

pub fn check(ctx: &Context, out: &mut Vec<Finding>) {
    records(ctx, out);
    tombstones(ctx, out);
    temps(ctx, out);
    leftovers(ctx, out);
    if !eventlog::syslog_available() {
        out.push(
            Finding::new(
                Severity::Medium,
                "audit-trail",
                eventlog::SYSLOG_SOCKET,
                "no syslog daemon listens here: agentuser's audit trail (state changes, runs, \
                 refused requests) is not recorded anywhere",
            )
            .fix("run a syslog daemon (rsyslog, syslog-ng, systemd-journald) that reads /dev/log"),
        );
    }
}

fn records(ctx: &Context, out: &mut Vec<Finding>) {
    let Ok(scan) = ctx.registry.scan() else {
        return;
    };
    for damage in scan.damaged {
        out.push(
            Finding::new(
                Severity::Medium,
                "damaged-record",
                format!("agent '{}'", damage.name),
                format!(
                    "{}: the agent cannot be used or managed; other agents are not affected",
                    damage.why
                ),
            )
            .fix(format!(
                "restore the record from a backup, or remove the agent: agentuser delete {}",
                damage.name
            )),
        );
    }
}

fn tombstones(ctx: &Context, out: &mut Vec<Finding>) {
    let tombstones = ctx.registry.tombstones();
    let path = ctx.registry.root().join("uids-used");
    if let Some(why) = tombstones.unreadable {
        out.push(
            Finding::new(
                Severity::High,
                "damaged-tombstones",
                path.display().to_string(),
                format!("{why}: no new agent can be created until it is repaired"),
            )
            .fix("make it a root-owned 0600 file with one uid per line (every uid agentuser ever handed out)"),
        );
    }
    for line in tombstones.bad_lines {
        out.push(
            Finding::new(
                Severity::Medium,
                "damaged-tombstones",
                path.display().to_string(),
                format!(
                    "{line}: numbers in it are treated as handed out (never allocated, callers refused)"
                ),
            )
            .fix("replace the line with the uid it stood for, one per line"),
        );
    }
}

fn temps(ctx: &Context, out: &mut Vec<Finding>) {
    let mut found: Vec<String> = ctx
        .registry
        .stale_temps()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    for record in ctx.registry.all().unwrap_or_default() {
        found.extend(crate::creds::stale_temps(&record));
    }
    for path in found {
        out.push(
            Finding::new(
                Severity::Info,
                "stale-temp-file",
                path,
                "left by an interrupted write; the next change of the same agent removes it",
            )
            .fix("remove it, or let the next command on that agent do it"),
        );
    }
}

/// Files of agents that no longer exist (for root only: the names of deleted agents and of
/// their files are no other caller's business). A run marker among them is a run whose
/// read-write shares were never searched for planted repositories.
fn leftovers(ctx: &Context, out: &mut Vec<Finding>) {
    if !ctx.caller.is_root {
        return;
    }
    for (agent, paths) in crate::leftovers::orphans(ctx) {
        // A blank marker is a free slot; one that records a run was never recovered.
        let state = ctx.registry.root();
        let unsearched = paths.iter().any(|p| {
            p.starts_with("runs/")
                && std::fs::read(state.join(p))
                    .is_ok_and(|text| crate::leftovers::marker_records_a_run(&text))
        });
        let (severity, why) = if unsearched {
            (
                Severity::Medium,
                "; a run marker among them: the run's read-write shares were never searched \
                 for repositories the agent planted",
            )
        } else {
            (Severity::Info, "")
        };
        out.push(
            Finding::new(
                severity,
                "leftover",
                format!("agent '{agent}' (deleted)"),
                format!(
                    "files of an agent that no longer exists remain in the state directory: {}{why}",
                    paths.join(", ")
                ),
            )
            .fix(format!(
                "agentuser delete {agent} (as root: searches the shares the markers name, then removes them)"
            )),
        );
    }
}
