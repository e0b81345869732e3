//! The state of a credential, and `sync`: bring copies and live grants up to date with their
//! sources. Sources are read with the owner's rights (never root's), the agent's side as the
//! agent; nothing ever flows from the agent back to the owner.
#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::Result;

use super::source::{self, Source, Unreadable};
use super::{CredKind, CredentialRecord, agent, env_store, live, now, sha256_hex};
use crate::context::Context;
use crate::registry::AgentRecord;
use crate::sys::agentfs::Found;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    SourceChanged,
    AgentModified,
    MissingSource,
    MissingCopy,
    UnreadableSource,
    /// A live source path that now names another file than the one granted at `add`.
    SourceReplaced,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::SourceChanged => "source-changed",
            State::AgentModified => "agent-modified",
            State::MissingSource => "missing-source",
            State::MissingCopy => "missing-copy",
            State::UnreadableSource => "unreadable-source",
            State::SourceReplaced => "source-replaced",
        }
    }
}

/// A credential examined: its state, the source as read (when readable) and why the source
/// or the agent's side is not as expected.
pub struct Check {
    pub state: State,
    /// The source as read, or why it could not be read.
    pub source: std::result::Result<Source, String>,
    pub why: Option<String>,
}

/// Examines one credential.
pub fn check(ctx: &Context, record: &AgentRecord, cred: &CredentialRecord) -> Check {
    if cred.kind == CredKind::Ssh {
        // Its source is read at run start, as the owner; nothing to compare here.
        return Check {
            state: State::Ok,
            source: Err(String::new()),
            why: None,
        };
    }
    if cred.kind == CredKind::Env {
        let state = match cred.source.to_str() {
            Some(var) if env_store::exists(&ctx.registry.secrets_dir(&record.name), var) => {
                State::Ok
            }
            _ => State::MissingSource,
        };
        return Check {
            state,
            source: Err("not a file".into()),
            why: None,
        };
    }
    let source = read_source(ctx, record, cred);
    let dest = cred.dest.as_deref().unwrap_or(Path::new(""));
    let found = agent::read(record, dest, ctx.config.cred_max_bytes);
    let mut why = None;
    let agent_side = match (&found, cred.kind) {
        (Ok(Found::Missing), _) => Some(State::MissingCopy),
        (Ok(Found::Unexpected(reason)), _) => {
            why = Some(reason.clone());
            Some(State::AgentModified)
        }
        // A placeholder may hold anything: the mount covers it.
        (Ok(Found::File(_)), CredKind::Live) => None,
        (Ok(Found::File(data)), _) => {
            (Some(sha256_hex(data)) != cred.dest_sha256).then_some(State::AgentModified)
        }
        (Err(e), _) => {
            why = Some(format!("{e:#}"));
            Some(State::AgentModified)
        }
    };
    let state = match (agent_side, &source) {
        (Some(state), _) => state,
        (None, Err((state, reason))) => {
            why = Some(reason.clone());
            *state
        }
        (None, Ok(src)) => {
            let granted = cred.kind != CredKind::Live || live::granted(&src.file, record.uid);
            if Some(&src.sha256) != cred.sha256.as_ref() || !granted {
                State::SourceChanged
            } else if cred.kind == CredKind::Copy && !masked_as_recorded(ctx, record, cred, src) {
                why = Some("the agent's brokered secrets changed".into());
                State::SourceChanged
            } else {
                State::Ok
            }
        }
    };
    Check {
        state,
        source: source.map_err(|(_, reason)| reason),
        why,
    }
}

/// Whether the copy was written with the brokered secrets the agent has now: a secret
/// brokered (or its value rotated, or unbrokered) after the copy was made changes what the
/// copy must hold although neither file changed. Unknown (secrets unreadable) counts as
/// changed, so that sync tries again and reports why it cannot.
fn masked_as_recorded(
    ctx: &Context,
    record: &AgentRecord,
    cred: &CredentialRecord,
    src: &Source,
) -> bool {
    super::agent_content(ctx, record, &src.data)
        .is_ok_and(|content| Some(sha256_hex(&content)) == cred.dest_sha256)
}

/// Reads a source with the owner's rights; on failure, the state it means and why. A live
/// source is reopened without following any link and must still be the inode it was when
/// it was added: an ACL entry never lands on another file.
fn read_source(
    ctx: &Context,
    record: &AgentRecord,
    cred: &CredentialRecord,
) -> std::result::Result<Source, (State, String)> {
    let path = cred.source.as_path();
    let owner = crate::account::identity_of(record.owner_uid)
        .map_err(|e| (State::UnreadableSource, format!("{e:#}")))?;
    // Checked at every read: a share made after the credential counts too.
    source::check_out_of_agent_reach(path, &owner, record)
        .map_err(|e| (State::UnreadableSource, format!("{e:#}")))?;
    let links = match cred.kind {
        CredKind::Live => source::Links::Refuse,
        _ => source::Links::Follow,
    };
    let src = source::read(
        path,
        &owner,
        record.owner_uid,
        ctx.config.cred_max_bytes,
        links,
    )
    .map_err(|e| {
        let state = match source::unreadable(&e) {
            Some(Unreadable::Missing) => State::MissingSource,
            _ => State::UnreadableSource,
        };
        (state, format!("{e:#}"))
    })?;
    match cred.source_inode {
        Some(pinned) if cred.kind == CredKind::Live && pinned != src.inode => Err((
            State::SourceReplaced,
            format!(
                "{}: now another file than the one added (remove the credential and add it again)",
                path.display()
            ),
        )),
        _ => Ok(src),
    }
}

/// What `sync` did with one credential.
pub enum Outcome {
    Unchanged,
    Updated(String),
    /// A copy the agent modified, left alone; whether the source has news it holds back.
    Kept {
        why: String,
        source_changed: bool,
    },
    Failed(String),
}

/// Brings one credential up to date. A copy the agent changed is overwritten only with
/// `force`; a planted link or special file is never written through, `force` or not.
pub fn sync_one(
    ctx: &Context,
    record: &AgentRecord,
    cred: &mut CredentialRecord,
    force: bool,
) -> Outcome {
    let check = check(ctx, record, cred);
    if check.state == State::Ok {
        return Outcome::Unchanged;
    }
    if cred.kind == CredKind::Env {
        return Outcome::Failed(format!(
            "no stored value: set it again with 'agentuser cred env {} {}'",
            record.name,
            cred.source.display()
        ));
    }
    if cred.kind == CredKind::Copy && check.state == State::AgentModified && !force {
        let source_changed = match &check.source {
            Ok(src) => Some(&src.sha256) != cred.sha256.as_ref(),
            Err(_) => true,
        };
        return Outcome::Kept {
            why: format!(
                "modified by the agent ({}), kept; 'cred sync --force' overwrites it",
                check.why.as_deref().unwrap_or("content differs")
            ),
            source_changed,
        };
    }
    // Whatever the agent's side, nothing can be done without the source.
    let src = match check.source {
        Ok(src) => src,
        Err(why) => return Outcome::Failed(why),
    };
    let done = match cred.kind {
        CredKind::Live => refresh_live(record, cred, &src)
            .map(|()| "placeholder and read access checked, digest recorded"),
        _ => refresh_copy(ctx, record, cred, &src).map(|()| match check.state {
            State::MissingCopy => "copy was missing, copied again",
            State::AgentModified => "agent's changes overwritten (--force)",
            _ if check.why.is_some() => "brokered secrets changed, copied again",
            _ => "source changed, copied again",
        }),
    };
    match done {
        Ok(what) => Outcome::Updated(what.into()),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// Writes the source into the agent's home again, brokered values masked, and records the
/// digests of both: the real file's and what was written.
fn refresh_copy(
    ctx: &Context,
    record: &AgentRecord,
    cred: &mut CredentialRecord,
    src: &Source,
) -> Result<()> {
    let dest = cred.dest.clone().unwrap_or_default();
    let content = super::agent_content(ctx, record, &src.data)?;
    agent::write_copy(record, &dest, &content)?;
    cred.sha256 = Some(src.sha256.clone());
    cred.dest_sha256 = Some(sha256_hex(&content));
    cred.recorded = now();
    Ok(())
}

/// Makes sure a live credential's placeholder and ACL entry exist, and records the digest.
fn refresh_live(record: &AgentRecord, cred: &mut CredentialRecord, src: &Source) -> Result<()> {
    let dest = cred.dest.clone().unwrap_or_default();
    agent::ensure_placeholder(record, &dest)?;
    let owner = crate::account::identity_of(record.owner_uid)?;
    live::check_owned(&src.file, &owner, &cred.source)?;
    if !live::granted(&src.file, record.uid) {
        live::grant(&src.file, record.uid, &cred.source)?;
    }
    cred.sha256 = Some(src.sha256.clone());
    cred.source_inode = Some(src.inode);
    cred.recorded = now();
    Ok(())
}
