//! The records agentuser keeps, and their field types: what an agent is (its account,
//! shares, credentials and network settings), as stored in `agents/NAME.toml`.
//!
//! This module sits beneath everything else: the registry stores these records and the
//! features (sharing, credentials, the runner, audit) read and change them; it imports
//! none of them, nor the command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where an agent is in its life cycle. A record that is not `Ready` marks an operation
/// that was interrupted; running the same command again completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Creating,
    Ready,
    Deleting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    pub name: String,
    pub state: AgentState,
    pub owner: String,
    pub owner_uid: u32,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    #[serde(default)]
    pub comment: String,
    /// Seconds since the epoch.
    pub created: u64,
    #[serde(default)]
    pub shares: Vec<ShareRecord>,
    #[serde(default)]
    pub credentials: Vec<CredentialRecord>,
    /// The agent's own network mode when `exec --network` is not given; None: the
    /// config's `network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Network allowlist entries in canonical form (`crate::network::allowlist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_allow: Vec<String>,
    /// Environment variables set at every run (`agentuser set NAME env.VAR=VALUE`); not
    /// secrets (those are environment credentials).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// The directory exec starts in without --cwd (`agentuser set NAME cwd=DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

/// Where a share is in its life: anything but `ready` marks a walk that was interrupted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareState {
    #[default]
    Ready,
    /// `share` started granting; run it again to finish.
    Granting,
    /// `unshare` (or `delete`) started revoking; run it again to finish.
    Revoking,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRecord {
    /// Canonical path of the shared file or directory.
    pub path: PathBuf,
    pub access: Access,
    /// Owner of the tree's root when shared: only entries it or the agent owns get ACLs.
    pub tree_uid: u32,
    /// `--allow-git-writes`: `.git` inside this read-write share is writable by the agent.
    #[serde(default)]
    pub allow_git_writes: bool,
    #[serde(default)]
    pub state: ShareState,
    /// While `revoking`: the unshare (or delete) was asked to leave the agent's files its
    /// own (`--keep-owner`), so the run that completes it does too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_owner: bool,
}

impl ShareRecord {
    /// The user named in default ACLs for read-write shares (root needs no entry).
    pub fn named_owner(&self) -> Option<u32> {
        (self.tree_uid != 0).then_some(self.tree_uid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredKind {
    Copy,
    Live,
    Env,
    /// An ssh key served by the filtered agent (`cred ssh`); the agent never holds it.
    Ssh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub kind: CredKind,
    /// Source file (copy, live; absolute) or variable name (env).
    pub source: PathBuf,
    /// Destination relative to the agent's home (copy, live).
    #[serde(default)]
    pub dest: Option<PathBuf>,
    /// SHA-256 of the source when it was last copied or checked (copy, live).
    #[serde(default)]
    pub sha256: Option<String>,
    /// SHA-256 of what was written into the agent's home (copy).
    #[serde(default)]
    pub dest_sha256: Option<String>,
    /// When the digests were recorded, seconds since the epoch.
    #[serde(default)]
    pub recorded: u64,
    /// Device and inode of a live source when it was added: the only file that may carry
    /// the agent's ACL entry (records from before this field get it at their next sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_inode: Option<(u64, u64)>,
    /// env with `--host`: the hosts the value is bound to (brokered: the agent gets a
    /// placeholder, the policy point swaps the value in toward these hosts only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// ssh: the key and the host keys of its hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshKeyRecord>,
}

/// An ssh credential (`cred ssh`): what the filtered agent lists and whom it signs for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshKeyRecord {
    /// The public key, in OpenSSH's one-line form.
    pub public: String,
    /// The private key file beside it, read as the owner at run start when the owner's
    /// ssh-agent does not hold the key.
    pub private: PathBuf,
    /// The host keys of the allowed hosts (OpenSSH one-line form, without comment).
    pub host_keys: Vec<String>,
}

/// Network view of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A private network namespace whose only way out is agentuser's policy point, to the
    /// destinations in the agent's allowlist (`agentuser net`)
    Allowlist,
    /// The host's network, loopback services included
    Host,
    /// A private network namespace with loopback only
    None,
}

impl Network {
    /// The mode a word names (`allowlist`, `host`, `none`).
    pub fn parse(word: &str) -> Option<Network> {
        [Network::Allowlist, Network::Host, Network::None]
            .into_iter()
            .find(|mode| mode.word() == word)
    }

    pub fn word(self) -> &'static str {
        match self {
            Network::Allowlist => "allowlist",
            Network::Host => "host",
            Network::None => "none",
        }
    }
}
