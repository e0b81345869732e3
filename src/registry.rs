//! Agent records, the registry lock, atomic writes and uid tombstones (docs/design.md section 3).
//!
//! Layout under the fixed `/var/lib/agentuser` (root-owned, 0711):
//! - `agents/NAME.toml` (0600): one record per agent;
//! - `secrets/NAME/` (0700): environment-credential values;
//! - `uids-used` (0600): every uid ever handed to an agent, one per line, never shrinking;
//! - `locks/NAME`: the lock of one agent, taken by every command that changes that agent;
//! - `lock`: the registry-wide lock, taken briefly by `create` (uid, count, name).
//!
//! Writing a record needs that agent's [`Lock`]; tombstoning a uid needs the
//! [`RegistryLock`], which can only be taken while holding an agent's lock (the lock order).
//! Every wait is bounded ([`LOCK_WAIT`]) and ends naming the holder. A damaged record
//! ([`Damage`]) affects its own agent only: [`Registry::all`] skips it with a warning.
#![forbid(unsafe_code)]

mod locks;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use locks::Held;

pub const STATE_DIR: &str = "/var/lib/agentuser";
const RECORD_MAX_BYTES: u64 = 16 << 20;

pub use crate::record::{AgentRecord, AgentState};

/// Proof that the lock of one agent is held: its record, its home and its secrets may be
/// changed (each agent has a lock of its own, so no user's command waits for another's).
pub struct Lock {
    name: String,
    held: Held,
}

impl Lock {
    /// The agent this lock is for.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Proof that the registry-wide lock is held: needed, briefly, for what concerns every
/// agent at once (uid allocation, the per-owner count, a new name). Taken after an agent's
/// lock, never before, so two commands cannot wait for each other.
pub struct RegistryLock {
    _held: Held,
}

pub struct Registry {
    root: PathBuf,
    /// Written into every lock this process takes, so a waiter can say who holds it.
    holder: String,
    /// A non-root caller: warnings about damaged records are for their owners only (names
    /// of other owners' agents are not revealed).
    viewer: Option<u32>,
    /// The first [`Registry::scan_once`], kept for the rest of the process.
    first_scan: std::sync::OnceLock<Scan>,
}

impl Registry {
    /// Opens the registry at its fixed path, creating the state directories when missing and
    /// refusing them when someone other than root could have written them. `holder` says who
    /// this process is (pid, caller, command) to commands that wait for its locks.
    pub fn open(holder: &str) -> Result<Registry> {
        Registry::open_at(Path::new(STATE_DIR), holder)
    }

    /// [`Registry::open`] at another root directory (tests and benchmarks point it at a
    /// scratch directory; the helper itself only ever uses the fixed [`STATE_DIR`]). The
    /// same checks apply: root-owned directories nobody else can write.
    pub fn open_at(root: &Path, holder: &str) -> Result<Registry> {
        let registry = Registry {
            root: root.to_path_buf(),
            holder: holder.replace(['\n', '\r', '\0'], " "),
            viewer: None,
            first_scan: std::sync::OnceLock::new(),
        };
        ensure_root_dir(&registry.root, 0o711)?;
        ensure_root_dir(&registry.agents_dir(), 0o700)?;
        ensure_root_dir(&registry.root.join("secrets"), 0o700)?;
        ensure_root_dir(&registry.root.join("locks"), 0o700)?;
        Ok(registry)
    }

    /// From now on, damage warnings leave out damaged records that name an owner other than
    /// `uid` (a non-root caller); the records are still read and still refuse what they may
    /// name.
    pub fn warn_only_owner(&mut self, uid: u32) {
        self.viewer = Some(uid);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.agents_dir().join(format!("{name}.toml"))
    }

    fn tombstone_path(&self) -> PathBuf {
        self.root.join("uids-used")
    }

    /// Directory for an agent's environment-credential values (not created here).
    pub fn secrets_dir(&self, name: &str) -> PathBuf {
        self.root.join("secrets").join(name)
    }

    /// Takes the lock of agent `name`, waiting at most [`LOCK_WAIT`].
    ///
    /// The agent must exist (its record, or its lock file, is there): a lock file is never
    /// made for a name that names nothing, so no caller can fill root's state directory with
    /// lock files of made-up names. `create` and root use [`Registry::lock_new`].
    pub fn lock(&self, name: &str) -> Result<Lock> {
        crate::names::check_agent_name(name)?;
        let exists = |path: PathBuf| fs::symlink_metadata(path).is_ok();
        if !exists(self.record_path(name)) && !exists(self.root.join("locks").join(name)) {
            bail!("agent '{name}': no such agent");
        }
        self.lock_new(name)
    }

    /// Takes the lock of `name` whether or not an agent of that name exists: for `create`
    /// (after the caller was authorized to create) and for root.
    pub fn lock_new(&self, name: &str) -> Result<Lock> {
        crate::names::check_agent_name(name)?;
        let path = self.root.join("locks").join(name);
        let held = locks::acquire(&path, &self.holder, &format!("agent '{name}'"))?;
        Ok(Lock {
            name: name.to_string(),
            held,
        })
    }

    /// Removes the lock file of a deleted agent, still held (a waiter starts over on a new
    /// file, see [`locks::acquire`]), then lets go.
    pub fn remove_lock(&self, lock: Lock) -> Result<()> {
        let path = self.root.join("locks").join(&lock.name);
        lock.held.remove(&path)
    }

    /// Takes the registry-wide lock, waiting at most [`LOCK_WAIT`]. Hold it briefly.
    pub fn lock_all(&self, _agent: &Lock) -> Result<RegistryLock> {
        let path = self.root.join("lock");
        let held = locks::acquire(&path, &self.holder, "the agent registry")?;
        Ok(RegistryLock { _held: held })
    }

    /// The record of one agent, if any. A record that exists but cannot be trusted (see
    /// [`Damage`]) is an error naming it.
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

    /// [`Registry::scan`] once for the whole process, then the same: for `exec`, which reads
    /// every record to refuse an agent as its caller and again to hide the other agents'
    /// homes from the view (each a parse of every record, at every run). Not for a command
    /// that changes records and reads them again.
    pub fn scan_once(&self) -> Result<&Scan> {
        if let Some(scan) = self.first_scan.get() {
            return Ok(scan);
        }
        let scan = self.scan()?;
        Ok(self.first_scan.get_or_init(|| scan))
    }

    /// Every record that loads, and every one that does not, sorted by name. Fails only when
    /// the agents directory itself cannot be read.
    pub fn scan(&self) -> Result<Scan> {
        let dir = self.agents_dir();
        let mut scan = Scan::default();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let file_name = entry?.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if crate::names::check_agent_name(name).is_err() {
                continue;
            }
            match self.load(name) {
                Ok(Some(record)) => scan.records.push(record),
                Ok(None) => {}
                Err(e) => scan.damaged.push(Damage {
                    name: name.to_string(),
                    why: crate::error::one_line(&e),
                    uid: damaged_uid(&self.record_path(name)),
                    quiet: self.viewer.is_some_and(|viewer| {
                        damaged_number(&self.record_path(name), "owner_uid")
                            .is_some_and(|owner| owner != viewer)
                    }),
                }),
            }
        }
        scan.records.sort_by(|a, b| a.name.cmp(&b.name));
        scan.damaged.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scan)
    }

    /// Every record that loads, sorted by name; a damaged one is skipped with a warning
    /// (once per process) naming it.
    pub fn all(&self) -> Result<Vec<AgentRecord>> {
        let scan = self.scan()?;
        for damage in &scan.damaged {
            damage.warn();
        }
        Ok(scan.records)
    }

    /// What can still be read from a damaged record, for root's `delete`: its fields without
    /// the unknown ones, whoever owns the file and whatever its size up to the limit. Never
    /// follows a symlink. The content is not trusted for anything but finding entries of
    /// the agent's own uid to remove.
    pub fn salvage(&self, name: &str) -> Option<AgentRecord> {
        let text = read_raw(&self.record_path(name))?;
        let mut table: toml::Table = toml::from_str(&text).ok()?;
        table.retain(|key, _| RECORD_FIELDS.contains(&key));
        let record: AgentRecord = table.try_into().ok()?;
        (record.name == name).then_some(record)
    }

    /// The owner's uid a record names, for deciding who may hear about it: the parsed
    /// record's, else an `owner_uid = N` line of a damaged one. Never used to allow an
    /// action, only to decide between "no such agent" and the record's own error.
    pub fn owner_uid(&self, name: &str) -> Option<u32> {
        match self.load(name) {
            Ok(record) => record.map(|r| r.owner_uid),
            Err(_) => damaged_number(&self.record_path(name), "owner_uid"),
        }
    }

    /// Writes a record atomically; the lock must be that agent's.
    pub fn save(&self, lock: &Lock, record: &AgentRecord) -> Result<()> {
        if lock.name != record.name {
            bail!(
                "internal error: saving agent '{}' under the lock of '{}'",
                record.name,
                lock.name
            );
        }
        let text = toml::to_string(record).context("serializing agent record")?;
        let path = self.record_path(&record.name);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            // A directory in the record's place (damage) would make the rename fail.
            crate::cleanup::remove(&path, crate::cleanup::Select::All)?;
        }
        write_atomic(&path, text.as_bytes())
    }

    /// Removes the record of the locked agent, whatever stands in its place (the uid stays
    /// tombstoned).
    pub fn remove(&self, lock: &Lock) -> Result<()> {
        let path = self.record_path(&lock.name);
        remove_stale_temps(&path);
        if crate::cleanup::remove(&path, crate::cleanup::Select::All)? > 0 {
            bail!("could not remove {}", path.display());
        }
        sync_dir(&self.agents_dir())
    }

    /// Every uid ever handed to an agent, as far as the tombstone file can be read.
    pub fn tombstones(&self) -> Tombstones {
        let path = self.tombstone_path();
        let text = match read_private(&path) {
            Ok(Some(text)) => text,
            Ok(None) => return Tombstones::default(),
            Err(e) => {
                return Tombstones {
                    unreadable: Some(crate::error::one_line(&e)),
                    ..Tombstones::default()
                };
            }
        };
        let mut tombstones = Tombstones::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match line.parse::<u32>() {
                Ok(uid) => {
                    tombstones.uids.insert(uid);
                }
                Err(_) => {
                    tombstones.suspects.extend(digit_runs(line));
                    tombstones.bad_lines.push(format!(
                        "{}: line {}: '{}' is not a uid",
                        path.display(),
                        index + 1,
                        line.chars().take(40).collect::<String>().escape_default()
                    ));
                }
            }
        }
        tombstones
    }

    /// Tombstones a uid before it is handed out, so it is never handed out again, even if the
    /// operation that took it is interrupted. Lines the file already has stay as they are,
    /// damaged ones included (they may name uids). Refuses when the file cannot be read.
    pub fn mark_uid_used(&self, _lock: &RegistryLock, uid: u32) -> Result<()> {
        let tombstones = self.tombstones();
        if let Some(why) = &tombstones.unreadable {
            bail!("uid tombstones: {why}");
        }
        if tombstones.uids.contains(&uid) {
            return Ok(());
        }
        let path = self.tombstone_path();
        let mut text = read_private(&path)?.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{uid}\n"));
        write_atomic(&path, text.as_bytes())
    }

    /// Temp files of interrupted writes in the state directory (for `doctor`), share
    /// indexes and trackers' sockets (`index/NAME/`) included.
    pub fn stale_temps(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let indexes = fs::read_dir(self.root.join("index"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let dirs = [self.root.clone(), self.agents_dir()]
            .into_iter()
            .chain(indexes);
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            found.extend(
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        is_temp_name(&name) && !writer_alive(&name)
                    })
                    .map(|e| e.path()),
            );
        }
        found.sort();
        found
    }
}

/// Longest wait for a lock before giving up with a message naming the holder.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Top-level fields of [`AgentRecord`], for [`Registry::salvage`].
const RECORD_FIELDS: [&str; 12] = [
    "name",
    "state",
    "owner",
    "owner_uid",
    "user",
    "uid",
    "gid",
    "home",
    "comment",
    "created",
    "shares",
    "credentials",
];

/// The outcome of reading every record.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<AgentRecord>,
    pub damaged: Vec<Damage>,
}

/// A record that exists but cannot be used: unparseable, an unknown field, not a root-owned
/// regular file (a symlink, a directory, someone else's file), oversized, or naming another
/// agent. Only its agent is affected.
#[derive(Debug, Clone)]
pub struct Damage {
    pub name: String,
    pub why: String,
    /// A uid the damaged text seems to give the agent (a `uid = N` line), if any. Only ever
    /// used to refuse more, never to allow.
    pub uid: Option<u32>,
    /// Not the caller's to hear about (it names another owner): [`Damage::warn`] is silent.
    pub quiet: bool,
}

impl Damage {
    /// One line on stderr, once per process and record.
    pub fn warn(&self) {
        if self.quiet {
            return;
        }
        static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(self.name.clone()) {
            eprintln!(
                "agentuser: warning: agent '{}' skipped: {} (root can remove it: agentuser delete {})",
                self.name, self.why, self.name
            );
        }
    }
}

/// The uid tombstones as read.
#[derive(Debug, Default)]
pub struct Tombstones {
    /// Every well-formed line.
    pub uids: BTreeSet<u32>,
    /// Numbers found in damaged lines: treated as possibly handed out.
    pub suspects: BTreeSet<u32>,
    /// One description per damaged line.
    pub bad_lines: Vec<String>,
    /// Why the file could not be read at all (not a root-owned regular file, say).
    pub unreadable: Option<String>,
}

impl Tombstones {
    /// Whether `uid` was, or may have been, handed to an agent.
    pub fn may_hold(&self, uid: u32) -> bool {
        self.uids.contains(&uid) || self.suspects.contains(&uid)
    }

    /// Warns once per process about damage, naming the file and the lines.
    pub fn warn(&self) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            if let Some(why) = &self.unreadable {
                eprintln!("agentuser: warning: uid tombstones unreadable: {why}");
            }
            for line in &self.bad_lines {
                eprintln!("agentuser: warning: uid tombstones: {line}");
            }
        });
    }
}

/// Every decimal number in `text` that fits a uid.
fn digit_runs(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|run| run.parse().ok())
        .collect()
}

/// A `uid = N` line in a damaged record, read without trusting anything else in it.
fn damaged_uid(path: &Path) -> Option<u32> {
    damaged_number(path, "uid")
}

/// A `KEY = N` line in a damaged record.
fn damaged_number(path: &Path, key: &str) -> Option<u32> {
    let text = read_raw(path)?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(key)?.trim_start();
        rest.strip_prefix('=')?.trim().parse().ok()
    })
}

/// Reads a regular file (never through a symlink) up to the record size limit, whoever
/// owns it; `None` when that is not possible.
fn read_raw(path: &Path) -> Option<String> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(RECORD_MAX_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Names of the temp files [`write_atomic`] makes: `.NAME.tmp.PID`.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp.")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether the process whose pid ends a temp file's name still runs (its write may be under
/// way).
fn writer_alive(temp_name: &str) -> bool {
    temp_name
        .rsplit_once(".tmp.")
        .is_some_and(|(_, pid)| Path::new("/proc").join(pid).exists())
}

/// Removes the temp files (`.NAME.tmp.PID`) in `dir` whose writer is gone, whatever they
/// were for: for directories where several processes write without one lock covering all
/// (share indexes, trackers' sockets).
pub fn remove_dead_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temp_name(&name) && !writer_alive(&name) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes the temp files interrupted writes of `path` left (`.NAME.tmp.PID`). Only called
/// by writers of `path`, who hold the lock that covers it: no live writer can own them.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp.", file_name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && is_temp_name(&name) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates `path` as a root-owned directory with `mode`, or checks that the existing one is
/// root-owned, a real directory, and not writable by anyone else.
pub fn ensure_root_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(mode).create(path) {
                // Made by a concurrent command meanwhile (two first runs at once): checked
                // like any that was there.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return check_root_dir(path);
                }
                made => made.with_context(|| format!("creating {}", path.display()))?,
            }
            // The umask may have narrowed the mode; set it exactly.
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(_) => check_root_dir(path),
    }
}

/// A directory of root's that only root may write to.
fn check_root_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
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
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!("{}: a symbolic link, not a record", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    if meta.uid() != 0 {
        bail!("{}: owned by uid {}, not root", path.display(), meta.uid());
    }
    if meta.len() > RECORD_MAX_BYTES {
        bail!(
            "{}: {} bytes, more than a record may have",
            path.display(),
            meta.len()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text))
}

/// Replaces `path` atomically: a fresh 0600 temp file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves the old or the new content, never a mix, and a
/// temp file that the next write of `path` removes. Callers hold the lock that covers
/// `path` (its agent's, or the registry's), so no temp file of `path` can be a live one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a parent")?;
    let file_name = path.file_name().context("path without a file name")?;
    remove_stale_temps(path);
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
