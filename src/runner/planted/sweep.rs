//! The sweep: a walk of a tree for repository-shaped entries, for when the watcher could
//! not see everything (a lost event, a watcher that could not start, a runner that was
//! killed) and for a directory the agent moved into a share whole.
//!
//! Like the share walk it works on descriptors, never follows a symlink and never leaves
//! the tree's file system. It neither enters the owner's known repositories nor any
//! `objects/` of a git directory.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use nix::dir::Dir;
use nix::sys::stat::{FileStat, SFlag, fstat};

use super::neutralise::{
    Known, Neutralised, identity, is_repository_shaped, kind, neutralise_dir, neutralise_dot_git,
    open_dir_at, stat_at,
};

/// Which entries count as planted.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// Every repository-shaped entry that is not a known one (a tree moved in whole).
    Everything,
    /// Those of them in which anything changed since this time (a run's start).
    ChangedSince(SystemTime),
}

impl Window {
    fn includes(&self, stat: &FileStat) -> bool {
        match self {
            Window::Everything => true,
            Window::ChangedSince(start) => {
                let ctime = UNIX_EPOCH
                    + Duration::new(stat.st_ctime.max(0) as u64, stat.st_ctime_nsec as u32);
                ctime >= *start
            }
        }
    }
}

/// What a sweep found: neutralised entries and failures (each one line).
#[derive(Debug, Default)]
pub struct Findings {
    pub neutralised: Vec<Neutralised>,
    pub failures: Vec<String>,
}

impl Findings {
    pub fn take(&mut self, result: Result<Option<Neutralised>>) {
        match result {
            Ok(Some(n)) => self.neutralised.push(n),
            Ok(None) => {}
            Err(e) => self.failures.push(crate::error::one_line(&e)),
        }
    }

    pub fn extend(&mut self, other: Findings) {
        self.neutralised.extend(other.neutralised);
        self.failures.extend(other.failures);
    }
}

/// Sweeps the directory `root` (its own entry included, with its parent when known).
pub fn sweep(root: OwnedFd, parent: Option<BorrowedFd>, known: &Known, window: Window) -> Findings {
    let mut findings = Findings::default();
    let Ok(root_stat) = fstat(root.as_fd()) else {
        return findings;
    };
    let device = root_stat.st_dev;
    if is_repository_shaped(root.as_fd()) && changed_within(root.as_fd(), window, 0) {
        findings.take(neutralise_dir(root.as_fd(), parent, known));
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let shaped = is_repository_shaped(dir.as_fd());
        for name in entry_names(dir.as_fd()) {
            let Some(stat) = stat_at(dir.as_fd(), &name) else {
                continue;
            };
            if stat.st_dev != device || known.contains(&identity(&stat)) {
                continue;
            }
            if name.as_c_str() == c".git" {
                if planted_dot_git(dir.as_fd(), &stat, window) {
                    findings.take(neutralise_dot_git(dir.as_fd(), known));
                }
                continue;
            }
            if kind(&stat) != SFlag::S_IFDIR || (shaped && name.as_c_str() == c"objects") {
                continue;
            }
            let Ok(child) = open_dir_at(dir.as_fd(), &name) else {
                continue;
            };
            if is_repository_shaped(child.as_fd()) && changed_within(child.as_fd(), window, 0) {
                findings.take(neutralise_dir(child.as_fd(), Some(dir.as_fd()), known));
            }
            stack.push(child);
        }
    }
    findings
}

fn planted_dot_git(parent: BorrowedFd, stat: &FileStat, window: Window) -> bool {
    if kind(stat) != SFlag::S_IFDIR {
        return window.includes(stat);
    }
    match open_dir_at(parent, c".git") {
        Ok(dir) => changed_within(dir.as_fd(), window, 0),
        // Swapped meanwhile: the swap itself is recent.
        Err(_) => true,
    }
}

/// Whether `dir` or anything in it (to a few levels: hooks, worktrees/*, modules/*; never
/// objects/) changed within the window.
fn changed_within(dir: BorrowedFd, window: Window, depth: u32) -> bool {
    let Ok(stat) = fstat(dir) else {
        return true;
    };
    if window.includes(&stat) {
        return true;
    }
    if depth > 6 {
        return false;
    }
    entry_names(dir).iter().any(|name| {
        if name.as_c_str() == c"objects" {
            return false;
        }
        match stat_at(dir, name) {
            None => false,
            Some(s) if window.includes(&s) => true,
            Some(s) if kind(&s) == SFlag::S_IFDIR => match open_dir_at(dir, name) {
                Ok(sub) => changed_within(sub.as_fd(), window, depth + 1),
                Err(_) => false,
            },
            Some(_) => false,
        }
    })
}

/// The names in `dir` but `.` and `..` (empty when it cannot be read).
pub fn entry_names(dir: BorrowedFd) -> Vec<CString> {
    let Ok(fd) = nix::fcntl::openat(
        dir,
        c".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(mut listing) = Dir::from_fd(fd) else {
        return Vec::new();
    };
    listing
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n: &CString| {
            let n: &CStr = n.as_c_str();
            n != c"." && n != c".."
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn repo(dir: &Path) {
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("refs/heads")).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }

    fn open(path: &Path) -> OwnedFd {
        super::super::neutralise::open_share_root(path).unwrap()
    }

    #[test]
    fn sweeps_what_changed_in_the_window_and_spares_known_repositories() {
        let root = std::env::temp_dir().join(format!("agentuser-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        repo(&root.join("own/.git"));
        repo(&root.join("planted/.git"));
        repo(&root.join("bare"));
        std::fs::create_dir_all(root.join("gitfile")).unwrap();
        std::fs::write(root.join("gitfile/.git"), "gitdir: ../bare\n").unwrap();
        let own = std::fs::symlink_metadata(root.join("own/.git")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let known: Known = [(own.dev(), own.ino())].into_iter().collect();

        // Nothing changed after a time in the future: nothing is touched.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let none = sweep(open(&root), None, &known, Window::ChangedSince(later));
        assert!(
            none.neutralised.is_empty() && none.failures.is_empty(),
            "{none:?}"
        );

        let earlier = SystemTime::now() - Duration::from_secs(3600);
        let found = sweep(open(&root), None, &known, Window::ChangedSince(earlier));
        assert!(found.failures.is_empty(), "{found:?}");
        assert_eq!(found.neutralised.len(), 3, "{found:?}");
        assert!(root.join("own/.git/HEAD").exists());
        assert!(!root.join("planted/.git").exists());
        assert!(!root.join("bare/HEAD").exists());
        assert!(!root.join("gitfile/.git").exists());
        let names: Vec<String> = std::fs::read_dir(root.join("planted"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names[0].starts_with(".git.agentuser-quarantine-"),
            "{names:?}"
        );
        let quarantined = root.join("planted").join(&names[0]);
        assert!(!quarantined.join("HEAD").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
