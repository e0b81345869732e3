//! Lock files: an exclusive `flock` on a root-private file, waited for at most
//! [`LOCK_WAIT`](super::LOCK_WAIT), with a note of who holds it.
//!
//! The holder writes one line (pid, caller, command) into the file once it has the lock
//! and empties it when it lets go. A waiter that gives up names the holder from
//! `/proc/locks` (the kernel's word for which process holds the lock) and adds the note
//! only when it was written by that very process: a note is advisory, a process that died
//! without emptying it, or one that never writes notes (`flock(1)`), must not be misnamed.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::LOCK_WAIT;

/// How long a waiter sleeps between attempts.
const RETRY: Duration = Duration::from_millis(20);

/// A held lock; released (and its note emptied) when dropped.
pub struct Held {
    file: Flock<File>,
}

impl Held {
    /// Removes the lock file, still held: waiters on it start over on a new file.
    pub fn remove(self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// Takes the lock at `path` (created 0600 when missing), waiting at most [`LOCK_WAIT`].
/// `holder` goes into the note; `what` names the lock in messages.
///
/// A lock file may be removed by its holder ([`Held::remove`]): a waiter that then gets the
/// lock on the removed file opens the path again, so two processes never both hold it.
pub fn acquire(path: &Path, holder: &str, what: &str) -> Result<Held> {
    let mut file = open(path)?;
    let start = Instant::now();
    let locked = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) if still_at(&locked, path)? => break locked,
            Ok(removed) => {
                drop(removed);
                file = open(path)?;
            }
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) => file = back,
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        if let Some(sig) = crate::sys::signals::pending_interrupt() {
            return Err(crate::error::interrupted(sig))
                .with_context(|| format!("waiting for the lock of {what}"));
        }
        if start.elapsed() >= LOCK_WAIT {
            bail!(
                "{what} is busy: its lock ({}) is still held after {} s by {}: try again later",
                path.display(),
                LOCK_WAIT.as_secs(),
                describe_holder(&file)
            );
        }
        std::thread::sleep(RETRY);
    };
    let note = format!("pid={} {holder}\n", std::process::id());
    // The note is advisory: failing to write it must not fail the command.
    let _ = locked
        .set_len(0)
        .and_then(|()| locked.write_all_at(note.as_bytes(), 0));
    Ok(Held { file: locked })
}

/// Whether the locked file is still the one at `path` (not removed by its last holder).
fn still_at(file: &File, path: &Path) -> Result<bool> {
    let held = file.metadata()?;
    Ok(std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev()))
}

fn open(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != 0 {
        bail!("{}: not a root-owned regular file", path.display());
    }
    Ok(file)
}

/// Who holds the lock on `file`: the pid the kernel reports, with the holder's note when
/// that process wrote it, else what /proc says about the process.
fn describe_holder(file: &File) -> String {
    let Some(pid) = meta_holder(file) else {
        return "another process".into();
    };
    let mut buf = [0u8; 512];
    let len = file.read_at(&mut buf, 0).unwrap_or(0);
    let note = String::from_utf8_lossy(&buf[..len]);
    let note = note.lines().next().unwrap_or("").trim();
    if let Some(rest) = note.strip_prefix(&format!("pid={pid} ")) {
        return format!("pid {pid} ({})", printable(rest));
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    format!("pid {pid} ({}, uid {uid})", printable(comm.trim()))
}

/// The pid holding an flock on the inode of `file`, from /proc/locks.
fn meta_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (major, minor) = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
    );
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; waiters have "->" after "1:".
        if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&wanted.as_str()) {
            return None;
        }
        fields.get(4)?.parse().ok()
    })
}

/// Text from a file or /proc, safe to print on one line.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter that gets the lock of a removed file starts over: the new file at the path
    /// is locked by it, so a third process cannot take it too.
    #[test]
    fn a_removed_lock_file_is_never_held_twice() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // lock files must be root's
        }
        let dir = std::env::temp_dir().join(format!("agentuser-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coder");
        let first = acquire(&path, "first", "test").unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || acquire(&path, "second", "test").unwrap())
        };
        // Removed only once the waiter waits on it (holds the file open).
        while !waiter_waits(&path) {
            std::thread::sleep(RETRY);
        }
        first.remove(&path).unwrap();
        let second = waiter.join().unwrap();
        assert!(still_at(&second.file, &path).unwrap());
        let third = open(&path).unwrap();
        assert!(matches!(
            Flock::lock(third, FlockArg::LockExclusiveNonblock),
            Err((_, Errno::EWOULDBLOCK))
        ));
        drop(second);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether this process has `path` open twice: the holder's and the waiter's descriptor.
    fn waiter_waits(path: &Path) -> bool {
        let target = std::fs::canonicalize(path).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == target))
            .count()
            >= 2
    }
}
