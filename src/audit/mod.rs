//! `audit` and `doctor` (docs/design.md section 7).
//!
//! `audit NAME` measures, as the agent, what it reaches: the probe ([`probes`]) runs twice
//! through the runner (which owns the sandbox; nothing here builds namespaces), once in the
//! view `exec` builds and once with the plain uid switch, so the report shows what the view
//! adds. The privileged process adds what only it can read (sudoers, socket holders, the
//! agent's record) and prints the findings. `doctor` checks the installation and the host.
//!
//! Exit status of both: 0 when no finding is high, 1 otherwise. Host-only findings count:
//! the agent's uid reaches the host's view whenever it runs outside agentuser (cron, at, a
//! lingering user service, an ssh login to its own account), and the report says which of
//! those are open.
#![forbid(unsafe_code)]

pub mod account_facts;
pub mod assess;
pub mod doctor;
pub mod findings;
pub mod host;
pub mod network;
pub mod probe_walk;
pub mod probes;
pub mod secrets;
pub mod sudoers;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::context::Context;
use crate::creds::CredKind;
use crate::record::Network;
use crate::registry::AgentRecord;
use crate::{eventlog, policy, runner};

use assess::SocketOwners;
use findings::{Finding, Severity, Summary, View};
use probes::{Observations, Plan};

pub use doctor::doctor;

/// Most bytes of probe output accepted (the probe's own output is far smaller; this bounds
/// what a forged one could make us parse).
const MAX_PROBE_OUTPUT: usize = 64 << 20;

#[derive(Debug, Serialize)]
struct AuditReport<'a> {
    agent: &'a str,
    user: &'a str,
    uid: u32,
    network: Network,
    passes: BTreeMap<&'static str, PassStatus>,
    summary: Summary,
    findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
struct PassStatus {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn audit(ctx: &Context, name: &str, json: bool) -> Result<u8> {
    let record = policy::ready_agent(ctx, name)?;
    eventlog::record(ctx, "audit", name, "");

    let network = record.network.unwrap_or(ctx.config.network);
    let (view, host, owners) = probe_both_views(ctx, &record, network)?;

    let mut findings = network_mode_findings(network);
    let passes = assess_passes(&record, &owners, &view, &host, &mut findings);
    findings.extend(group_database_findings(&record));
    let mut findings = assess::merge(findings);
    let view_nnp = view.as_ref().map(|o| o.no_new_privs).unwrap_or(false);
    findings.extend(privileged_findings(ctx, &record, network, view_nnp));
    findings::sort(&mut findings);

    print(&record, network, passes, findings, json)
}

/// Runs the probe as the agent twice: in the view `exec` builds (which also learns the
/// host's temporary directories, to tell them from the view's own), then with the plain uid
/// switch. A pass that fails is reported, not fatal.
fn probe_both_views(
    ctx: &Context,
    record: &AgentRecord,
    network: Network,
) -> Result<(Result<Observations>, Result<Observations>, SocketOwners)> {
    let (base, owners) = plan(ctx, record)?;
    let view_plan = Plan {
        host_temp: probes::TEMP_DIRS
            .iter()
            .filter_map(|t| {
                std::fs::metadata(t)
                    .ok()
                    .map(|m| (PathBuf::from(t), m.dev(), m.ino()))
            })
            .collect(),
        ..base.clone()
    };
    let view = finish(runner::run_in_view(ctx, record, network, move || {
        probes::run(&view_plan)
    }));
    let host = finish(runner::run_as_agent_in_host_view(record, move || {
        probes::run(&base)
    }));
    Ok((view, host, owners))
}

/// The finding for an agent whose `exec` runs on the host's network.
fn network_mode_findings(network: Network) -> Vec<Finding> {
    if network != Network::Host {
        return Vec::new();
    }
    vec![
        Finding::new(
            Severity::High,
            "network",
            "network host",
            "exec runs the agent on the host's network: any host on the internet, the \
             owner's loopback services and the cloud metadata endpoint are reachable \
             (use the allowlist mode: agentuser net NAME allow HOST)",
        )
        .in_views(&[View::View]),
    ]
}

/// Adds what each pass observed to `findings` (or the failure of a pass, as a high finding)
/// and says which passes ran.
fn assess_passes(
    record: &AgentRecord,
    owners: &SocketOwners,
    view: &Result<Observations>,
    host: &Result<Observations>,
    findings: &mut Vec<Finding>,
) -> BTreeMap<&'static str, PassStatus> {
    let mut passes = BTreeMap::new();
    for (label, view_kind, result) in [("view", View::View, view), ("host", View::Host, host)] {
        match result {
            Ok(obs) => {
                findings.extend(assess::pass_findings(
                    obs, view_kind, record.uid, record.gid, owners,
                ));
                passes.insert(
                    label,
                    PassStatus {
                        ok: true,
                        error: None,
                    },
                );
            }
            Err(e) => {
                let message = crate::error::one_line(e);
                findings.push(
                    Finding::new(
                        Severity::High,
                        "audit-error",
                        format!("{label} pass"),
                        format!("could not audit the {label}: {message}"),
                    )
                    .in_views(&[view_kind]),
                );
                passes.insert(
                    label,
                    PassStatus {
                        ok: false,
                        error: Some(findings::escape_controls(&message)),
                    },
                );
            }
        }
    }
    passes
}

/// The runner may drop supplementary groups, but cron, at, su and ssh logins call
/// initgroups: what the group database gives the account is reached in the host view.
fn group_database_findings(record: &AgentRecord) -> Vec<Finding> {
    account_facts::database_groups(record)
        .into_iter()
        .map(|gid| {
            assess::group_finding(
                gid,
                "in the group database: every login outside agentuser gets it",
            )
            .in_views(&[View::Host])
        })
        .collect()
}

/// What only the privileged process learns: the account's settings, its broker, and where
/// the agent reads its brokered secrets (a failed search for those is a high finding).
fn privileged_findings(
    ctx: &Context,
    record: &AgentRecord,
    network: Network,
    view_nnp: bool,
) -> Vec<Finding> {
    let groups = account_facts::database_groups(record);
    let mut findings = account_facts::account_findings(ctx, record, &groups, view_nnp);
    findings.extend(crate::broker::audit::findings(record, network));
    findings.extend(brokered_exposure(ctx, record).unwrap_or_else(|e| {
        vec![Finding::new(
            Severity::High,
            "audit-error",
            "brokered secrets",
            format!(
                "could not search for brokered values: {}",
                crate::error::one_line(&e)
            ),
        )]
    }));
    findings
}

/// Where the agent reads the real value of one of its brokered secrets (root matches, with
/// the agent's identity: crate::broker::exposure).
fn brokered_exposure(ctx: &Context, record: &AgentRecord) -> Result<Vec<Finding>> {
    let secrets = crate::creds::brokered(ctx, record)?;
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let mut trees = vec![record.home.clone()];
    trees.extend(record.shares.iter().map(|s| s.path.clone()));
    let places = crate::broker::exposure::Places {
        agent: crate::sys::ids::Identity {
            uid: record.uid,
            gid: record.gid,
            // The groups every login of the account gets (the runner's, and cron's).
            groups: std::iter::once(record.gid)
                .chain(account_facts::database_groups(record))
                .collect(),
        },
        trees,
        given: crate::creds::audit_contents(ctx, record)?,
    };
    Ok(crate::broker::exposure::findings(
        &secrets,
        &places,
        &crate::broker::exposure::Limits::default(),
    ))
}

/// Prints the report; the exit status is 1 when any finding is high.
fn print(
    record: &AgentRecord,
    network: Network,
    passes: BTreeMap<&'static str, PassStatus>,
    findings: Vec<Finding>,
    json: bool,
) -> Result<u8> {
    let summary = Summary::of(&findings);
    let code = u8::from(summary.high > 0);
    if json {
        let out = AuditReport {
            agent: &record.name,
            user: &record.user,
            uid: record.uid,
            network,
            passes,
            summary,
            findings,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "audit of agent '{}' (user {}, uid {}), network {}",
            record.name,
            record.user,
            record.uid,
            network.word()
        );
        println!(
            "REACHED: view = in the view exec builds; host-only = only outside agentuser; \
             - = the account itself\n"
        );
        print!("{}", findings::table(&findings, true));
        println!(
            "\n{} high, {} medium, {} info",
            summary.high, summary.medium, summary.info
        );
    }
    Ok(code)
}

/// Checks a probe's exit status and parses its report.
fn finish(result: Result<(u8, Vec<u8>)>) -> Result<Observations> {
    let (status, output) = result?;
    if status != 0 {
        bail!("the probe exited with status {status}");
    }
    if output.len() > MAX_PROBE_OUTPUT {
        bail!("the probe wrote more than {MAX_PROBE_OUTPUT} bytes");
    }
    serde_json::from_slice(&output).map_err(|e| anyhow!("unreadable probe report: {e}"))
}

/// What both passes look at, and who holds the host's sockets.
fn plan(ctx: &Context, record: &AgentRecord) -> Result<(Plan, SocketOwners)> {
    let mut skip = vec![record.home.clone()];
    skip.extend(record.shares.iter().map(|s| s.path.clone()));
    skip.extend(
        record
            .credentials
            .iter()
            .filter(|c| c.kind == CredKind::Live)
            .map(|c| c.source.clone()),
    );
    let unix = network::read_unix_sockets();
    let listeners = network::read_listeners();
    let inodes: Vec<u64> = unix.iter().map(|s| s.inode).collect();
    let files = unix
        .iter()
        .filter(|s| !s.is_abstract())
        .filter_map(|s| {
            std::fs::symlink_metadata(&s.name)
                .ok()
                .map(|m| (s.name.clone(), m.uid()))
        })
        .collect();
    // Which process holds a socket is root's knowledge (other users' /proc/PID/fd): the
    // agent's owner learns only what the agent itself could (socket file owners).
    let holders = if ctx.caller.is_root {
        network::socket_holders(&inodes)
    } else {
        BTreeMap::new()
    };
    let owners = SocketOwners { holders, files };
    let plan = Plan {
        homes: homes_to_scan(ctx, record)?,
        skip,
        writable_roots: probes::default_writable_roots(),
        host_temp: Vec::new(),
        unix,
        listeners,
        limits: probes::Limits::default(),
    };
    Ok((plan, owners))
}

/// /root, every directory in /home, the homes of human accounts (uid 1000 and up, from
/// /etc/passwd) and of the other agents; never the agent's own.
fn homes_to_scan(ctx: &Context, record: &AgentRecord) -> Result<Vec<PathBuf>> {
    let mut homes = vec![PathBuf::from("/root")];
    if let Ok(entries) = std::fs::read_dir("/home") {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                homes.push(entry.path());
            }
        }
    }
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(uid), Some(home)) = (f.get(2).and_then(|u| u.parse::<u32>().ok()), f.get(5))
            else {
                continue;
            };
            if (uid >= 1000 && uid != 65534) || ctx.config.uid_in_range(uid) {
                homes.push(PathBuf::from(home));
            }
        }
    }
    for other in ctx.registry.all()? {
        homes.push(other.home);
    }
    let system = [
        "/",
        "/nonexistent",
        "/bin",
        "/usr",
        "/var",
        "/etc",
        "/dev",
        "/proc",
        "/sys",
    ];
    homes.retain(|h| {
        h.is_absolute()
            && *h != record.home
            && !system.iter().any(|s| h == std::path::Path::new(s))
            && h.is_dir()
    });
    homes.sort();
    homes.dedup();
    // A home inside another (e.g. /home and /home/x) is walked once, as part of the outer.
    let mut outer: Vec<PathBuf> = Vec::new();
    for h in homes {
        if !outer.iter().any(|o| h.starts_with(o)) {
            outer.push(h);
        }
    }
    Ok(outer)
}
