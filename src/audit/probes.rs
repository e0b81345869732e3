//! The probe: runs in a child process as the agent (in the runner's view, or in the host's
//! view with the plain uid switch), measures what that identity reaches, and writes the
//! observations as one JSON object to stdout. It runs unprivileged, so every answer is the
//! kernel's own access decision (modes, ACLs, mounts, namespaces), not our reading of it.
//!
//! Bounds: walks never follow symlinks or cross into other file systems, stop at
//! [`Limits`], and read at most [`secrets::HEAD_BYTES`] of at most `max_reads` candidate
//! files, opened with O_NOFOLLOW|O_NONBLOCK and checked to be regular files.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{AccessFlags, access};
use serde::{Deserialize, Serialize};

use super::network::{self, Listener, Proto, UnixSocket};
use super::probe_walk::{self as walk, Flow, Kind};
use super::secrets::{self, HEAD_BYTES};

/// Secret-looking files probed by name even when a home cannot be listed (a 0711 home still
/// lets anyone open `~/.netrc` if the file itself is readable).
const KNOWN_SECRET_PATHS: &[&str] = &[
    ".netrc",
    ".git-credentials",
    ".aws/credentials",
    ".ssh/id_rsa",
    ".ssh/id_ed25519",
    ".ssh/id_ecdsa",
    ".docker/config.json",
    ".kube/config",
    ".config/gh/hosts.yml",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".vault-token",
    ".cargo/credentials.toml",
    ".bashrc",
    ".profile",
    ".zshrc",
    ".bash_history",
    ".zsh_history",
];

#[derive(Debug, Clone)]
pub struct Limits {
    /// Entries visited in all homes together.
    pub max_home_entries: u64,
    /// Entries visited by the writable scan.
    pub max_writable_entries: u64,
    /// Candidate files whose head is read.
    pub max_reads: usize,
    /// Secret files named per home (the rest are counted).
    pub max_named: usize,
    /// Readable non-secret files named per home as examples.
    pub max_examples: usize,
    /// Writable paths listed (the rest are counted).
    pub max_writable: usize,
    /// Wall-clock budget of the whole probe.
    pub budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_home_entries: 2_000_000,
            max_writable_entries: 300_000,
            max_reads: 2048,
            max_named: 10,
            max_examples: 3,
            max_writable: 40,
            budget: Duration::from_secs(60),
        }
    }
}

/// What a probe looks at; built by the privileged process, moved into the child.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Other users' homes and /root.
    pub homes: Vec<PathBuf>,
    /// Never walked or reported: the agent's home, its shares, live credential targets.
    pub skip: Vec<PathBuf>,
    /// Roots of the writable scan, each with a depth limit.
    pub writable_roots: Vec<(PathBuf, usize)>,
    /// The host's /tmp, /var/tmp and /dev/shm as (path, device, inode). In the runner's view
    /// a temp directory that is not the host's is the agent's private one and is not
    /// reported; one that is still the host's is (measured, not assumed).
    pub host_temp: Vec<(PathBuf, u64, u64)>,
    /// Unix sockets and listeners the host shows (the probe adds what its namespace shows).
    pub unix: Vec<UnixSocket>,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
}

/// Directories whose contents are temporary and, in the runner's view, private.
pub const TEMP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// The default roots of the writable scan: where a planted file changes what others run or
/// read (PATH directories, /etc, /opt, service data), with depth limits that keep it fast.
pub fn default_writable_roots() -> Vec<(PathBuf, usize)> {
    [
        ("/", 1),
        ("/etc", 3),
        ("/usr", 2),
        ("/usr/local", 4),
        ("/opt", 3),
        ("/srv", 3),
        ("/var", 3),
        ("/run", 2),
        ("/boot", 2),
        ("/mnt", 2),
        ("/media", 2),
        ("/home", 1),
        ("/tmp", 1),
        ("/var/tmp", 1),
        ("/dev/shm", 1),
    ]
    .into_iter()
    .map(|(p, d)| (PathBuf::from(p), d))
    .collect()
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Observations {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privs: bool,
    pub homes: Vec<HomeScan>,
    pub writable: Vec<Writable>,
    pub writable_total: u64,
    pub unix: Vec<UnixSocket>,
    pub tcp: Vec<Listener>,
    pub udp: Vec<Listener>,
    /// Human-readable notes on limits hit ("home walk stopped after N entries").
    pub truncated: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HomeScan {
    pub home: PathBuf,
    /// The agent could list the home directory itself.
    pub listable: bool,
    /// Entries the agent saw directly in the home (an empty placeholder shows nothing).
    pub entries: u64,
    pub readable_files: u64,
    /// Named secrets, at most `max_named`.
    pub secrets: Vec<Secret>,
    pub secrets_total: u64,
    /// A few readable non-secret files, to make the count concrete.
    pub examples: Vec<PathBuf>,
    /// Directories or files in this home the agent can write.
    pub writable: Vec<PathBuf>,
    pub writable_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secret {
    pub path: PathBuf,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Writable {
    pub path: PathBuf,
    pub owner: u32,
    pub mode: u32,
    pub dir: bool,
}

/// The probe's entry point in the child: observe, print JSON, return the exit status.
pub fn run(plan: &Plan) -> u8 {
    // Non-dumpable: another process of the agent's uid cannot ptrace the probe and forge
    // its report.
    let _ = nix::sys::prctl::set_dumpable(false);
    let observations = observe(plan);
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &observations)
        .and_then(|()| out.flush().map_err(serde_json::Error::io))
    {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Everything the current identity reaches, per the plan.
pub fn observe(plan: &Plan) -> Observations {
    let started = Instant::now();
    let mut obs = Observations {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        groups: nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        no_new_privs: nix::sys::prctl::get_no_new_privs().unwrap_or(false),
        ..Observations::default()
    };
    let mut walker = Walker {
        plan,
        started,
        home_entries: 0,
        reads: 0,
    };
    for home in &plan.homes {
        if plan.skip.iter().any(|s| s == home) {
            continue;
        }
        let scan = walker.scan_home(home, &mut obs.truncated);
        if (scan.listable && scan.entries > 0) || scan.readable_files > 0 || scan.writable_total > 0
        {
            obs.homes.push(scan);
        }
    }
    writable_scan(plan, started, &mut obs);
    reach_sockets(plan, started, &mut obs);
    obs
}

/// The walked directory's path relative to the home, rebuilt only when the walk moves to
/// another directory.
#[derive(Default)]
struct RelativeDir {
    dir: PathBuf,
    rel: PathBuf,
}

impl RelativeDir {
    fn of(&mut self, dir: &Path, home: &Path) -> &Path {
        if self.dir.as_path() != dir {
            self.dir = dir.to_path_buf();
            self.rel = self
                .dir
                .strip_prefix(home)
                .unwrap_or(Path::new(""))
                .to_path_buf();
        }
        &self.rel
    }
}

struct Walker<'a> {
    plan: &'a Plan,
    started: Instant,
    home_entries: u64,
    reads: usize,
}

impl Walker<'_> {
    fn out_of_budget(&self) -> bool {
        self.home_entries > self.plan.limits.max_home_entries
            || self.started.elapsed() > self.plan.limits.budget
    }

    fn scan_home(&mut self, home: &Path, truncated: &mut Vec<String>) -> HomeScan {
        let mut scan = HomeScan {
            home: home.to_path_buf(),
            listable: access(home, AccessFlags::R_OK).is_ok() && std::fs::read_dir(home).is_ok(),
            ..HomeScan::default()
        };
        if access(home, AccessFlags::W_OK).is_ok() {
            record_writable(&mut scan, home.to_path_buf(), self.plan.limits.max_writable);
        }
        let mut seen = BTreeSet::new();
        if self.walk_home(home, &mut scan, &mut seen) {
            truncated.push(format!(
                "home walk stopped in {} after {} entries",
                home.display(),
                self.home_entries
            ));
        }
        self.probe_known_secrets(home, &seen, &mut scan);
        scan
    }

    /// Walks what the home lets the agent list, counting what it can read and write; the
    /// paths of files looked at closely go to `seen`. True when the budget stopped the walk.
    fn walk_home(
        &mut self,
        home: &Path,
        scan: &mut HomeScan,
        seen: &mut BTreeSet<PathBuf>,
    ) -> bool {
        let plan = self.plan;
        // Directories holding a skipped path: only entries there need their full path built.
        let skip_parents: BTreeSet<&Path> = plan.skip.iter().filter_map(|s| s.parent()).collect();
        let mut stopped = false;
        let mut relative = RelativeDir::default();
        walk::walk(home, usize::MAX, &mut |entry| {
            self.home_entries += 1;
            if self.out_of_budget() {
                stopped = true;
                return Flow::Stop;
            }
            if skip_parents.contains(entry.parent) && plan.skip.contains(&entry.path()) {
                return Flow::Prune;
            }
            if entry.depth == 1 {
                scan.entries += 1;
            }
            match entry.kind {
                Kind::Dir => {
                    if entry.access(AccessFlags::W_OK) {
                        record_writable(scan, entry.path(), plan.limits.max_writable);
                    }
                }
                Kind::File => self.home_file(home, entry, &mut relative, scan, seen),
                Kind::Symlink | Kind::Other => {}
            }
            Flow::Continue
        });
        stopped
    }

    /// One file met by the home walk: writable at the top, readable, and (for a file a
    /// secret rule might match, or one of the first examples) classified.
    fn home_file(
        &mut self,
        home: &Path,
        entry: &walk::Entry,
        relative: &mut RelativeDir,
        scan: &mut HomeScan,
        seen: &mut BTreeSet<PathBuf>,
    ) {
        let limits = &self.plan.limits;
        if entry.depth == 1 && entry.access(AccessFlags::W_OK) {
            record_writable(scan, entry.path(), limits.max_writable);
        }
        if !entry.access(AccessFlags::R_OK) {
            return;
        }
        scan.readable_files += 1;
        let rel = relative.of(entry.parent, home);
        // Only files a rule might match, and the first few examples, cost a path.
        let name = entry.name.to_bytes();
        if secrets::may_match(rel, name) || scan.examples.len() < limits.max_examples {
            let path = entry.path();
            let head = || entry.open_read().and_then(read_head);
            self.classify(home, &path, head, scan);
            if entry.depth <= 3 {
                seen.insert(path);
            }
        }
    }

    /// A home that cannot be listed may still let anyone open files by name.
    fn probe_known_secrets(&mut self, home: &Path, seen: &BTreeSet<PathBuf>, scan: &mut HomeScan) {
        let plan = self.plan;
        for rel in KNOWN_SECRET_PATHS {
            let path = home.join(rel);
            if seen.contains(&path) || plan.skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_file() && access(&path, AccessFlags::R_OK).is_ok() {
                scan.readable_files += 1;
                let head = || open_path(&path).and_then(read_head);
                self.classify(home, &path, head, scan);
            }
        }
    }

    fn classify(
        &mut self,
        home: &Path,
        path: &Path,
        head: impl FnOnce() -> Option<Vec<u8>>,
        scan: &mut HomeScan,
    ) {
        let limits = &self.plan.limits;
        let rel = path.strip_prefix(home).unwrap_or(path);
        let secret = secrets::candidate(rel).and_then(|c| {
            if c.content == secrets::Content::Any || self.reads >= limits.max_reads {
                // Out of read budget, a name is named by its rule alone.
                return Some(c.kind);
            }
            self.reads += 1;
            secrets::confirms(c.content, &head()?).then_some(c.kind)
        });
        match secret {
            Some(kind) => {
                scan.secrets_total += 1;
                if scan.secrets.len() < limits.max_named {
                    scan.secrets.push(Secret {
                        path: path.to_path_buf(),
                        kind: kind.to_string(),
                    });
                }
            }
            None if scan.examples.len() < limits.max_examples => {
                scan.examples.push(path.to_path_buf());
            }
            None => {}
        }
    }
}

fn record_writable(scan: &mut HomeScan, path: PathBuf, max: usize) {
    scan.writable_total += 1;
    if scan.writable.len() < max {
        scan.writable.push(path);
    }
}

fn open_path(path: &Path) -> Option<OwnedFd> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()
        .map(OwnedFd::from)
}

/// The first bytes of a regular file (never a FIFO or device: the open was non-blocking and
/// the type is checked on the descriptor).
fn read_head(fd: OwnedFd) -> Option<Vec<u8>> {
    let file = File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = Vec::with_capacity(HEAD_BYTES);
    file.take(HEAD_BYTES as u64).read_to_end(&mut head).ok()?;
    Some(head)
}

/// Writable directories and files outside the agent's home, shares and (in the runner's
/// view) its private temp directories.
fn writable_scan(plan: &Plan, started: Instant, obs: &mut Observations) {
    let limits = &plan.limits;
    let homes: BTreeSet<&Path> = plan.homes.iter().map(PathBuf::as_path).collect();
    let private: Vec<&Path> = plan
        .host_temp
        .iter()
        .filter(|(path, dev, ino)| {
            std::fs::metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino()) != (*dev, *ino)
            })
        })
        .map(|(path, _, _)| path.as_path())
        .collect();
    let excluded = |p: &Path| {
        plan.skip.iter().any(|s| p.starts_with(s))
            || private.iter().any(|t| p.starts_with(t))
            // Other homes are covered by the home walk, pseudo file systems by nothing.
            || homes.contains(p)
            || ["/proc", "/sys", "/dev"].iter().any(|t| p == Path::new(t))
    };
    let mut entries = 0u64;
    let mut seen = BTreeSet::new();
    let mut stopped = false;
    for (root, depth) in &plan.writable_roots {
        if stopped || excluded(root) {
            continue;
        }
        if access(root.as_path(), AccessFlags::W_OK).is_ok() && seen.insert(root.clone()) {
            if let Ok(meta) = std::fs::symlink_metadata(root) {
                obs.writable_total += 1;
                obs.writable.push(Writable {
                    path: root.clone(),
                    owner: std::os::unix::fs::MetadataExt::uid(&meta),
                    mode: std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777,
                    dir: meta.is_dir(),
                });
            }
        }
        walk::walk(root, *depth, &mut |entry| {
            entries += 1;
            if entries > limits.max_writable_entries || started.elapsed() > limits.budget {
                stopped = true;
                return Flow::Stop;
            }
            if !matches!(entry.kind, Kind::Dir | Kind::File) {
                return Flow::Continue;
            }
            let path = entry.path();
            if excluded(&path) {
                return Flow::Prune;
            }
            if !entry.access(AccessFlags::W_OK) || !seen.insert(path.clone()) {
                return Flow::Continue;
            }
            let Some(stat) = entry.stat() else {
                return Flow::Continue;
            };
            obs.writable_total += 1;
            if obs.writable.len() < limits.max_writable {
                obs.writable.push(Writable {
                    path,
                    owner: stat.st_uid,
                    mode: stat.st_mode & 0o7777,
                    dir: entry.kind == Kind::Dir,
                });
            }
            Flow::Continue
        });
    }
    if stopped {
        obs.truncated
            .push(format!("writable scan stopped after {entries} entries"));
    }
}

/// Connect tests on the host's sockets plus those this namespace shows, within the caps
/// and the probe's time budget (a loopback port behind a DROP rule costs a timeout).
fn reach_sockets(plan: &Plan, started: Instant, obs: &mut Observations) {
    let limits = &plan.limits;
    let mut unix: BTreeSet<UnixSocket> = plan.unix.iter().cloned().collect();
    unix.extend(network::read_unix_sockets());
    if unix.len() > network::MAX_UNIX_TESTS {
        obs.truncated.push(format!(
            "tested {} of {} unix sockets",
            network::MAX_UNIX_TESTS,
            unix.len()
        ));
    }
    let skip = &plan.skip;
    for socket in unix.into_iter().take(network::MAX_UNIX_TESTS) {
        if !socket.is_abstract() && skip.iter().any(|s| Path::new(&socket.name).starts_with(s)) {
            continue;
        }
        if network::reaches_unix(&socket) {
            obs.unix.push(socket);
        }
    }
    let own = network::read_listeners();
    let mut tcp: BTreeSet<Listener> = plan
        .listeners
        .iter()
        .filter(|l| l.proto == Proto::Tcp)
        .cloned()
        .collect();
    tcp.extend(own.iter().filter(|l| l.proto == Proto::Tcp).cloned());
    let tcp: Vec<Listener> = tcp.into_iter().filter(Listener::on_loopback).collect();
    for (tested, listener) in tcp.iter().enumerate() {
        if tested >= network::MAX_TCP_TESTS || started.elapsed() > limits.budget {
            obs.truncated.push(format!(
                "tested {tested} of {} loopback TCP ports",
                tcp.len()
            ));
            break;
        }
        if network::reaches_tcp(listener) {
            obs.tcp.push(listener.clone());
        }
    }
    // A UDP port cannot be tested without sending a datagram: report what this network
    // namespace shows.
    obs.udp = own
        .into_iter()
        .filter(|l| l.proto == Proto::Udp && l.on_loopback())
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agentuser-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("alice/.ssh")).unwrap();
        std::fs::create_dir_all(dir.join("alice/proj/src")).unwrap();
        std::fs::write(dir.join("alice/.netrc"), "machine x login y password z").unwrap();
        std::fs::write(dir.join("alice/.bashrc"), "export OPENAI_API_KEY=sk-x\n").unwrap();
        std::fs::write(dir.join("alice/.ssh/id_ed25519"), "k").unwrap();
        std::fs::write(dir.join("alice/proj/src/main.rs"), "fn main() {}").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("alice/link")).unwrap();
        for i in 0..20 {
            std::fs::write(dir.join(format!("alice/proj/f{i}")), "").unwrap();
        }
        std::fs::set_permissions(dir.join("alice"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        dir
    }

    #[test]
    fn home_walk_names_secrets_counts_the_rest_and_skips_shares() {
        let dir = tree("probe-home");
        let home = dir.join("alice");
        let plan = Plan {
            homes: vec![home.clone()],
            skip: vec![home.join("proj/src")],
            writable_roots: Vec::new(),
            host_temp: Vec::new(),
            unix: Vec::new(),
            listeners: Vec::new(),
            limits: Limits {
                max_named: 2,
                ..Limits::default()
            },
        };
        let obs = observe(&plan);
        let scan = &obs.homes[0];
        assert!(scan.listable);
        // .netrc, .bashrc, id_ed25519, 20 files in proj; not main.rs (shared), not the link.
        assert_eq!(scan.readable_files, 23, "{scan:#?}");
        assert_eq!(scan.secrets_total, 3);
        assert_eq!(scan.secrets.len(), 2);
        assert!(
            scan.examples
                .iter()
                .all(|p| !p.ends_with("main.rs") && !p.ends_with("link"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writable_scan_honours_skips_and_private_temp_dirs() {
        use std::os::unix::fs::MetadataExt;
        let dir = tree("probe-writable");
        let alice = std::fs::metadata(dir.join("alice")).unwrap();
        let plan = Plan {
            homes: Vec::new(),
            skip: vec![dir.join("alice/proj")],
            writable_roots: vec![(dir.clone(), 3)],
            // alice/.ssh is "not the host's" (another inode): private, not reported;
            // alice is the host's own: still reported.
            host_temp: vec![
                (dir.join("alice/.ssh"), 0, 0),
                (dir.join("alice"), alice.dev(), alice.ino()),
            ],
            unix: Vec::new(),
            listeners: Vec::new(),
            limits: Limits::default(),
        };
        let obs = observe(&plan);
        // Root writes everything: all but the skipped tree and the symlink.
        assert!(obs.writable.iter().any(|w| w.path.ends_with(".netrc")));
        assert!(
            !obs.writable
                .iter()
                .any(|w| w.path.starts_with(dir.join("alice/proj")))
        );
        assert!(!obs.writable.iter().any(|w| w.path.ends_with("link")));
        assert!(
            !obs.writable
                .iter()
                .any(|w| w.path.starts_with(dir.join("alice/.ssh")))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
