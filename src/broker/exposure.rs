//! `audit NAME` proves the broker's property (issue 13 item 5): it searches what the agent can
//! read for the real value of each of its brokered secrets and reports every hit as high.
//!
//! Who matches: root, reading with the agent's identity ([`with_identity`]: effective uid,
//! gid and groups, hence the file-system ids; the capabilities go with the effective uid).
//! The kernel then makes the agent's own access decision on every open, while the values
//! stay in a process whose real and saved uid are not the agent's: the agent can neither
//! signal it (that needs the target's real or saved uid) nor trace it (that needs all its
//! uids), and the switch itself makes the process non-dumpable. The alternative, the probe (running as the agent) opening files and
//! passing the descriptors to root over a socket, needs a second channel and a concurrent
//! reader for no gain in what is found: the view adds nothing readable that is not reached
//! here as well (its private temp directories through `/proc/PID/root` of the agent's running
//! processes, its `/proc` through the host's, live credentials as the owner reads them).
//!
//! What is searched, as the agent: its home, its shares, the host's `/tmp`, `/var/tmp` and
//! `/dev/shm`, the private ones of each running view, the environment and command line of
//! every process the agent can read them of, its raw env credentials, and (read as the
//! owner, since the view binds them) its live credentials. Bounds: [`Limits`]; walks follow
//! no symlink and cross no mount point; files are opened non-blocking and must be regular.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::Secrets;
use crate::audit::findings::{Finding, Severity, View};
use crate::audit::probe_walk::{self as walk, Flow, Kind};
use crate::sys::ids::{Identity, with_identity};

/// How much one audit reads.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Files (and process files) read in all.
    pub max_files: usize,
    /// Bytes read of each file: the first ones.
    pub max_file_bytes: u64,
    /// Bytes read in all.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 50_000,
            max_file_bytes: 1 << 20,
            max_total_bytes: 256 << 20,
        }
    }
}

/// Where to look, as the privileged side worked it out.
pub struct Places {
    pub agent: Identity,
    /// The agent's home and its shares.
    pub trees: Vec<PathBuf>,
    /// Places already read by root (as the owner): (where the agent sees it, content).
    pub given: Vec<(String, Zeroizing<Vec<u8>>)>,
}

/// Temporary directories: the host's, and (below a process's root) a view's private ones.
const TEMP_DIRS: [&str; 3] = ["tmp", "var/tmp", "dev/shm"];

struct Hit {
    var: String,
    place: String,
    views: Vec<View>,
}

struct Search<'a> {
    secrets: &'a Secrets,
    limits: &'a Limits,
    files: usize,
    bytes: u64,
    stopped: bool,
    hits: Vec<Hit>,
}

/// The findings: one high per place a value was found, and an info if a bound was hit.
pub fn findings(secrets: &Secrets, places: &Places, limits: &Limits) -> Vec<Finding> {
    if secrets.is_empty() {
        return Vec::new();
    }
    let mut search = Search {
        secrets,
        limits,
        files: 0,
        bytes: 0,
        stopped: false,
        hits: Vec::new(),
    };
    for (place, data) in &places.given {
        search.look(data, || place.clone(), &[View::View]);
    }
    let searched = with_identity(&places.agent, || {
        search.as_agent(places);
        Ok(())
    });
    let mut out: Vec<Finding> = search.hits.iter().map(finding).collect();
    if let Err(e) = searched {
        out.push(Finding::new(
            Severity::High,
            "audit-error",
            "brokered secrets",
            format!(
                "could not search as the agent: {}",
                crate::error::one_line(&e)
            ),
        ));
    }
    if search.stopped {
        out.push(Finding::new(
            Severity::Info,
            "brokered-search",
            "brokered secrets",
            format!(
                "the search stopped at {} files / {} MiB: places beyond were not searched",
                search.files,
                search.bytes >> 20
            ),
        ));
    }
    out
}

fn finding(hit: &Hit) -> Finding {
    Finding::new(
        Severity::High,
        "brokered-value",
        &hit.place,
        format!(
            "the real value of the brokered secret {} is readable by the agent here: it can \
             send it anywhere, past the policy point",
            hit.var
        ),
    )
    .fix(format!(
        "remove it from there, then rotate the secret (the agent may have read it) and store \
         the new value with cred env ... {} --host HOST",
        hit.var
    ))
    .in_views(&hit.views)
}

impl Search<'_> {
    fn look(&mut self, data: &[u8], place: impl FnOnce() -> String, views: &[View]) {
        let vars = self.secrets.values_in(data);
        if vars.is_empty() {
            return;
        }
        let place = place();
        for var in vars {
            self.hits.push(Hit {
                var: var.to_owned(),
                place: place.clone(),
                views: views.to_vec(),
            });
        }
    }

    fn exhausted(&mut self) -> bool {
        if self.files >= self.limits.max_files || self.bytes >= self.limits.max_total_bytes {
            self.stopped = true;
        }
        self.stopped
    }

    /// The first bytes of an open regular file (never a FIFO or device).
    fn read(&mut self, fd: OwnedFd) -> Option<Zeroizing<Vec<u8>>> {
        let file = File::from(fd);
        if !file.metadata().ok()?.is_file() || self.exhausted() {
            return None;
        }
        let mut data = Zeroizing::new(Vec::new());
        let _ = file.take(self.limits.max_file_bytes).read_to_end(&mut data);
        self.files += 1;
        self.bytes += data.len() as u64;
        Some(data)
    }

    fn read_path(&mut self, path: &Path) -> Option<Zeroizing<Vec<u8>>> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        self.read(file.into())
    }

    /// Everything, with the agent's identity.
    fn as_agent(&mut self, places: &Places) {
        for tree in &places.trees {
            self.tree(tree, &[View::View, View::Host]);
        }
        for temp in TEMP_DIRS {
            self.tree(&Path::new("/").join(temp), &[View::Host]);
        }
        self.processes(places.agent.uid);
    }

    /// A directory tree (or a single file: a share may be one).
    fn tree(&mut self, root: &Path, views: &[View]) {
        if std::fs::symlink_metadata(root).is_ok_and(|m| m.is_file()) {
            if let Some(data) = self.read_path(root) {
                self.look(&data, || root.display().to_string(), views);
            }
            return;
        }
        walk::walk(root, usize::MAX, &mut |entry| {
            if self.exhausted() {
                return Flow::Stop;
            }
            if entry.kind == Kind::File {
                if let Some(data) = entry.open_read().and_then(|fd| self.read(fd)) {
                    self.look(&data, || entry.path().display().to_string(), views);
                }
            }
            Flow::Continue
        });
    }

    /// The environment and command line of each process the agent may read them of (the
    /// kernel decides: environ needs ptrace-read access, cmdline is visible to all unless
    /// /proc hides it), and the private temp directories of the agent's running views.
    fn processes(&mut self, agent_uid: u32) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let host_temps: BTreeSet<(u64, u64)> = TEMP_DIRS
            .iter()
            .filter_map(|t| std::fs::metadata(Path::new("/").join(t)).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let mut seen_temps = host_temps.clone();
        let own = std::process::id().to_string();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            // This process reads its own environment whoever it acts as: it holds the
            // caller's, which is not the agent's to read.
            if pid == own {
                continue;
            }
            if self.exhausted() {
                return;
            }
            let dir = entry.path();
            let agents = entry.metadata().is_ok_and(|m| m.uid() == agent_uid);
            let views: &[View] = if agents {
                &[View::View, View::Host]
            } else {
                &[View::Host]
            };
            for (file, what) in [("environ", "environment"), ("cmdline", "command line")] {
                if let Some(data) = self.read_path(&dir.join(file)) {
                    self.look(&data, || format!("process {pid}: its {what}"), views);
                }
            }
            if !agents {
                continue;
            }
            for temp in TEMP_DIRS {
                let path = dir.join("root").join(temp);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.is_dir() && seen_temps.insert((meta.dev(), meta.ino())) {
                    self.tree_in_view(&path, pid, temp);
                }
            }
        }
    }

    /// A view's private temp directory, reported by where the agent sees it.
    fn tree_in_view(&mut self, path: &Path, pid: &str, temp: &str) {
        let before = self.hits.len();
        self.tree(path, &[View::View]);
        for hit in &mut self.hits[before..] {
            let inside = Path::new(&hit.place)
                .strip_prefix(path)
                .map(|p| Path::new("/").join(temp).join(p))
                .unwrap_or_default();
            hit.place = format!("{} (in the view of process {pid})", inside.display());
        }
    }
}
