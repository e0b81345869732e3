//! What `audit NAME` says about the agent's environment credentials (issue 13 item 1): a raw
//! value is the agent's to send anywhere (THREAT-MODEL row 29); a brokered one needs the
//! allowlist network mode, where the policy point swaps it in.
#![forbid(unsafe_code)]

use crate::audit::findings::{Finding, Severity, View};
use crate::creds::CredKind;
use crate::record::Network;
use crate::registry::AgentRecord;

pub fn findings(record: &AgentRecord, network: Network) -> Vec<Finding> {
    let mut out = Vec::new();
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Env)
    {
        let var = cred.source.display();
        if cred.hosts.is_empty() {
            out.push(
                Finding::new(
                    Severity::Medium,
                    "raw-secret",
                    format!("env {var}"),
                    "the agent holds the raw value: a prompt-injected agent can send it \
                     anywhere its network allows, or write it into a file or commit",
                )
                .fix(format!(
                    "agentuser cred env {} {var} --host HOST (the agent then holds a placeholder)",
                    record.name
                ))
                .in_views(&[View::View]),
            );
        } else if network != Network::Allowlist {
            out.push(
                Finding::new(
                    Severity::Info,
                    "brokered-secret",
                    format!("env {var}"),
                    format!(
                        "brokered for {}, but the network mode is {}: the agent has the \
                         placeholder only, and no policy point swaps the value in",
                        cred.hosts.join(", "),
                        network.word()
                    ),
                )
                .in_views(&[View::View]),
            );
        }
    }
    out
}
