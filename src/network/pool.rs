//! Network namespaces of `--network none` runs, kept for the agent's next runs. Creating a
//! network namespace and tearing it down (the kernel's set-up of IPv4, IPv6, netfilter and
//! the rest for each one) was most of what a `none` run cost above a `host` run; 50 runs at
//! once paid it 50 times over (bench/exec-parallel.sh).
//!
//! Each agent has slots `netns/NAME.N`: a file on which a namespace is bind-mounted (its
//! pin), and `netns/NAME.N.lock`, which a runner holds for as long as its run lives. A run
//! takes a slot nobody holds and joins its namespace, so two runs at once never share one
//! (each keeps a loopback, ports and abstract sockets of its own, as before). What a run
//! leaves in it ends with the run: sockets close with their processes, and the agent, with
//! no capability over a namespace of the initial user namespace, can change nothing else in
//! it (docs/threat-model.md row 44). The pins live in the caller's mount namespace; where
//! a pin is missing (another mount namespace, a reboot), the slot's namespace is made anew.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CloneFlags, setns, unshare};

/// At most this many slots per agent (runs at once beyond it get a namespace of their own,
/// made and torn down as before).
const SLOTS: u32 = 256;

/// A slot held for one run: its namespace, which init joins.
pub struct Lease {
    _held: Flock<File>,
    pub namespace: OwnedFd,
}

/// The directory of the pins, below the state directory.
pub fn dir(state: &Path) -> PathBuf {
    state.join("netns")
}

/// A slot of `agent` that no run holds, with its namespace (made and pinned when the slot
/// has none). None when every slot is held. Call while the runner is single-threaded: a new
/// namespace is made by the runner itself, which returns to its own at once.
pub fn lease(state: &Path, agent: &str) -> Result<Option<Lease>> {
    let dir = dir(state);
    crate::registry::ensure_root_dir(&dir, 0o700)?;
    let existing = slots_of(&dir, agent);
    // The slots that exist first, each run from a place of its own in them (runs started
    // together), then new ones.
    let offset = std::process::id() % existing.max(1);
    let order = (0..existing)
        .map(|k| (offset + k) % existing)
        .chain(existing..SLOTS);
    for slot in order {
        let Some(held) = hold(&dir.join(format!("{agent}.{slot}.lock")))? else {
            continue;
        };
        let pin = dir.join(format!("{agent}.{slot}"));
        let namespace = match pinned(&pin)? {
            Some(namespace) => namespace,
            None => make_and_pin(&pin)?,
        };
        return Ok(Some(Lease {
            _held: held,
            namespace,
        }));
    }
    Ok(None)
}

/// How many slots `agent` has: past its highest (the directory holds every agent's).
fn slots_of(dir: &Path, agent: &str) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let slot = name
                .to_str()?
                .strip_prefix(agent)?
                .strip_prefix('.')?
                .strip_suffix(".lock")?;
            slot.parse::<u32>().ok()
        })
        .map(|slot| slot.saturating_add(1))
        .max()
        .unwrap_or(0)
        .min(SLOTS)
}

/// The lock at `path`, taken; None when another run holds it.
fn hold(path: &Path) -> Result<Option<Flock<File>>> {
    let file = private_file(path)?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
}

/// The root-only file at `path`, made when missing, never through a symlink (the directory
/// is root's, 0700: nobody else could have made anything in it).
fn private_file(path: &Path) -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("{}", path.display()))
}

/// The network namespace pinned at `pin`; None when nothing is (a plain file, or none).
fn pinned(pin: &Path) -> Result<Option<OwnedFd>> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(pin)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", pin.display())),
    };
    let fs = nix::sys::statfs::fstatfs(file.as_fd()).context("fstatfs")?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Ok(None);
    }
    // Only a network namespace, and never the runner's own (the host's).
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let theirs = file.metadata()?;
    if !crate::sys::ns::is_network_namespace(file.as_fd())
        || (theirs.dev(), theirs.ino()) == (own.dev(), own.ino())
    {
        bail!("{}: not a network namespace of its own", pin.display());
    }
    Ok(Some(OwnedFd::from(file)))
}

/// Makes a network namespace with loopback up (as `none` has always had), pins it at `pin`
/// and returns it; the runner is back in its own namespace on every path.
fn make_and_pin(pin: &Path) -> Result<OwnedFd> {
    let own = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    unshare(CloneFlags::CLONE_NEWNET).context("creating a network namespace")?;
    let made = (|| -> Result<OwnedFd> {
        crate::sys::spawn::loopback_up().context("bringing up loopback")?;
        super::no_pacing();
        let namespace = OwnedFd::from(File::open("/proc/self/ns/net")?);
        // The mount point, mounted on through its descriptor: the path is not resolved twice.
        let target = private_file(pin)?;
        let source = format!("/proc/self/fd/{}", namespace.as_raw_fd());
        let target = format!("/proc/self/fd/{}", target.as_raw_fd());
        nix::mount::mount(
            Some(source.as_str()),
            target.as_str(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("pinning a network namespace at {}", pin.display()))?;
        Ok(namespace)
    })();
    if setns(own.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
        // The runner cannot go on in the agent's namespace.
        std::process::abort();
    }
    made
}

/// Unmounts the pin at `path` (every mount stacked on it), so it can be removed.
pub fn unpin(path: &Path) {
    for _ in 0..16 {
        if nix::mount::umount2(
            path,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        )
        .is_err()
        {
            break;
        }
    }
}
