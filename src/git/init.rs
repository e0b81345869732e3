//! The agent's git directory, made by the agent process itself (after the privilege drop,
//! inside its view) the first time it runs with a repository: a fresh repository that
//! borrows the owner's objects read-only (`objects/info/alternates`) and starts where the
//! owner is: the owner's `HEAD`, refs and index (a real index for the shared work tree, so
//! the first `git status` is as fast as the owner's). Nothing here runs with privileges:
//! it can reach only what the agent can.
//!
//! `HEAD` is written last: a directory without it is (re)initialised at the next run, so
//! an interrupted initialisation is completed then.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// One agent git directory to initialise (paths in the agent's view).
#[derive(Debug, Clone)]
pub struct Job {
    /// The agent's git directory (its own, writable).
    pub agent_dir: PathBuf,
    /// The owner's git directory for this work tree (read-only): HEAD and index.
    pub owner_gitdir: PathBuf,
    /// The owner's common git directory (read-only): objects and refs.
    pub owner_common: PathBuf,
    /// Default author identity.
    pub name: String,
    pub email: String,
}

/// Initialises every directory that is not yet; a failure is reported as a warning (the
/// agent's git then says what is missing) and does not stop the run.
pub fn run(jobs: &[Job]) {
    for job in jobs {
        if let Err(e) = initialise(job) {
            eprintln!(
                "agentuser: warning: preparing the agent's git directory for {}: {}",
                job.owner_gitdir.display(),
                crate::error::one_line(&e)
            );
        }
    }
}

fn initialise(job: &Job) -> Result<()> {
    let dir = &job.agent_dir;
    if dir.join("HEAD").exists() {
        return Ok(());
    }
    for sub in [
        "objects/info",
        "objects/pack",
        "refs/heads",
        "refs/tags",
        "info",
    ] {
        fs::create_dir_all(dir.join(sub)).with_context(|| sub.to_string())?;
    }
    let objects = job.owner_common.join("objects");
    write(
        dir,
        "objects/info/alternates",
        format!("{}\n", objects.display()),
    )?;
    let owner_config = fs::read_to_string(job.owner_common.join("config")).unwrap_or_default();
    write(dir, "config", config(job, &owner_config))?;
    copy_refs(&job.owner_common.join("refs"), &dir.join("refs"))?;
    for (from, to) in [
        (job.owner_common.join("packed-refs"), "packed-refs"),
        (job.owner_gitdir.join("index"), "index"),
        (job.owner_common.join("info/exclude"), "info/exclude"),
    ] {
        match fs::read(&from) {
            Ok(data) => write(dir, to, data)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}", from.display())),
        }
    }
    let head = fs::read_to_string(job.owner_gitdir.join("HEAD")).unwrap_or_default();
    write(dir, "HEAD", sane_head(&head))
}

/// The owner's HEAD when it is a branch or a commit, else the default branch.
fn sane_head(head: &str) -> String {
    let line = head.lines().next().unwrap_or("").trim();
    let is_branch = line
        .strip_prefix("ref: refs/")
        .is_some_and(|r| !r.is_empty() && !r.contains(".."));
    let is_commit =
        (line.len() == 40 || line.len() == 64) && line.bytes().all(|b| b.is_ascii_hexdigit());
    if is_branch || is_commit {
        format!("{line}\n")
    } else {
        "ref: refs/heads/main\n".into()
    }
}

/// A fresh config: the object format of the owner's (SHA-256 needs it),
/// the agent's identity, and the owner's repository as the remote `owner`. Nothing else of
/// the owner's config is taken.
fn config(job: &Job, owner_config: &str) -> String {
    let setting = |key: &str| {
        owner_config.lines().find_map(|l| {
            let l = l.trim().to_ascii_lowercase().replace([' ', '\t'], "");
            l.strip_prefix(&format!("{key}=")).map(str::to_owned)
        })
    };
    let object_format = setting("objectformat").filter(|f| f == "sha256");
    let mut text = String::from("[core]\n");
    let version = if object_format.is_some() { 1 } else { 0 };
    text.push_str(&format!(
        "\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    ));
    if let Some(f) = object_format {
        text.push_str(&format!("[extensions]\n\tobjectformat = {f}\n"));
    }
    text.push_str(&format!(
        "[user]\n\tname = {}\n\temail = {}\n[remote \"owner\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/owner/*\n\ttagOpt = --no-tags\n",
        quote(&job.name),
        quote(&job.email),
        quote(&job.owner_common.to_string_lossy())
    ));
    text
}

/// A config value in double quotes.
fn quote(value: &str) -> String {
    let escaped: String = value
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Copies the loose refs (regular files only; symlinks and anything else are left out).
fn copy_refs(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            fs::create_dir_all(&target)?;
            copy_refs(&entry.path(), &target)?;
        } else if kind.is_file() {
            let data = fs::read(entry.path())?;
            fs::write(&target, data).with_context(|| format!("{}", target.display()))?;
        }
    }
    Ok(())
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> Result<()> {
    let path = dir.join(name);
    let mut file = fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    file.write_all(data.as_ref())
        .with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_a_branch_or_a_commit() {
        assert_eq!(sane_head("ref: refs/heads/dev\n"), "ref: refs/heads/dev\n");
        let sha = "a".repeat(40);
        assert_eq!(sane_head(&sha), format!("{sha}\n"));
        assert_eq!(sane_head("ref: ../../x"), "ref: refs/heads/main\n");
        assert_eq!(sane_head(""), "ref: refs/heads/main\n");
    }

    #[test]
    fn config_keeps_the_format_and_nothing_else() {
        let job = Job {
            agent_dir: "/a".into(),
            owner_gitdir: "/o".into(),
            owner_common: "/o".into(),
            name: "agent-x".into(),
            email: "agent-x@h".into(),
        };
        let text = config(
            &job,
            "[core]\n\tfsmonitor = evil\n[extensions]\n\tobjectFormat = sha256\n",
        );
        assert!(text.contains("objectformat = sha256"), "{text}");
        assert!(text.contains("repositoryformatversion = 1"), "{text}");
        assert!(!text.contains("evil"), "{text}");
        assert!(text.contains("name = \"agent-x\""), "{text}");
    }
}
