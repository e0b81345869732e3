//! Reading a credential's source with a user's own access rights (docs/threat-model.md row 17):
//! the caller's at `cred add`, the owner's at `sync`, never root's. A user can obtain
//! through the helper only what they could read themselves.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use super::secure_path::Links;
use super::secure_path::{self, check_kind};
use crate::sys::ids::{Identity, with_identity};

/// A source file as read: its content, digest, and the open descriptor (still
/// naming the very file that was read, for the ACL of a live credential).
pub struct Source {
    pub data: Vec<u8>,
    pub sha256: String,
    pub file: File,
    /// Device and inode of the file that was read (a live credential is pinned to them).
    pub inode: (u64, u64),
}

/// Why a source could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    Missing,
    Denied,
}

/// Reads `path` as `who`: a regular file of at most `max` bytes, reached only through
/// directories and links that no uid but root, `who` and the agent's `owner_uid` can change
/// ([`secure_path`]). With [`Links::Follow`] symlinks are followed as any program `who`
/// runs would follow them.
pub fn read(path: &Path, who: &Identity, owner_uid: u32, max: u64, links: Links) -> Result<Source> {
    let shown = path.display();
    with_identity(who, || {
        let file = secure_path::open(path, &[who.uid, owner_uid], links)
            .with_context(|| format!("reading {shown}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading {shown}"))?;
        check_kind(&meta).with_context(|| format!("reading {shown}"))?;
        check_file_system(&file).with_context(|| format!("reading {shown}"))?;
        if meta.len() > max {
            bail!("reading {shown}: larger than {max} bytes (cred_max_bytes in the config)");
        }
        let mut data = Vec::new();
        (&file)
            .take(max + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {shown}"))?;
        if data.len() as u64 > max {
            bail!("reading {shown}: larger than {max} bytes (cred_max_bytes in the config)");
        }
        Ok(Source {
            sha256: super::sha256_hex(&data),
            inode: (meta.dev(), meta.ino()),
            data,
            file,
        })
    })
}

/// The real path of `path` (every symlink resolved), resolved with `who`'s rights.
pub fn canonical(path: &Path, who: &Identity) -> Result<PathBuf> {
    with_identity(who, || {
        std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))
    })
}

/// Classifies a read failure for state reports.
pub fn unreadable(err: &anyhow::Error) -> Option<Unreadable> {
    let io = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())?;
    match io.kind() {
        std::io::ErrorKind::NotFound => Some(Unreadable::Missing),
        std::io::ErrorKind::PermissionDenied => Some(Unreadable::Denied),
        _ => None,
    }
}

/// Refuses kernel pseudo file systems. Their files pass for regular ones, but what they hold
/// depends on who reads them: /proc/self/... named by the owner (directly, through /dev/fd or
/// a symlink) would describe the privileged helper itself, at `sync` during a root-started
/// exec as well. Non-dumpability already closes the worst of /proc/self (environ, mem); this
/// closes the rest, whatever the path.
fn check_file_system(file: &File) -> Result<()> {
    use nix::sys::statfs::{
        BPF_FS_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC, NSFS_MAGIC,
        PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SELINUX_MAGIC, SMACK_MAGIC, SYSFS_MAGIC, TRACEFS_MAGIC,
        fstatfs,
    };
    let kind = fstatfs(file).context("fstatfs")?.filesystem_type();
    let pseudo = [
        PROC_SUPER_MAGIC,
        SYSFS_MAGIC,
        DEBUGFS_MAGIC,
        TRACEFS_MAGIC,
        SECURITYFS_MAGIC,
        SELINUX_MAGIC,
        SMACK_MAGIC,
        CGROUP_SUPER_MAGIC,
        CGROUP2_SUPER_MAGIC,
        BPF_FS_MAGIC,
        NSFS_MAGIC,
    ];
    if pseudo.contains(&kind) {
        bail!("it is on a kernel pseudo file system (/proc, /sys...), not a credential file");
    }
    Ok(())
}

/// Refuses a source the agent could redirect or rewrite: one whose path, or any directory
/// on the way to it, resolves (with `who`'s rights) into the agent's home or one of its
/// shares. There the agent can swap a component for a symlink to, say, the owner's SSH key,
/// and the next sync would copy that key to it (or `--live` would grant it an ACL).
pub fn check_out_of_agent_reach(
    path: &Path,
    who: &Identity,
    record: &crate::registry::AgentRecord,
) -> Result<()> {
    let reach: Vec<&Path> = std::iter::once(record.home.as_path())
        .chain(record.shares.iter().map(|s| s.path.as_path()))
        .collect();
    let mut prefixes: Vec<&Path> = path.ancestors().collect();
    prefixes.reverse();
    for prefix in prefixes {
        if prefix.parent().is_none() {
            continue;
        }
        let resolved = with_identity(who, || Ok(std::fs::canonicalize(prefix).ok()))?;
        let Some(resolved) = resolved else {
            continue;
        };
        if let Some(area) = reach.iter().find(|area| resolved.starts_with(area)) {
            bail!(
                "{}: lies in {}, which the agent can change: not a credential source",
                path.display(),
                area.display()
            );
        }
    }
    Ok(())
}
