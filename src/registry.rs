//! Agent records, the registry lock, atomic writes and uid tombstones (DESIGN.md section 3).
//!
//! Layout under the fixed `/var/lib/agentuser` (root-owned, 0711):
//! - `agents/NAME.toml` (0600): one record per agent;
//! - `secrets/NAME/` (0700): environment-credential values;
//! - `uids-used` (0600): every uid ever handed to an agent, one per line, never shrinking;
//! - `lock`: taken exclusively by every command that changes state.
//!
//! Mutations need a [`Lock`] token, so the type system keeps every write under the lock.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cli::Network;
use crate::creds::CredentialRecord;
use crate::share::ShareRecord;

pub const STATE_DIR: &str = "/var/lib/agentuser";
const RECORD_MAX_BYTES: u64 = 16 << 20;

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
}

/// Proof that the registry lock is held.
pub struct Lock {
    _file: Flock<File>,
}

pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// Opens the registry at its fixed path, creating the state directories when missing and
    /// refusing them when someone other than root could have written them.
    pub fn open() -> Result<Registry> {
        let registry = Registry {
            root: PathBuf::from(STATE_DIR),
        };
        ensure_root_dir(&registry.root, 0o711)?;
        ensure_root_dir(&registry.agents_dir(), 0o700)?;
        ensure_root_dir(&registry.root.join("secrets"), 0o700)?;
        Ok(registry)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.agents_dir().join(format!("{name}.toml"))
    }

    /// Directory for an agent's environment-credential values (not created here).
    pub fn secrets_dir(&self, name: &str) -> PathBuf {
        self.root.join("secrets").join(name)
    }

    /// Takes the exclusive registry lock; blocks while another command holds it.
    pub fn lock(&self) -> Result<Lock> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let file = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Lock { _file: file })
    }

    /// The record of one agent, if any.
    pub fn load(&self, name: &str) -> Result<Option<AgentRecord>> {
        let path = self.record_path(name);
        let Some(text) = read_private(&path)? else {
            return Ok(None);
        };
        let record: AgentRecord = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.message().trim()))
            .with_context(|| format!("agent record {}", path.display()))?;
        if record.name != name {
            bail!(
                "agent record {}: names agent '{}'",
                path.display(),
                record.name
            );
        }
        Ok(Some(record))
    }

    /// Every agent record, sorted by name.
    pub fn all(&self) -> Result<Vec<AgentRecord>> {
        let dir = self.agents_dir();
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let file_name = entry?.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if crate::names::check_agent_name(name).is_err() {
                continue;
            }
            if let Some(record) = self.load(name)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Writes a record atomically.
    pub fn save(&self, _lock: &Lock, record: &AgentRecord) -> Result<()> {
        let text = toml::to_string(record).context("serializing agent record")?;
        write_atomic(&self.record_path(&record.name), text.as_bytes())
    }

    /// Removes a record (the uid stays tombstoned).
    pub fn remove(&self, _lock: &Lock, name: &str) -> Result<()> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => sync_dir(&self.agents_dir()),
        }
    }

    /// Every uid ever handed to an agent.
    pub fn used_uids(&self) -> Result<BTreeSet<u32>> {
        let path = self.root.join("uids-used");
        let Some(text) = read_private(&path)? else {
            return Ok(BTreeSet::new());
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim().parse().with_context(|| {
                    format!("{}: bad line '{}'", path.display(), l.escape_default())
                })
            })
            .collect()
    }

    /// Tombstones a uid before it is handed out, so it is never handed out again, even if the
    /// operation that took it is interrupted.
    pub fn mark_uid_used(&self, _lock: &Lock, uid: u32) -> Result<()> {
        let mut used = self.used_uids()?;
        if used.insert(uid) {
            let text: String = used.iter().map(|u| format!("{u}\n")).collect();
            write_atomic(&self.root.join("uids-used"), text.as_bytes())?;
        }
        Ok(())
    }
}

/// Creates `path` as a root-owned directory with `mode`, or checks that the existing one is
/// root-owned, a real directory, and not writable by anyone else.
pub fn ensure_root_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            // The umask may have narrowed the mode; set it exactly.
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("{}: not a directory", path.display());
            }
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                bail!(
                    "{}: unsafe ownership or mode (must be root's and not group/world-writable)",
                    path.display()
                );
            }
            Ok(())
        }
    }
}

/// Reads a small root-private file without following a symlink; `None` when absent.
fn read_private(path: &Path) -> Result<Option<String>> {
    let mut file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != 0 || meta.len() > RECORD_MAX_BYTES {
        bail!(
            "{}: not a root-owned regular file of sane size",
            path.display()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text))
}

/// Replaces `path` atomically: a fresh 0600 temp file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a parent")?;
    let file_name = path.file_name().context("path without a file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
