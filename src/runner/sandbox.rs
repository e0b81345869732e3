//! The agent's view (docs/design.md section 4 step 5): new mount, IPC and (with `--network
//! none`) network namespaces, entered by the pid-1 process of a new pid namespace.
//!
//! Mount order, so that nothing the agent can write is ever resolved twice (docs/threat-model.md
//! row 21):
//! 1. every source is opened with `openat2(RESOLVE_NO_SYMLINKS)` as an `O_PATH` descriptor,
//!    before anything is hidden;
//! 2. mounts whose target lies inside another exposed tree (a live credential in the home, a
//!    nested share) are attached onto their target descriptor in the original tree;
//! 3. each exposed tree (the home, every share) is cloned, detached, with everything mounted
//!    inside it, and made nosuid/nodev (and read-only for `ro`, recursively);
//! 4. `/home`, `/root`, `/run/user`, the agents' home base and other agents' homes are
//!    covered by empty directories, and `/tmp`, `/var/tmp`, `/dev/shm` by private ones, all
//!    bound from one fresh tmpfs that lives as long as the namespace;
//! 5. the detached trees are attached at their own paths (mount points inside the fresh
//!    tmpfs are created there, where only root can write);
//! 6. a fresh `/proc` shows only the new pid namespace.
//!
//! A missing source or target is skipped with a warning; a symlink anywhere in a path is an
//! error (the run is refused).
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, fstat, mkdirat};

use crate::context::Context;
use crate::record::Network;
use crate::registry::AgentRecord;
use crate::sys::mount as fdmount;
use crate::view::ViewMount;

/// Everything needed to build the view, computed by the runner before it forks.
#[derive(Debug, Clone)]
pub struct ViewPlan {
    pub network: Network,
    /// Covered by an empty tmpfs (mode 0755).
    pub hidden: Vec<PathBuf>,
    /// Covered by a private tmpfs (mode 1777).
    pub private_tmp: Vec<PathBuf>,
    /// The home first, then shares and live credentials.
    pub mounts: Vec<ViewMount>,
    /// Warnings to print (one line each) before the run.
    pub warnings: Vec<String>,
    /// The owner's `.git` entries in read-write shares as the run starts (device, inode).
    pub known_repositories: Vec<(u64, u64)>,
    /// `allowlist` mode: where the policy point sends the agent's network namespace. None
    /// (audit): a namespace with loopback only.
    pub join_net: Option<std::sync::Arc<OwnedFd>>,
    /// `none` mode: a namespace kept from an earlier run of the agent, to join instead of
    /// making one (`network::pool`). None: a new one.
    pub kept_net: Option<std::sync::Arc<OwnedFd>>,
}

/// Works out the view of `record`'s agent.
pub fn plan(
    ctx: &Context,
    record: &AgentRecord,
    network: Network,
    contents: &crate::share::Contents,
) -> Result<ViewPlan> {
    let mut hidden: Vec<PathBuf> = ["/home", "/root", "/run/user"]
        .iter()
        .map(PathBuf::from)
        .collect();
    hidden.push(ctx.config.home_base.clone());
    // agentuser's own state: empty in the view; agent git directories and the owner's
    // repositories are mounted there (crate::git), on mount points only root made.
    hidden.push(ctx.registry.root().to_path_buf());
    if network == Network::Allowlist {
        // The host's resolver daemons answer any name over a unix socket: a way around the
        // policy point for DNS (docs/threat-model.md row 28).
        hidden.extend(["/run/systemd/resolve", "/run/nscd"].map(PathBuf::from));
    }
    // The records as the caller check read them (damage was reported there).
    for other in &ctx.registry.scan_once()?.records {
        if other.name != record.name && !other.home.starts_with(&ctx.config.home_base) {
            hidden.push(other.home.clone());
        }
    }
    let mut mounts = vec![ViewMount {
        source: record.home.clone(),
        target: record.home.clone(),
        read_only: false,
    }];
    let (share_mounts, known_repositories) = crate::share::view_mounts(record, contents);
    mounts.extend(share_mounts);
    mounts.extend(crate::creds::view_mounts(record));
    let mut warnings = Vec::new();
    mounts.retain(|m| {
        let ok = is_normal_absolute(&m.source) && is_normal_absolute(&m.target);
        if !ok {
            warnings.push(format!(
                "skipping mount {} -> {}: not a normalized absolute path",
                m.source.display(),
                m.target.display()
            ));
        }
        ok
    });
    Ok(ViewPlan {
        network,
        hidden,
        private_tmp: ["/tmp", "/var/tmp", "/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .collect(),
        mounts,
        warnings,
        known_repositories,
        join_net: None,
        kept_net: None,
    })
}

fn is_normal_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Namespaces other than pid, entered by the pid-1 process of the new pid namespace. The
/// `allowlist` mode's network namespace is joined at the end of [`build`].
pub fn unshare_namespaces(plan: &ViewPlan) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    let fresh_net = plan.network == Network::None && plan.kept_net.is_none();
    if fresh_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).context("creating the mount, IPC and network namespaces")?;
    if let (Network::None, Some(kept)) = (plan.network, &plan.kept_net) {
        // Made with loopback up and without pacing (`network::pool`).
        nix::sched::setns(kept.as_fd(), CloneFlags::CLONE_NEWNET)
            .context("joining the agent's network namespace")?;
    }
    if fresh_net {
        crate::sys::spawn::loopback_up().context("bringing up loopback")?;
        crate::network::no_pacing();
    }
    Ok(())
}

/// Builds the view in the (new, private) mount namespace of the calling process, which must
/// be the pid-1 process of the agent's pid namespace (for /proc). Returns warnings.
pub fn build(plan: &ViewPlan) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    // Nothing mounted here propagates back to the host; host mounts still show up.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making the mount namespace private")?;
    let sources = open_sources(plan, &mut warnings)?;
    let is_tree = |m: &ViewMount| m.source == m.target;
    let inside_tree = |m: &ViewMount| {
        plan.mounts
            .iter()
            .any(|t| is_tree(t) && t.target != m.target && m.target.starts_with(&t.target))
    };
    let (inner, top): (Vec<_>, Vec<_>) = sources.into_iter().partition(|(m, _, _)| inside_tree(m));
    attach_inner(inner, &mut warnings)?;
    // 3. Detached copies of the exposed trees, with their inner mounts.
    let mut trees = Vec::new();
    for (m, src, early) in top {
        let tree = match early {
            Some(tree) => tree,
            None => detached_copy(&src, m.read_only)
                .with_context(|| format!("mounting {}", m.source.display()))?,
        };
        trees.push((m, src, tree));
    }
    let covered = hide_and_privatize(plan)?;
    attach_trees(trees, &covered, &mut warnings)?;
    // 6. A /proc of this pid namespace only.
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting /proc")?;
    if plan.network == Network::Allowlist {
        join_network(plan)?;
    }
    Ok(warnings)
}

/// A mount's source descriptor, and its early detached copy when it is shown elsewhere.
type Source<'a> = (&'a ViewMount, OwnedFd, Option<OwnedFd>);

/// Step 1: sources, before anything is hidden. A source shown elsewhere than at its own path is
/// copied now, as it is on the host: the inner mounts of step 2 must not show through it
/// (the owner's .git, covered by the agent's in the share, stays the owner's).
fn open_sources<'a>(plan: &'a ViewPlan, warnings: &mut Vec<String>) -> Result<Vec<Source<'a>>> {
    let mut sources = Vec::new();
    for (i, m) in plan.mounts.iter().enumerate() {
        match open_beneath_root(&m.source) {
            Ok(fd) => {
                let early = (m.source != m.target)
                    .then(|| detached_copy(&fd, m.read_only))
                    .transpose()
                    .with_context(|| format!("mounting {}", m.source.display()))?;
                sources.push((m, fd, early))
            }
            Err(Errno::ENOENT) if i > 0 => warnings.push(format!(
                "{}: does not exist, not mounted in the view",
                m.source.display()
            )),
            Err(e) => bail!("opening {}: {}", m.source.display(), describe(e)),
        }
    }
    Ok(sources)
}

/// Step 2: inner mounts onto their targets in the original tree, outermost first.
fn attach_inner(mut inner: Vec<Source>, warnings: &mut Vec<String>) -> Result<()> {
    inner.sort_by_key(|(m, _, _)| m.target.components().count());
    for (m, src, early) in inner {
        let target = match open_beneath_root(&m.target) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                warnings.push(format!(
                    "{}: mount target does not exist, skipped",
                    m.target.display()
                ));
                continue;
            }
            Err(e) => bail!(
                "opening mount target {}: {}",
                m.target.display(),
                describe(e)
            ),
        };
        if !same_kind(&src, &target)? {
            warnings.push(format!(
                "{}: mount target is not of the same kind as {}, skipped",
                m.target.display(),
                m.source.display()
            ));
            continue;
        }
        let tree = match early {
            Some(tree) => tree,
            None => detached_copy(&src, m.read_only)
                .with_context(|| format!("mounting {}", m.source.display()))?,
        };
        fdmount::attach(tree.as_fd(), target.as_fd())
            .map_err(describe)
            .with_context(|| {
                format!("mounting {} on {}", m.source.display(), m.target.display())
            })?;
    }
    Ok(())
}

/// Step 4: hide and privatize: one fresh tmpfs, a subdirectory of it bound over each place.
/// Returns the places covered.
///
/// The tmpfs itself is attached too, under the first place it covers (beneath that place's
/// own empty directory, so nothing of it shows): closing the last descriptor of a detached
/// mount unmounts it and waits for an expedited RCU grace period, on init's path to the
/// agent; attached, it goes with the rest of the view.
fn hide_and_privatize(plan: &ViewPlan) -> Result<Vec<&Path>> {
    let scratch = fdmount::new_tmpfs(c"0755")
        .map_err(describe)
        .context("creating a tmpfs")?;
    let mut parked = false;
    let mut covered: Vec<&Path> = Vec::new();
    let mut sorted: Vec<&PathBuf> = plan.hidden.iter().collect();
    sorted.sort_by_key(|p| p.components().count());
    let places = sorted
        .into_iter()
        .map(|p| (p, 0o755))
        .chain(plan.private_tmp.iter().map(|p| (p, 0o1777)));
    for (i, (path, mode)) in places.enumerate() {
        if covered.iter().any(|c| path.starts_with(c)) {
            continue;
        }
        if !parked {
            parked = park(&scratch, path)?;
        }
        if cover(&scratch, &format!("{i}"), path, mode)? {
            covered.push(path);
        }
    }
    Ok(covered)
}

/// Step 5: attach the exposed trees at their own paths.
fn attach_trees(
    trees: Vec<(&ViewMount, OwnedFd, OwnedFd)>,
    covered: &[&Path],
    warnings: &mut Vec<String>,
) -> Result<()> {
    for (m, src, tree) in trees {
        let target = if covered.iter().any(|c| m.target.starts_with(c)) {
            // Inside a fresh tmpfs: only root has written there.
            if fstat(src.as_fd()).map(|s| s.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits())
                == Ok(true)
            {
                std::fs::create_dir_all(&m.target)
            } else {
                create_file_mountpoint(&m.target)
            }
            .with_context(|| format!("creating mount point {}", m.target.display()))?;
            open_beneath_root(&m.target)
                .map_err(describe)
                .with_context(|| format!("opening mount point {}", m.target.display()))?
        } else if m.source != m.target {
            // A file shown at another path (the broker's CA bundle over the system's).
            match open_beneath_root(&m.target) {
                Ok(target) if same_kind(&src, &target)? => target,
                _ => {
                    warnings.push(format!(
                        "{}: not a plain file of the same kind, {} not mounted there",
                        m.target.display(),
                        m.source.display()
                    ));
                    continue;
                }
            }
        } else {
            src
        };
        fdmount::attach(tree.as_fd(), target.as_fd())
            .map_err(describe)
            .with_context(|| format!("mounting {}", m.target.display()))?;
    }
    Ok(())
}

/// `allowlist` mode: the namespace the policy point made (it waits meanwhile), or, without
/// a policy point (audit), one with loopback only.
fn join_network(plan: &ViewPlan) -> Result<()> {
    match &plan.join_net {
        Some(channel) => crate::network::join(channel),
        None => {
            unshare(CloneFlags::CLONE_NEWNET).context("creating the network namespace")?;
            crate::sys::spawn::loopback_up().context("bringing up loopback")
        }
    }
}

/// Opens `path` as an O_PATH descriptor, refusing any symlink on the way, the last component
/// included (O_NOFOLLOW would instead return a descriptor of the link itself).
fn open_beneath_root(path: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(nix::fcntl::AT_FDCWD, path, how)
}

fn describe(e: Errno) -> anyhow::Error {
    if e == Errno::ELOOP {
        anyhow::anyhow!("a symbolic link is in the way (refused)")
    } else {
        anyhow::Error::new(std::io::Error::from(e))
    }
}

fn same_kind(a: &OwnedFd, b: &OwnedFd) -> Result<bool> {
    let kind = |fd: &OwnedFd| fstat(fd.as_fd()).map(|s| s.st_mode & SFlag::S_IFMT.bits());
    Ok(kind(a).context("fstat")? == kind(b).context("fstat")?)
}

/// A detached recursive copy of the tree at `src`, nosuid and nodev, read-only if asked.
fn detached_copy(src: &OwnedFd, read_only: bool) -> Result<OwnedFd> {
    let tree = fdmount::clone_tree(src.as_fd())
        .map_err(describe)
        .context("open_tree")?;
    let mut attrs = fdmount::MOUNT_ATTR_NOSUID | fdmount::MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= fdmount::MOUNT_ATTR_RDONLY;
    }
    fdmount::set_attributes(tree.as_fd(), attrs)
        .map_err(describe)
        .context("mount_setattr")?;
    Ok(tree)
}

/// Attaches the scratch tmpfs at `path`, to be covered at once; false when `path` does not
/// exist.
fn park(scratch: &OwnedFd, path: &Path) -> Result<bool> {
    let target = match open_beneath_root(path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(describe(e)).with_context(|| format!("hiding {}", path.display())),
    };
    fdmount::attach(scratch.as_fd(), target.as_fd())
        .map_err(describe)
        .with_context(|| format!("covering {}", path.display()))?;
    Ok(true)
}

/// Covers the directory `path` with a new directory `name` of the scratch tmpfs, of
/// `mode`; false when `path` does not exist.
fn cover(scratch: &OwnedFd, name: &str, path: &Path, mode: u32) -> Result<bool> {
    let target = match open_beneath_root(path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(describe(e)).with_context(|| format!("hiding {}", path.display())),
    };
    let what = || format!("covering {}", path.display());
    let mode = Mode::from_bits_truncate(mode);
    mkdirat(scratch.as_fd(), name, mode).with_context(what)?;
    // mkdir applies the umask; the sticky bit needs an explicit chmod.
    fchmodat(scratch.as_fd(), name, mode, FchmodatFlags::FollowSymlink).with_context(what)?;
    let dir = openat(
        scratch.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(what)?;
    let tree = fdmount::clone_tree(dir.as_fd())
        .map_err(describe)
        .with_context(what)?;
    fdmount::attach(tree.as_fd(), target.as_fd())
        .map_err(describe)
        .with_context(what)?;
    Ok(true)
}

fn create_file_mountpoint(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
}
