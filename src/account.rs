//! Unix accounts: lookups through nix, changes through the system's own tools (`groupadd`,
//! `useradd`, `userdel`, `groupdel`), which take the shadow-utils locks and keep
//! /etc/passwd, /etc/shadow, /etc/group and /etc/gshadow consistent.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use crate::sys::ids::Identity;

/// Fixed PATH for the tools we run; the caller's PATH is never used.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn user_by_name(name: &str) -> Result<Option<User>> {
    User::from_name(name).with_context(|| format!("looking up user '{name}'"))
}

pub fn user_by_uid(uid: u32) -> Result<Option<User>> {
    User::from_uid(Uid::from_raw(uid)).with_context(|| format!("looking up uid {uid}"))
}

pub fn group_by_name(name: &str) -> Result<Option<Group>> {
    Group::from_name(name).with_context(|| format!("looking up group '{name}'"))
}

pub fn group_by_gid(gid: u32) -> Result<Option<Group>> {
    Group::from_gid(Gid::from_raw(gid)).with_context(|| format!("looking up gid {gid}"))
}

/// What `useradd` is asked to make.
pub struct NewAccount<'a> {
    pub user: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a Path,
    pub shell: &'a Path,
    pub comment: &'a str,
    /// agentuser's id range (`uid_min`, `uid_max`), given to the tools as their system
    /// range so that they do not warn about ids above `SYS_UID_MAX` at all.
    pub id_range: (u32, u32),
}

/// Creates the agent's own group.
pub fn create_group(name: &str, gid: u32, id_range: (u32, u32)) -> Result<()> {
    let (min, max) = (
        format!("SYS_GID_MIN={}", id_range.0),
        format!("SYS_GID_MAX={}", id_range.1),
    );
    run_tool(
        "groupadd",
        &[
            "--system",
            "--key",
            &min,
            "--key",
            &max,
            "--gid",
            &gid.to_string(),
            "--",
            name,
        ],
    )
}

/// Creates the account: a system account (so useradd neither allocates subordinate ids nor
/// a mail spool nor password aging), locked password (useradd's default `!`), no
/// supplementary groups, no lastlog/faillog entries. The home is made by the caller.
pub fn create_user(account: &NewAccount) -> Result<()> {
    if account.comment.contains([':', '\n', '\0']) {
        bail!("comment: must not contain ':' or newlines");
    }
    let uid = account.uid.to_string();
    let gid = account.gid.to_string();
    let home = path_arg(account.home)?;
    let shell = path_arg(account.shell)?;
    let (min, max) = (
        format!("SYS_UID_MIN={}", account.id_range.0),
        format!("SYS_UID_MAX={}", account.id_range.1),
    );
    run_tool(
        "useradd",
        &[
            "--system",
            "--key",
            &min,
            "--key",
            &max,
            "--no-log-init",
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--home-dir",
            &home,
            // agentuser makes the home itself (src/home.rs), once the account exists.
            "--no-create-home",
            "--shell",
            &shell,
            "--comment",
            account.comment,
            "--",
            account.user,
        ],
    )
}

/// Removes the account (not its home: the caller removes that without following links).
/// `--force` because the caller has just killed every process of the account and userdel
/// would otherwise trip over a zombie not yet reaped.
pub fn delete_user(name: &str) -> Result<()> {
    run_tool("userdel", &["--force", "--", name])
}

pub fn delete_group(name: &str) -> Result<()> {
    run_tool("groupdel", &["--", name])
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{}: not valid UTF-8", path.display()))
}

/// Which of the account files name `name`: (passwd, shadow, group, gshadow). A tool killed
/// half way leaves one of a pair without the other (`pwck -r`/`grpck -r` complain).
pub fn presence(name: &str) -> Result<[bool; 4]> {
    let mut found = [false; 4];
    for (i, file) in ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"]
        .iter()
        .enumerate()
    {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {file}")),
        };
        found[i] = text.lines().any(|l| l.split(':').next() == Some(name));
    }
    Ok(found)
}

/// Removes the line of `name` from one account file (`/etc/shadow`, say) that no tool will
/// touch because the other file of its pair no longer names it (userdel and groupdel look
/// the name up in passwd and group). Done the way shadow-utils edits these files: under
/// glibc's `/etc/.pwd.lock` and the file's own `FILE.lock` (a link to `FILE.PID`), through
/// `FILE+`, fsync and a rename, with the original's owner and mode.
pub fn remove_stray_line(file: &str, name: &str) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let _pwd_lock = lock_pwd_database()?;
    let lock = format!("{file}.lock");
    let pid_file = format!("{file}.{}", std::process::id());
    std::fs::write(&pid_file, format!("{}", std::process::id()))
        .with_context(|| format!("writing {pid_file}"))?;
    let locked = (0..100).find_map(|_| match std::fs::hard_link(&pid_file, &lock) {
        Ok(()) => Some(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        }
        Err(e) => Some(Err(e)),
    });
    let _ = std::fs::remove_file(&pid_file);
    match locked {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(e).with_context(|| format!("locking {file}")),
        None => bail!("locking {file}: {lock} stays held"),
    }
    let result = (|| -> Result<()> {
        let meta = std::fs::metadata(file)?;
        let text = std::fs::read_to_string(file)?;
        let kept: String = text
            .lines()
            .filter(|l| l.split(':').next() != Some(name))
            .map(|l| format!("{l}\n"))
            .collect();
        let next = format!("{file}+");
        let _ = std::fs::remove_file(&next);
        let mut out = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(meta.mode() & 0o777)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&next)?;
        std::io::Write::write_all(&mut out, kept.as_bytes())?;
        std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))?;
        out.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777))?;
        out.sync_all()?;
        std::fs::rename(&next, file)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&lock);
    result.with_context(|| format!("removing '{name}' from {file}"))
}

/// glibc's lock of the account databases (`lckpwdf`): a write record lock on
/// `/etc/.pwd.lock`, held while the returned file stays open.
fn lock_pwd_database() -> Result<std::fs::File> {
    use nix::fcntl::{FcntlArg, fcntl};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open("/etc/.pwd.lock")
        .context("opening /etc/.pwd.lock")?;
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    for _ in 0..100 {
        match fcntl(&file, FcntlArg::F_SETLK(&lock)) {
            Ok(_) => return Ok(file),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e).context("locking /etc/.pwd.lock"),
        }
    }
    bail!("/etc/.pwd.lock stays locked by another account tool")
}

/// The lock files shadow-utils tools take while they change the account databases.
pub const ACCOUNT_LOCKS: [&str; 4] = [
    "/etc/passwd.lock",
    "/etc/shadow.lock",
    "/etc/group.lock",
    "/etc/gshadow.lock",
];

/// Runs a shadow-utils tool with a clean environment.
///
/// The tool gets a process group of its own, so a kill of agentuser's group (Ctrl-C, a
/// supervisor) never stops it half way through /etc, and its output goes to an anonymous
/// in-memory file, not a pipe: should agentuser die meanwhile, the tool never dies of
/// SIGPIPE holding the account locks, it finishes. The tools fail at once when another one
/// holds a lock (one left running by an interrupted agentuser, say), so a busy lock is
/// retried for a while; a lock whose holder is dead is named in the error.
fn run_tool(tool: &str, args: &[&str]) -> Result<()> {
    let program = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(tool))
        .find(|p| p.exists())
        .with_context(|| format!("{tool}: not found in /usr/sbin or /sbin"))?;
    let mut attempts = 0;
    loop {
        let (status, output) =
            run_once(&program, args).with_context(|| format!("running {tool}"))?;
        if status.success() {
            return Ok(());
        }
        attempts += 1;
        if output.contains("lock") && attempts < 100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        let why = output
            .lines()
            .map(|l| l.trim_start_matches(&format!("{tool}: ")).trim())
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        let stale = stale_locks();
        if !stale.is_empty() {
            bail!("{tool} failed ({status}): {why}; {}", stale.join("; "));
        }
        bail!("{tool} failed ({status}): {why}");
    }
}

/// One run of a tool; its standard output and error, together.
fn run_once(program: &Path, args: &[&str]) -> Result<(std::process::ExitStatus, String)> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::{Read, Seek};
    let out = std::fs::File::from(memfd_create(
        c"agentuser-tool-output",
        MFdFlags::MFD_CLOEXEC,
    )?);
    let status = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out.try_clone()?)
        .status()?;
    let mut text = String::new();
    let mut out = out;
    out.rewind()?;
    (&out).take(64 * 1024).read_to_string(&mut text)?;
    Ok((status, text))
}

/// The account lock files whose holder is gone (dead, or a zombie nobody reaped), each as
/// a sentence that names the file and the process. shadow-utils writes the holder's pid in
/// the lock and removes a lock of a dead process itself, but not one of a zombie.
pub fn stale_locks() -> Vec<String> {
    ACCOUNT_LOCKS
        .iter()
        .filter_map(|lock| {
            let pid: i32 = std::fs::read_to_string(lock).ok()?.trim().parse().ok()?;
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = stat.rsplit_once(')')?.1.trim_start().to_string();
                    after_name.chars().next()
                });
            match state {
                Some('Z') => Some(format!(
                    "{lock} is held by process {pid}, which has exited but was not reaped"
                )),
                None => Some(format!(
                    "{lock} was left by process {pid}, which is gone: remove it"
                )),
                Some(_) => None,
            }
        })
        .collect()
}

/// The supplementary groups of a user, from the group database.
pub fn supplementary_groups(user: &User) -> Result<Vec<u32>> {
    let name = std::ffi::CString::new(user.name.as_bytes())?;
    Ok(getgrouplist(&name, user.gid)
        .with_context(|| format!("groups of {}", user.name))?
        .into_iter()
        .map(Gid::as_raw)
        .collect())
}

/// The identity of a user who is not the caller (an agent's owner, whose rights apply when
/// `sync` reads a credential source without the owner present).
pub fn identity_of(uid: u32) -> Result<Identity> {
    let user = User::from_uid(Uid::from_raw(uid))
        .with_context(|| format!("looking up uid {uid}"))?
        .ok_or_else(|| anyhow!("uid {uid} has no passwd entry"))?;
    let groups = supplementary_groups(&user)?;
    Ok(Identity {
        uid,
        gid: user.gid.as_raw(),
        groups,
    })
}

/// The home directory of a user, from the passwd database (never from $HOME).
pub fn home_of(uid: u32) -> Option<PathBuf> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// The name of a user for messages: the passwd name, else "uid N".
pub fn name_of(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// The primary group of a user, from the passwd database (0 for root).
pub fn primary_gid_of(uid: u32) -> Option<u32> {
    if uid == 0 {
        return Some(0);
    }
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
}
