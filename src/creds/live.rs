//! Live credentials: the owner's file stays where it is, gets a read ACL entry for the agent
//! (on the file only, never on its ancestors: the runner's bind mount is how the agent
//! reaches it), and is bind-mounted read-only at the destination in the agent's view.
//!
//! ACLs are changed through `/proc/self/fd/N` of a descriptor opened with the owner's
//! rights, so the entry lands on exactly the file that was checked, never on whatever a path
//! names a moment later.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use posix_acl::{ACL_READ, PosixACL, Qualifier};

use crate::sys::ids::{Identity, with_identity};

fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Refuses to put an ACL on a file `who` does not own (root may).
pub fn check_owned(file: &File, who: &Identity, shown: &Path) -> Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("checking {}", shown.display()))?;
    if who.uid != 0 && meta.uid() != who.uid {
        bail!(
            "{}: a live credential must be a file you own (copy it instead)",
            shown.display()
        );
    }
    Ok(())
}

/// Gives `agent_uid` read access to the open file.
pub fn grant(file: &File, agent_uid: u32, shown: &Path) -> Result<()> {
    let path = fd_path(file);
    let mut acl = PosixACL::read_acl(&path)
        .map_err(|e| anyhow!("reading the ACL of {}: {e}", shown.display()))?;
    // Add read to what the agent may already have (a share's entry), never take any away,
    // and widen nobody else's rights through the recalculated mask.
    let old_mask = acl.get(Qualifier::Mask);
    let perm = acl.get(Qualifier::User(agent_uid)).unwrap_or(0) | ACL_READ;
    acl.set(Qualifier::User(agent_uid), perm);
    if let Some(mask) = old_mask {
        crate::share::clamp_to_mask(&mut acl, mask, &[Qualifier::User(agent_uid)]);
    }
    acl.write_acl(&path)
        .map_err(|e| anyhow!("setting an ACL on {}: {e}", shown.display()))
}

/// Whether the open file grants `agent_uid` read access.
pub fn granted(file: &File, agent_uid: u32) -> bool {
    PosixACL::read_acl(fd_path(file))
        .ok()
        .and_then(|acl| acl.get(Qualifier::User(agent_uid)))
        .is_some_and(|perm| perm & ACL_READ != 0)
}

/// Removes `agent_uid`'s entry from the file at `path`, opened with `who`'s rights and
/// without following a link. A file that is gone, no longer `who`'s, or not the `pinned`
/// one any more is left alone (with a warning for the last: the entry on the original,
/// wherever it went, cannot be reached by its name).
pub fn revoke(
    path: &Path,
    who: &Identity,
    agent_uid: u32,
    pinned: Option<(u64, u64)>,
) -> Result<()> {
    let opened = with_identity(who, || {
        Ok(File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path))
    })?;
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("checking {}", path.display()))?;
    if pinned.is_some_and(|pinned| pinned != (meta.dev(), meta.ino())) || meta.is_symlink() {
        // The file that carries the entry is not reachable by this name any more (a rename
        // over it unlinked it, most likely); the one there now is not touched.
        eprintln!(
            "agentuser: warning: {}: now another file than the live credential added; it was \
             left alone (an entry for uid {agent_uid} may remain on the original: getfacl)",
            path.display()
        );
        return Ok(());
    }
    if check_owned(&file, who, path).is_err() {
        return Ok(());
    }
    let proc_path = fd_path(&file);
    let mut acl = PosixACL::read_acl(&proc_path)
        .map_err(|e| anyhow!("reading the ACL of {}: {e}", path.display()))?;
    if acl.remove(Qualifier::User(agent_uid)).is_none() {
        return Ok(());
    }
    // Back to a minimal ACL (no mask) when no named entry remains, so the mode reads as
    // before: group bits from the group entry, not from the mask the grant set. (Writing
    // the ACL through libacl would compute a mask again.)
    let named = acl
        .entries()
        .iter()
        .any(|e| matches!(e.qual, Qualifier::User(_) | Qualifier::Group(_)));
    let written = if named {
        acl.write_acl(&proc_path).map_err(|e| anyhow!("{e}"))
    } else {
        let base = |q| acl.get(q).unwrap_or(0);
        let (user, group, other) = (
            base(Qualifier::UserObj),
            base(Qualifier::GroupObj),
            base(Qualifier::Other),
        );
        crate::sys::xattr::set_minimal_acl(Path::new(&proc_path), user, group, other)
            .map_err(anyhow::Error::from)
    };
    written.with_context(|| format!("removing the ACL entry from {}", path.display()))
}
