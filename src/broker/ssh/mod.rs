//! The filtered ssh-agent (issue 13 item 4): `cred ssh NAME KEY.pub --host HOST` gives the
//! agent the use of one of the owner's keys toward chosen hosts, never the key.
//!
//! At run start the runner (root, single-threaded) opens the key source with the owner's
//! rights ([`source`]: a connection to the owner's ssh-agent, or the unencrypted private key
//! file) and binds the agent's socket (root's directory, the socket the agent's own, 0600);
//! the policy point takes both over and serves the socket as agentuser-net ([`serve`]),
//! checking every request ([`filter`]) before it reaches the owner's key. The agent sees
//! the socket at the same path through `SSH_AUTH_SOCK`.
#![forbid(unsafe_code)]

pub mod command;
pub mod filter;
pub mod known_hosts;
pub mod protocol;
mod serve;
pub mod source;

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use zeroize::Zeroizing;

use crate::context::Context;
use crate::creds::CredKind;
use crate::registry::AgentRecord;
use crate::sys::ids::with_identity;
use filter::{Key, KeySource};

pub use serve::serve;

/// Largest private key file read.
const KEY_FILE_MAX: u64 = 64 << 10;

/// What the policy point serves: the chosen keys, the key source, the listening socket.
pub struct Agent {
    pub keys: Vec<Key>,
    pub source: Box<dyn KeySource>,
    pub listener: UnixListener,
    pub agent_uid: u32,
    /// Descriptors the policy point must keep open.
    pub fds: Vec<RawFd>,
}

/// The agent's ssh credentials, made ready for the run: `None` when it has none. Problems
/// with one key are warnings; the run goes on without it.
pub fn prepare(
    ctx: &Context,
    record: &AgentRecord,
    run: &str,
) -> Result<Option<(Agent, PathBuf, Vec<String>)>> {
    let mut warnings = Vec::new();
    let keys = chosen_keys(record, &mut warnings);
    if keys.is_empty() {
        return Ok(None);
    }
    let (source, source_fd) = open_source(ctx, record, &keys, &mut warnings);
    let (listener, path) = bind_socket(ctx, record, run)?;
    let mut fds = vec![listener.as_raw_fd()];
    fds.extend(source_fd);
    let agent = Agent {
        keys,
        source,
        listener,
        agent_uid: record.uid,
        fds,
    };
    Ok(Some((agent, path, warnings)))
}

fn chosen_keys(record: &AgentRecord, warnings: &mut Vec<String>) -> Vec<Key> {
    let mut keys = Vec::new();
    for (cred, ssh) in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Ssh)
        .filter_map(|c| Some((c, c.ssh.as_ref()?)))
    {
        let Ok(public) = ssh_key::PublicKey::from_openssh(&ssh.public) else {
            warnings.push(format!(
                "ssh key {}: unreadable record",
                cred.source.display()
            ));
            continue;
        };
        let host_keys = ssh
            .host_keys
            .iter()
            .filter_map(|k| ssh_key::PublicKey::from_openssh(k).ok())
            .filter_map(|k| protocol::encoded(k.key_data()))
            .collect();
        let Some(blob) = protocol::encoded(public.key_data()) else {
            continue;
        };
        keys.push(Key {
            blob,
            comment: format!("{} (agentuser)", cred.source.display()),
            host_keys,
        });
    }
    keys
}

/// The owner's ssh-agent when the caller is the owner, has one, and it holds a chosen key;
/// otherwise the private key files, read as the owner.
fn open_source(
    ctx: &Context,
    record: &AgentRecord,
    keys: &[Key],
    warnings: &mut Vec<String>,
) -> (Box<dyn KeySource>, Option<RawFd>) {
    if let Some(mut agent) = owner_agent(ctx, record) {
        let held = agent.available().unwrap_or_default();
        if keys.iter().any(|k| held.contains(&k.blob)) {
            let fd = agent.stream.as_raw_fd();
            return (Box::new(agent), Some(fd));
        }
    }
    let mut files = source::KeyFiles { keys: Vec::new() };
    for cred in record
        .credentials
        .iter()
        .filter(|c| c.kind == CredKind::Ssh)
    {
        let Some(ssh) = &cred.ssh else { continue };
        match read_private(record.owner_uid, &ssh.private, &ssh.public) {
            Ok(key) => files.keys.push(key),
            Err(why) => warnings.push(format!(
                "ssh key {}: not in your ssh-agent, and {}: {why}",
                cred.source.display(),
                ssh.private.display()
            )),
        }
    }
    (Box::new(files), None)
}

/// A connection to the caller's ssh-agent, made as the caller, when the caller owns the
/// agent (only the owner's keys may be used).
fn owner_agent(ctx: &Context, record: &AgentRecord) -> Option<source::OwnerAgent> {
    if ctx.caller.uid != record.owner_uid {
        return None;
    }
    let path = Path::new(ctx.caller_env.get("SSH_AUTH_SOCK")?);
    let stream = with_identity(&ctx.caller.identity(), || {
        UnixStream::connect(path).context("connecting")
    })
    .ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    Some(source::OwnerAgent { stream })
}

/// Reads and parses the private key file as the owner; it must match the recorded key.
fn read_private(owner_uid: u32, path: &Path, public: &str) -> Result<ssh_key::PrivateKey, String> {
    let owner = crate::account::identity_of(owner_uid).map_err(|e| e.to_string())?;
    let text = with_identity(&owner, || {
        let file = std::fs::File::open(path).context("opening")?;
        let mut text = Zeroizing::new(String::new());
        file.take(KEY_FILE_MAX)
            .read_to_string(&mut text)
            .context("reading")?;
        Ok(text)
    })
    .map_err(|e| crate::error::one_line(&e))?;
    let key = source::KeyFiles::parse(&text)?;
    let wanted = ssh_key::PublicKey::from_openssh(public).map_err(|e| e.to_string())?;
    if key.public_key().key_data() != wanted.key_data() {
        return Err("it is not the private half of the recorded key".into());
    }
    Ok(key)
}

/// The agent's socket: in root's directory (0711) under the registry, the socket file the
/// agent's, mode 0600. The registry is covered in the view; the socket is bound there at
/// the same path.
fn bind_socket(ctx: &Context, record: &AgentRecord, run: &str) -> Result<(UnixListener, PathBuf)> {
    let dir = ctx.registry.root().join("run-ssh");
    crate::registry::ensure_root_dir(&dir, 0o711)?;
    let path = dir.join(format!("{run}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::os::unix::fs::chown(&path, Some(record.uid), Some(record.gid)))
        .with_context(|| format!("handing {} to the agent", path.display()))?;
    Ok((listener, path))
}
