//! The git remote helper behind `agentuser::NAME:PATH` URLs (gitremote-helpers(7)).
//!
//! git runs `git-remote-agentuser REMOTE NAME:PATH` (a two-line script installed beside
//! agentuser that runs `agentuser git-remote-helper REMOTE NAME:PATH`) with the owner's
//! identity. The helper offers only `connect`, and only to `git-upload-pack`: once the
//! caller is authorized for the agent and PATH is the work tree of one of the owner's
//! repositories in the agent's read-write shares, it answers the connect and runs
//! `git upload-pack` on the agent's git directory, as the agent, inside its view (a full
//! run: PAM session, namespaces, planted-repository guard), with git's pipes as its
//! standard input and output. The owner's git receives a pack; nothing of the agent's runs
//! as the owner and the owner's git never operates in the agent's directory.
//!
//! The protocol lines are read one byte at a time, so nothing meant for upload-pack is
//! consumed here.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use anyhow::{Result, anyhow, bail};

use crate::context::Context;

/// Longest protocol line accepted.
const MAX_LINE: usize = 4096;

/// Serves one connection; returns the exit status.
pub fn serve(ctx: &Context, address: &str) -> Result<u8> {
    let (name, path) = parse_address(address)?;
    let record = crate::policy::ready_agent(ctx, name)?;
    let contents = crate::share::Contents::of(ctx, &record);
    let repo = super::repositories(&record, &contents)
        .into_iter()
        .find(|r| r.worktree() == Path::new(path))
        .ok_or_else(|| {
            anyhow!("{path}: not a repository of yours in a read-write share of agent '{name}'")
        })?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let line = read_line()?;
        match line.as_str() {
            "" => return Ok(0),
            "capabilities" => {
                stdout.write_all(b"connect\n\n")?;
                stdout.flush()?;
            }
            "connect git-upload-pack" => {
                stdout.write_all(b"\n")?;
                stdout.flush()?;
                drop(stdout);
                let dir = super::agent_view(ctx, &repo.id);
                let command: Vec<OsString> = vec![
                    "git".into(),
                    "upload-pack".into(),
                    "--strict".into(),
                    dir.into_os_string(),
                ];
                crate::eventlog::record(ctx, "git-fetch", name, &format!("path={path:?}"));
                return Ok(crate::runner::serve(ctx, name, &command));
            }
            "connect git-receive-pack" => bail!(
                "pushing to agent '{name}' is not supported: the agent commits in its own repository and you fetch"
            ),
            other => bail!("unsupported remote-helper command: {:?}", other),
        }
    }
}

/// `NAME:/absolute/path`.
fn parse_address(address: &str) -> Result<(&str, &str)> {
    let (name, path) = address
        .split_once(':')
        .ok_or_else(|| crate::error::usage(format!("{address:?}: expected NAME:PATH")))?;
    crate::names::check_agent_name(name)?;
    if !path.starts_with('/') {
        return Err(crate::error::usage(format!(
            "{address:?}: the path must be absolute"
        )));
    }
    Ok((name, path))
}

/// One line from standard input, without its newline; empty at end of input.
fn read_line() -> Result<String> {
    let stdin = crate::sys::spawn::std_fd(0);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        // Unbuffered: what follows the line belongs to upload-pack.
        match nix::unistd::read(stdin, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if line.len() > MAX_LINE {
            bail!("remote-helper command too long");
        }
    }
    String::from_utf8(line).map_err(|_| anyhow!("remote-helper command is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("coder:/home/a/p").unwrap(),
            ("coder", "/home/a/p")
        );
        assert!(parse_address("coder").is_err());
        assert!(parse_address("coder:rel").is_err());
        assert!(parse_address("Bad:/x").is_err());
    }
}
