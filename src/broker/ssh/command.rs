//! `cred ssh NAME KEY.pub --host HOST... [--known-hosts FILE...]`: records the public key,
//! the private key file beside it (not read here) and the host keys of each host, every
//! file read with the caller's rights.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::known_hosts;
use crate::context::Context;
use crate::creds::{CredKind, CredentialRecord};
use crate::error::usage;
use crate::record::SshKeyRecord;
use crate::sys::ids::with_identity;

/// Largest public key or known_hosts file read.
const TEXT_MAX: u64 = 1 << 20;

pub fn add(
    ctx: &Context,
    name: &str,
    key: &Path,
    hosts: &[String],
    known_hosts_files: &[PathBuf],
) -> Result<()> {
    let hosts = host_names(hosts)?;
    crate::policy::ready_agent(ctx, name)?;
    let key_path = std::path::absolute(key).context("resolving the key path")?;
    let private = match key_path.to_str().and_then(|p| p.strip_suffix(".pub")) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => bail!("{}: give the public key file (KEY.pub)", key.display()),
    };
    let text = read_as_caller(ctx, &key_path)?;
    let mut public = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|_| anyhow::anyhow!("{}: not an OpenSSH public key", key.display()))?;
    public.set_comment("");
    let host_keys = host_keys(ctx, &hosts, known_hosts_files)?;
    let fingerprint = public.fingerprint(ssh_key::HashAlg::Sha256).to_string();

    let lock = ctx.registry.lock(name)?;
    let mut record = crate::policy::ready_agent(ctx, name)?;
    record
        .credentials
        .retain(|c| !(c.kind == CredKind::Ssh && c.source == key_path));
    record.credentials.push(CredentialRecord {
        kind: CredKind::Ssh,
        source: key_path.clone(),
        dest: None,
        sha256: Some(fingerprint.clone()),
        dest_sha256: None,
        recorded: crate::creds::now(),
        source_inode: None,
        hosts: hosts.clone(),
        ssh: Some(SshKeyRecord {
            public: public.to_openssh()?,
            private,
            host_keys,
        }),
    });
    ctx.registry.save(&lock, &record)?;
    crate::eventlog::record(
        ctx,
        "cred-ssh",
        name,
        &format!("key={fingerprint} hosts={}", hosts.join(",")),
    );
    Ok(())
}

/// The host keys of every host: from the caller's ~/.ssh/known_hosts and the files given;
/// a host without one is refused (nothing could be signed for it).
fn host_keys(ctx: &Context, hosts: &[String], files: &[PathBuf]) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for file in files {
        texts.push(read_as_caller(ctx, file)?);
    }
    if let Some(home) = crate::account::home_of(ctx.caller.uid) {
        if let Ok(text) = read_as_caller(ctx, &home.join(".ssh/known_hosts")) {
            texts.push(text);
        }
    }
    let mut keys = Vec::new();
    for host in hosts {
        let found: Vec<String> = texts
            .iter()
            .flat_map(|t| known_hosts::keys_for(t, host))
            .collect();
        if found.is_empty() {
            bail!(
                "{host}: no host key in your ~/.ssh/known_hosts (connect to it once with ssh, \
                 or give --known-hosts FILE, e.g. made with ssh-keyscan and checked)"
            );
        }
        for key in found {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

fn read_as_caller(ctx: &Context, path: &Path) -> Result<String> {
    with_identity(&ctx.caller.identity(), || {
        let file = std::fs::File::open(path)?;
        let mut text = String::new();
        file.take(TEXT_MAX).read_to_string(&mut text)?;
        Ok(text)
    })
    .with_context(|| format!("reading {}", path.display()))
}

/// `--host` names: exact host names, at least one.
fn host_names(hosts: &[String]) -> Result<Vec<String>> {
    if hosts.is_empty() {
        return Err(usage(
            "cred ssh: give the hosts the key may be used for (--host HOST)",
        ));
    }
    crate::network::allowlist::exact_host_names(hosts)
}
