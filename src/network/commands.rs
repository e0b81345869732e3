//! `agentuser net NAME allow|deny|list|log`: the allowlist in the agent's record, and the
//! agent's log of refused connections.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde::Serialize;

use super::allowlist::{self, Entry};
use crate::context::Context;
use crate::{eventlog, policy};

/// `net NAME allow`: adds the entries (and those of the presets) to the allowlist.
pub fn allow(ctx: &Context, name: &str, hosts: &[String], presets: &[String]) -> Result<()> {
    change(ctx, name, hosts, presets, true)
}

/// `net NAME deny`: removes the entries; one that is not there changes nothing.
pub fn deny(ctx: &Context, name: &str, hosts: &[String], presets: &[String]) -> Result<()> {
    change(ctx, name, hosts, presets, false)
}

/// `net NAME log`: the agent's log of refused connections and queries.
pub fn log(ctx: &Context, name: &str) -> Result<()> {
    super::log::print(ctx, name)
}

/// Every entry named on the command line, parsed and canonical, before anything changes.
fn requested(hosts: &[String], presets: &[String]) -> Result<Vec<String>> {
    let mut entries = Vec::new();
    for name in presets {
        entries.extend(allowlist::preset(name)?.iter().map(|e| e.to_string()));
    }
    for host in hosts {
        entries.push(Entry::parse(host)?.to_string());
    }
    Ok(entries)
}

fn change(
    ctx: &Context,
    name: &str,
    hosts: &[String],
    presets: &[String],
    add: bool,
) -> Result<()> {
    let entries = requested(hosts, presets)?;
    policy::ready_agent(ctx, name)?;
    let lock = ctx.registry.lock(name)?;
    let mut record = policy::ready_agent(ctx, name)?;
    let mut list: BTreeSet<String> = record.net_allow.iter().cloned().collect();
    if add {
        list.extend(entries.iter().cloned());
    } else {
        let missing: Vec<&String> = entries.iter().filter(|e| !list.contains(*e)).collect();
        if !missing.is_empty() {
            bail!(
                "agent '{name}': not in the allowlist: {} (see 'agentuser net {name} list')",
                missing
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        for entry in &entries {
            list.remove(entry);
        }
    }
    record.net_allow = list.into_iter().collect();
    ctx.registry.save(&lock, &record)?;
    let action = if add { "net-allow" } else { "net-deny" };
    eventlog::record(
        ctx,
        action,
        name,
        &format!("entries={:?}", entries.join(" ")),
    );
    Ok(())
}

#[derive(Serialize)]
struct ListView<'a> {
    name: &'a str,
    /// The mode exec uses without --network, and where it comes from.
    network: &'static str,
    network_from: &'static str,
    allow: &'a [String],
}

pub fn list(ctx: &Context, name: &str, json: bool) -> Result<()> {
    let record = policy::agent(ctx, name)?;
    let (mode, from) = match record.network {
        Some(mode) => (mode, "agent"),
        None => (ctx.config.network, "config"),
    };
    if json {
        let view = ListView {
            name,
            network: mode.word(),
            network_from: from,
            allow: &record.net_allow,
        };
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("network: {} (from the {from})", mode.word());
    if record.net_allow.is_empty() {
        println!("allow: (nothing)");
    }
    for entry in &record.net_allow {
        println!("allow {entry}");
    }
    Ok(())
}
