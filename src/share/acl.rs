//! The ACL edits on one entry, made through the `/proc/self/fd/N` path of a descriptor the
//! walk holds: the path names that very inode, so nothing is looked up by name here.
//!
//! Grant: `u:AGENT:r-X` or `rwX` on the access ACL; on directories a default ACL with the
//! same entry (so new files inherit it) and, for read-write, `u:OWNER:rwx` (so the owner
//! keeps full access to what the agent creates). The default mask is `rwx`: with a default
//! ACL the umask does not apply, so a file created with the usual mode 0666 gets mask `rw-`
//! and stays editable by the other side.
//!
//! Revoke: the agent's entries go; when no named entry is left the ACL goes entirely, so the
//! file is back to its plain mode.
#![forbid(unsafe_code)]

use std::io;
use std::path::Path;

use posix_acl::{ACL_EXECUTE, ACL_READ, ACL_WRITE, ACLError, PosixACL, Qualifier};

use crate::sys::xattr;

/// What a grant gives on one entry.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub agent: u32,
    pub write: bool,
    /// Owner of the share: named in default ACLs (and on the agent's own entries) for
    /// read-write shares so it keeps access to what the agent creates. `None` for root,
    /// which needs no entry.
    pub owner: Option<u32>,
}

/// What one entry is, as far as the ACL edits care.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub is_dir: bool,
    pub mode: u32,
    pub uid: u32,
}

fn io_error(err: ACLError) -> io::Error {
    match err.as_io_error() {
        Some(e) => match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        },
        None => io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
    }
}

fn named(acl: &PosixACL) -> impl Iterator<Item = Qualifier> + '_ {
    acl.entries()
        .into_iter()
        .map(|e| e.qual)
        .filter(|q| matches!(q, Qualifier::User(_) | Qualifier::Group(_)))
}

/// `X` of setfacl: execute for directories and for files someone may already execute.
fn perms(write: bool, exec: bool) -> u32 {
    ACL_READ | if write { ACL_WRITE } else { 0 } | if exec { ACL_EXECUTE } else { 0 }
}

/// Sets `qual` to `perm` unless it already is; returns whether it changed.
fn ensure(acl: &mut PosixACL, qual: Qualifier, perm: u32) -> bool {
    if acl.get(qual) == Some(perm) {
        return false;
    }
    acl.set(qual, perm);
    true
}

/// Applies `grant` to the entry behind `path`. Returns whether anything was written.
pub fn grant(path: &Path, entry: Entry, grant: Grant) -> io::Result<bool> {
    let exec = entry.is_dir || entry.mode & 0o111 != 0;
    // Most entries of a tree shared for the first time have no ACL: then it is built from
    // the mode we already hold, sparing libacl's read and its stat (a third of the system
    // calls per entry).
    let mut acl = if xattr::exists(path, xattr::ACL_ACCESS)? {
        PosixACL::read_acl(path).map_err(io_error)?
    } else {
        PosixACL::new(entry.mode)
    };
    let old_mask = acl.get(Qualifier::Mask);
    let mut ours = vec![Qualifier::User(grant.agent)];
    let mut changed = ensure(
        &mut acl,
        Qualifier::User(grant.agent),
        perms(grant.write, exec),
    );
    // The agent's own files (made in a read-write share): the owner keeps full access.
    if let Some(owner) = grant.owner {
        if grant.write && entry.uid != owner {
            ours.push(Qualifier::User(owner));
            changed |= ensure(&mut acl, Qualifier::User(owner), perms(true, exec));
        }
    }
    if changed {
        if let Some(mask) = old_mask {
            clamp_to_mask(&mut acl, mask, &ours);
        }
        acl.write_acl(path).map_err(io_error)?;
    }
    if entry.is_dir {
        changed |= grant_default(path, &acl, grant)?;
    }
    Ok(changed)
}

/// Narrows every group-class entry but the grant's own (`ours`) to what the old `mask` let
/// it have. The mask is recalculated on write as the union of those entries: an entry
/// inherited wider than its mask (`u:OWNER:rwx` from a default ACL on a file created 0644,
/// mask `rw-`) would otherwise widen the mask, and so the group's and every named entry's
/// effective rights, on a mere re-share. What each entry could do before stays exactly so.
pub(crate) fn clamp_to_mask(acl: &mut PosixACL, mask: u32, ours: &[Qualifier]) {
    for entry in acl.entries() {
        let group_class = matches!(
            entry.qual,
            Qualifier::GroupObj | Qualifier::User(_) | Qualifier::Group(_)
        );
        if group_class && !ours.contains(&entry.qual) && entry.perm & !mask != 0 {
            acl.set(entry.qual, entry.perm & mask);
        }
    }
}

fn grant_default(path: &Path, access: &PosixACL, grant: Grant) -> io::Result<bool> {
    let mut default = if xattr::exists(path, xattr::ACL_DEFAULT)? {
        PosixACL::read_default_acl(path).map_err(io_error)?
    } else {
        PosixACL::empty()
    };
    let mut changed = false;
    if default.entries().is_empty() {
        // Like setfacl: a new default ACL starts from the directory's own base entries, so
        // new files get the modes they would have had, plus the named entries.
        for qual in [Qualifier::UserObj, Qualifier::GroupObj, Qualifier::Other] {
            default.set(qual, access.get(qual).unwrap_or(0));
        }
        changed = true;
    }
    changed |= ensure(
        &mut default,
        Qualifier::User(grant.agent),
        perms(grant.write, true),
    );
    if let Some(owner) = grant.owner {
        if grant.write {
            changed |= ensure(&mut default, Qualifier::User(owner), perms(true, true));
        }
    }
    if changed {
        default.write_default_acl(path).map_err(io_error)?;
    }
    Ok(changed)
}

/// Removes the agent's access and default entries from the entry behind `path`. `owner` is
/// the share's owner: a default ACL left with nothing but the owner's entry was made by
/// `share` and goes too. Returns whether anything was written.
pub fn revoke(path: &Path, is_dir: bool, agent: u32, owner: Option<u32>) -> io::Result<bool> {
    let acl = PosixACL::read_acl(path).map_err(io_error)?;
    let mut changed = false;
    if acl.remove(Qualifier::User(agent)).is_some() {
        if named(&acl).next().is_none() {
            // Nothing named is left: back to the plain mode, group bits from the group
            // entry (not from the mask the grant widened).
            let base = |q| acl.get(q).unwrap_or(0);
            xattr::set_minimal_acl(
                path,
                base(Qualifier::UserObj),
                base(Qualifier::GroupObj),
                base(Qualifier::Other),
            )?;
        } else {
            let mut acl = acl;
            acl.write_acl(path).map_err(io_error)?;
        }
        changed = true;
    }
    if is_dir {
        let mut default = PosixACL::read_default_acl(path).map_err(io_error)?;
        if default.remove(Qualifier::User(agent)).is_some() {
            let only_ours = named(&default).all(|q| Some(q) == owner.map(Qualifier::User));
            if only_ours {
                xattr::remove(path, xattr::ACL_DEFAULT)?;
            } else {
                default.write_default_acl(path).map_err(io_error)?;
            }
            changed = true;
        }
    }
    Ok(changed)
}

/// Whether the file system of `path` stores POSIX ACLs (reading one fails with
/// EOPNOTSUPP where it does not).
pub fn supported(path: &Path) -> io::Result<bool> {
    match PosixACL::read_acl(path) {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = io_error(e);
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) || e.kind() == io::ErrorKind::Unsupported
            {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
