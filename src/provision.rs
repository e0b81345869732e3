//! The life cycle of an agent: `create` and `delete`, the one place that makes and the one
//! place that undoes an agent.
//!
//! Both are journaled in the agent record: `create` tombstones the uid and writes a
//! `creating` record before touching /etc; `delete` marks the record `deleting` before
//! undoing anything. Either, interrupted at any point, is completed by running the same
//! command again, and a failed `create` rolls back what it made.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::account::{self, NewAccount};
use crate::cleanup::{self, Select};
use crate::context::Context;
use crate::error::usage;
use crate::names::check_agent_name;
use crate::policy::{self, Owner};
use crate::registry::{AgentRecord, AgentState, Lock, Scan, ensure_root_dir};
use crate::{creds, eventlog, share};

/// Where desktop account services look for per-user settings; `SystemAccount=true` there
/// keeps the agent off graphical login screens.
const ACCOUNTS_SERVICE_DIR: &str = "/var/lib/AccountsService/users";
/// Directories where an agent may leave files behind.
const SHARED_TEMP_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

pub fn create(ctx: &Context, name: &str, owner: Option<&str>, comment: Option<&str>) -> Result<()> {
    check_agent_name(name)?;
    let user = ctx.config.user_name(name);
    let comment = comment.unwrap_or("");
    if comment.contains([':', '\n', '\0']) || comment.len() > 255 {
        return Err(usage(
            "--comment: at most 255 characters, no ':' or newlines",
        ));
    }
    let owner = policy::authorize_create(ctx, owner)?;
    let lock = ctx.registry.lock_new(name)?;

    let record = match ctx.registry.load(name)? {
        Some(record) if record.state == AgentState::Creating => {
            // An interrupted create: finish it, for the same owner only.
            if record.owner_uid != owner.uid {
                bail!("agent '{name}' is being created for another owner");
            }
            repair_half_made_account(&record)?;
            record
        }
        Some(record) if record.state == AgentState::Deleting => {
            bail!("agent '{name}' is being deleted: run 'agentuser delete {name}' to finish")
        }
        Some(_) => bail!("agent '{name}' already exists"),
        None => new_record(ctx, &lock, name, &user, &owner, comment)?,
    };
    if let Err(err) = make_account(ctx, &record) {
        rollback_create(ctx, &lock, &record);
        return Err(err.context(format!("creating agent '{name}'")));
    }
    let record = AgentRecord {
        state: AgentState::Ready,
        ..record
    };
    ctx.registry.save(&lock, &record)?;
    eventlog::record(
        ctx,
        "create",
        name,
        &format!("user={} uid={}", record.user, record.uid),
    );
    crate::error::changed(&format!(
        "created agent {name} (user {}, uid {}, home {}) for {}",
        record.user,
        record.uid,
        record.home.display(),
        record.owner
    ));
    Ok(())
}

/// Checks the request against the host and policy, picks a uid and journals the creation,
/// under the registry-wide lock (the per-owner count and the uid concern every agent).
fn new_record(
    ctx: &Context,
    lock: &Lock,
    name: &str,
    user: &str,
    owner: &Owner,
    comment: &str,
) -> Result<AgentRecord> {
    if account::user_by_name(user)?.is_some() {
        bail!("user '{user}' already exists and is not an agent of agentuser");
    }
    if account::group_by_name(user)?.is_some() {
        bail!("group '{user}' already exists");
    }
    let home = ctx.config.home_of(user);
    if home.symlink_metadata().is_ok() {
        bail!(
            "home {} already exists (kept by 'delete --keep-home'?): move it away first",
            home.display()
        );
    }
    let registry_lock = ctx.registry.lock_all(lock)?;
    let scan = ctx.registry.scan()?;
    for damage in &scan.damaged {
        damage.warn();
    }
    let owned = scan
        .records
        .iter()
        .filter(|r| r.owner_uid == owner.uid)
        .count();
    policy::check_quota(&ctx.caller, owner, owned, &ctx.config)?;
    let uid = allocate_uid(ctx, &scan)?;
    ctx.registry.mark_uid_used(&registry_lock, uid)?;
    let record = AgentRecord {
        name: name.to_string(),
        state: AgentState::Creating,
        owner: owner.name.clone(),
        owner_uid: owner.uid,
        user: user.to_string(),
        uid,
        gid: uid,
        home,
        comment: comment.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        shares: Vec::new(),
        credentials: Vec::new(),
        network: None,
        net_allow: Vec::new(),
        env: Default::default(),
        cwd: None,
    };
    ctx.registry.save(lock, &record)?;
    drop(registry_lock);
    Ok(record)
}

/// The lowest uid of the range that was never handed out and that no user or group holds.
///
/// Damage is handled conservatively (README, "State"): allocation refuses while the
/// tombstone file cannot be read at all; numbers in damaged tombstone lines and uids that a
/// damaged record or its account may hold count as handed out, and as allocation starts
/// above the highest uid handed out, every uid below them is skipped too.
fn allocate_uid(ctx: &Context, scan: &Scan) -> Result<u32> {
    let tombstones = ctx.registry.tombstones();
    tombstones.warn();
    if let Some(why) = &tombstones.unreadable {
        bail!("cannot pick a uid: the uid tombstones are unreadable: {why}");
    }
    let mut used: Vec<u32> = tombstones.uids.iter().copied().collect();
    used.extend(tombstones.suspects.iter().copied());
    used.extend(scan.records.iter().map(|r| r.uid));
    for damage in &scan.damaged {
        used.extend(damage.uid);
        if let Some(user) = account::user_by_name(&ctx.config.user_name(&damage.name))? {
            used.push(user.uid.as_raw());
        }
    }
    let subordinate = subordinate_ranges()?;
    let (min, max) = (ctx.config.uid_min, ctx.config.uid_max);
    let mut uid = used
        .iter()
        .filter(|u| (min..=max).contains(*u))
        .max()
        .map_or(min, |u| u.saturating_add(1));
    // Start after the highest tombstone: uids below it were handed out or skipped before.
    while uid <= max && uid >= min {
        let taken = scan.records.iter().any(|r| r.uid == uid)
            || subordinate
                .iter()
                .any(|(start, count)| uid >= *start && uid - start < *count)
            || account::user_by_uid(uid)?.is_some()
            || account::group_by_gid(uid)?.is_some();
        if !taken {
            return Ok(uid);
        }
        uid += 1;
    }
    bail!("the agent uid range {min}-{max} is exhausted (uid_min/uid_max)")
}

/// Subordinate id ranges from /etc/subuid and /etc/subgid: an agent uid inside one would be
/// another user's container root.
fn subordinate_ranges() -> Result<Vec<(u32, u32)>> {
    let mut ranges = Vec::new();
    for path in ["/etc/subuid", "/etc/subgid"] {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        for line in text.lines() {
            let mut fields = line.split(':').skip(1);
            if let (Some(Ok(start)), Some(Ok(count))) = (
                fields.next().map(str::parse::<u32>),
                fields.next().map(str::parse::<u32>),
            ) {
                ranges.push((start, count));
            }
        }
    }
    Ok(ranges)
}

/// Makes (or finishes making) the group, account, home and login-screen hiding.
fn make_account(ctx: &Context, record: &AgentRecord) -> Result<()> {
    let id_range = (ctx.config.uid_min, ctx.config.uid_max);
    let base = &ctx.config.home_base;
    if let Some(parent) = base.parent() {
        check_root_chain(parent)?;
    }
    // Agents traverse the base to reach their home but cannot list it.
    ensure_root_dir(base, 0o711)?;
    // A tool killed half way (or left running by an interrupted create) may leave one file
    // of a pair written: such an account is made again, once.
    for attempt in 0..2 {
        ensure_group(record, id_range)?;
        ensure_user(ctx, record, id_range)?;
        if account::presence(&record.user)? == [true; 4] {
            break;
        }
        if attempt == 1 {
            bail!(
                "account {}: still half made in /etc after making it again: repair with pwck/grpck",
                record.user
            );
        }
        repair_half_made_account(record)?;
    }
    let home_name = record
        .home
        .strip_prefix(base)
        .ok()
        .filter(|rest| rest.components().count() == 1)
        .with_context(|| format!("home {}: not directly in home_base", record.home.display()))?;
    crate::home::make(base, home_name.as_os_str(), record.uid, record.gid)?;
    check_home(record)?;
    hide_from_login_screens(&record.user)?;
    Ok(())
}

/// Makes the agent's group unless it exists. A tool left running by an interrupted create
/// may finish the same step while we look, so "it exists now, as we wanted" counts.
fn ensure_group(record: &AgentRecord, id_range: (u32, u32)) -> Result<()> {
    let group_ok = || -> Result<bool> {
        match account::group_by_name(&record.user)? {
            None => Ok(false),
            Some(group) if group.gid.as_raw() == record.gid => Ok(true),
            Some(_) => bail!("group '{}' exists with another gid", record.user),
        }
    };
    if !group_ok()? {
        if let Err(e) = account::create_group(&record.user, record.gid, id_range) {
            if !group_ok()? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Makes the agent's account unless it exists (same tolerance as [`ensure_group`]).
fn ensure_user(ctx: &Context, record: &AgentRecord, id_range: (u32, u32)) -> Result<()> {
    let user_ok = || -> Result<bool> {
        match account::user_by_name(&record.user)? {
            None => Ok(false),
            Some(user) if user.uid.as_raw() == record.uid => Ok(true),
            Some(_) => bail!("user '{}' exists with another uid", record.user),
        }
    };
    if !user_ok()? {
        let made = account::create_user(&NewAccount {
            user: &record.user,
            uid: record.uid,
            gid: record.gid,
            home: &record.home,
            shell: &ctx.config.shell,
            comment: &record.comment,
            id_range,
        });
        if let Err(e) = made {
            if !user_ok()? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// An interrupted create may have left the account half made in /etc: a user in passwd but
/// not shadow, a group in group but not gshadow. The tools do not repair that and would
/// report success over it, so the half-made parts go and `make_account` makes them again.
fn repair_half_made_account(record: &AgentRecord) -> Result<()> {
    let [passwd, shadow, group, gshadow] = account::presence(&record.user)?;
    if passwd == shadow && group == gshadow {
        return Ok(());
    }
    eprintln!(
        "agentuser: warning: account {} was left half made by an interrupted create: making it again",
        record.user
    );
    // The tools find the name through passwd and group; a line left only in shadow or
    // gshadow is removed directly.
    // A tool's failure here (a half-written file it cannot parse as it expects) is not
    // final: what it left is removed line by line below.
    if passwd {
        let _ = account::delete_user(&record.user);
    }
    if group {
        let _ = account::delete_group(&record.user);
    }
    let files = ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"];
    for (file, left) in files.iter().zip(account::presence(&record.user)?) {
        if left {
            account::remove_stray_line(file, &record.user)?;
        }
    }
    let left = account::presence(&record.user)?;
    if left.iter().any(|&found| found) {
        bail!(
            "account {}: still in /etc/{} after removing it: repair with pwck/grpck",
            record.user,
            ["passwd", "shadow", "group", "gshadow"][left.iter().position(|&f| f).unwrap_or(0)]
        );
    }
    Ok(())
}

/// Every existing ancestor of the home base must be root's and not writable by others, or
/// someone could swap a component for a symlink while useradd works.
fn check_root_chain(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors() {
        ensure_root_dir(ancestor, 0o755)
            .with_context(|| format!("home_base ancestor {}", ancestor.display()))?;
    }
    Ok(())
}

fn check_home(record: &AgentRecord) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&record.home)
        .with_context(|| format!("home {}", record.home.display()))?;
    if !meta.is_dir() || meta.uid() != record.uid || meta.mode() & 0o7777 != 0o700 {
        bail!(
            "home {}: expected a 0700 directory owned by uid {}",
            record.home.display(),
            record.uid
        );
    }
    Ok(())
}

fn hide_from_login_screens(user: &str) -> Result<()> {
    let dir = Path::new(ACCOUNTS_SERVICE_DIR);
    if !dir.is_dir() {
        return Ok(());
    }
    crate::registry::write_atomic(&dir.join(user), b"[User]\nSystemAccount=true\n")
}

/// Undoes a failed create: whatever part of the account exists goes, the record goes, the
/// uid stays tombstoned. Best effort: the original error is what the user needs to see.
fn rollback_create(ctx: &Context, lock: &Lock, record: &AgentRecord) {
    // The home goes only if this create made it (it belongs to the new uid); anything else
    // at that path is someone's data.
    use std::os::unix::fs::MetadataExt;
    // A root-owned 0700 one is a home this create had started (src/home.rs): `create`
    // refuses an existing home before it journals, so nothing else can be there.
    let ours = record.home.symlink_metadata().is_ok_and(|m| {
        m.is_dir() && (m.uid() == record.uid || (m.uid() == 0 && m.mode() & 0o7777 == 0o700))
    });
    // The record goes only once the account is gone: a record left `creating` is what
    // lets the next `create` (or root's `delete`) find and finish what is left, instead of
    // an account and home no record names.
    match remove_account(record, !ours) {
        Ok(()) => {
            let _ = ctx.registry.remove(lock);
        }
        Err(e) => eprintln!(
            "agentuser: warning: agent '{}': could not undo the create ({}): run the same \
             create again to finish it, or delete it",
            record.name,
            crate::error::one_line(&e)
        ),
    }
}

/// What `delete` keeps.
#[derive(Debug, Clone, Copy)]
pub struct DeleteOptions {
    /// The agent's home stays (inert: its uid is never reused).
    pub keep_home: bool,
    /// Files the agent owns in its shares stay its own instead of going to the tree's owner.
    pub keep_owner: bool,
}

/// `delete --dry-run`: what `delete` would do, on stdout; nothing changes.
pub fn delete_dry_run(ctx: &Context, name: &str, how: DeleteOptions) -> Result<()> {
    check_agent_name(name)?;
    let record = match ctx.registry.load(name)? {
        Some(record) => {
            policy::authorize_agent(ctx, &record)?;
            record
        }
        None => bail!("agent '{name}': no such agent"),
    };
    println!("would delete agent {name}:");
    println!(
        "  stop every process of uid {} and remove account {} and its group",
        record.uid, record.user
    );
    if how.keep_home {
        println!("  keep its home {}", record.home.display());
    } else {
        println!("  remove its home {}", record.home.display());
    }
    for share in &record.shares {
        println!("  {}", share::revoke_plan(&record, share, how.keep_owner));
    }
    for line in creds::describe(ctx, &record) {
        println!("  remove credential: {line}");
    }
    println!(
        "  remove its files in /tmp, /var/tmp and /dev/shm, its crontab, its stored secrets, \
         its git directories, network log and run files, and its record (uid {} is never \
         reused)",
        record.uid
    );
    Ok(())
}

pub fn delete(ctx: &Context, name: &str, how: DeleteOptions) -> Result<()> {
    let keep_home = how.keep_home;
    check_agent_name(name)?;
    // Root may delete what a name left without a record (orphans, leftovers).
    let lock = if ctx.caller.is_root {
        ctx.registry.lock_new(name)?
    } else {
        ctx.registry.lock(name)?
    };
    let Some((lock, mut record)) = record_to_delete(ctx, lock, name)? else {
        return Ok(());
    };
    if record.state != AgentState::Deleting {
        record.state = AgentState::Deleting;
        ctx.registry.save(&lock, &record)?;
    }
    stop_agent(ctx, &record)?;
    let shares = record.shares.len();
    let credentials = record.credentials.len();
    let handed_back =
        share::revoke_all(ctx, &lock, &mut record, how.keep_owner).context("revoking shares")?;
    creds::remove_all(ctx, &lock, &mut record).context("removing credentials")?;
    remove_account(&record, keep_home)?;
    remove_agent_state(ctx, lock, name)?;
    eventlog::record(
        ctx,
        "delete",
        name,
        if keep_home { "keep-home" } else { "" },
    );
    crate::error::changed(&format!(
        "deleted agent {name} (user {}, uid {}): {shares} share(s) revoked, {handed_back} \
         file(s) handed back, {credentials} credential(s) removed, home {}",
        record.user,
        record.uid,
        if keep_home { "kept" } else { "removed" }
    ));
    Ok(())
}

/// The record of the agent to delete, with the lock. Root also deletes what a name left
/// without a usable record: a damaged record or an orphaned account or home is rebuilt into
/// one, and files only in the state directory are removed here. `None` when nothing is left
/// to delete.
fn record_to_delete(ctx: &Context, lock: Lock, name: &str) -> Result<Option<(Lock, AgentRecord)>> {
    let record = match ctx.registry.load(name) {
        Ok(Some(record)) => {
            policy::authorize_agent(ctx, &record)?;
            record
        }
        Ok(None) if ctx.caller.is_root && crate::recover::orphan_exists(ctx, name)? => {
            // An account or home of agentuser's with no record (doctor reports these).
            let why = anyhow::anyhow!("no record: an account or home left without one");
            match crate::recover::rebuild(ctx, &lock, name, &why)? {
                Some(record) => record,
                None => return Ok(None),
            }
        }
        Ok(None) if ctx.caller.is_root && !crate::leftovers::of_agent(ctx, name).is_empty() => {
            delete_leftovers(ctx, lock, name)?;
            return Ok(None);
        }
        Ok(None) => {
            // Root's lock_new made the file for a name that names nothing: not kept.
            if ctx.caller.is_root {
                ctx.registry.remove_lock(lock)?;
            }
            bail!("agent '{name}': no such agent")
        }
        Err(damage) if ctx.caller.is_root => {
            match crate::recover::rebuild(ctx, &lock, name, &damage)? {
                Some(record) => record,
                // Nothing of the agent was left but the damaged record, now gone.
                None => return Ok(None),
            }
        }
        Err(damage) => {
            return Err(damage.context(format!(
                "agent '{name}': its record is damaged: only root can delete it"
            )));
        }
    };
    Ok(Some((lock, record)))
}

/// Stops every process of the agent's uid, then searches the shares of runs whose runner
/// was killed for planted repositories, while the shares are still the agent's (the next
/// exec would have).
fn stop_agent(ctx: &Context, record: &AgentRecord) -> Result<()> {
    crate::sys::process::kill_all_of_uid(record.uid, record.gid)
        .with_context(|| format!("stopping the processes of '{}'", record.user))?;
    crate::runner::planted::recover(ctx, record)
        .context("searching the shares of runs that ended without their runner")?;
    Ok(())
}

/// Removes what the state directory holds for the agent: stored secrets, git directories,
/// leftovers, then the record and its lock.
fn remove_agent_state(ctx: &Context, lock: Lock, name: &str) -> Result<()> {
    let secrets = ctx.registry.secrets_dir(name);
    if cleanup::remove(&secrets, Select::All)? > 0 {
        bail!("could not remove {}", secrets.display());
    }
    crate::git::forget(ctx, name)?;
    crate::leftovers::remove(ctx, name)?;
    ctx.registry.remove(&lock)?;
    ctx.registry.remove_lock(lock)?;
    Ok(())
}

/// Root's `delete` of a name that has neither record, account nor home, only files in the
/// state directory (`doctor` reports them): the shares its dead runs recorded are searched
/// for planted repositories, then everything goes.
fn delete_leftovers(ctx: &Context, lock: Lock, name: &str) -> Result<()> {
    crate::runner::planted::recover_without_record(ctx, name)
        .context("searching the shares of runs that ended without their runner")?;
    let count = crate::leftovers::of_agent(ctx, name).len();
    crate::leftovers::remove(ctx, name)?;
    ctx.registry.remove_lock(lock)?;
    eventlog::record(ctx, "delete", name, "leftovers");
    crate::error::changed(&format!(
        "removed {count} file(s) left in the state directory by agent {name}, which no longer exists"
    ));
    Ok(())
}

/// Removes the account, its group, crontab, temp files, home (unless kept) and login-screen
/// entry. Each step tolerates "already gone", so a repeated delete converges.
pub(crate) fn remove_account(record: &AgentRecord, keep_home: bool) -> Result<()> {
    remove_crontab(&record.user);
    for dir in SHARED_TEMP_DIRS {
        cleanup::remove(Path::new(dir), Select::OwnedBy(record.uid))
            .with_context(|| format!("removing files of '{}' in {dir}", record.user))?;
    }
    if let Some(user) = account::user_by_name(&record.user)? {
        if user.uid.as_raw() != record.uid {
            bail!(
                "user '{}' has uid {}, not the agent's",
                record.user,
                user.uid
            );
        }
        account::delete_user(&record.user)?;
    }
    if let Some(group) = account::group_by_name(&record.user)? {
        if group.gid.as_raw() == record.gid {
            account::delete_group(&record.user)?;
        }
    }
    if !keep_home {
        let left = cleanup::remove(&record.home, Select::All)?;
        if left > 0 {
            bail!(
                "home {}: {left} entries could not be removed",
                record.home.display()
            );
        }
    }
    let hidden = Path::new(ACCOUNTS_SERVICE_DIR).join(&record.user);
    match std::fs::remove_file(&hidden) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", hidden.display()))
        }
        _ => Ok(()),
    }
}

/// Spool files of cron: a job left behind would run the agent again after its deletion.
fn remove_crontab(user: &str) {
    for spool in ["/var/spool/cron/crontabs", "/var/spool/cron"] {
        let path = Path::new(spool).join(user);
        if path.symlink_metadata().is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(path);
        }
    }
}
