//! Network policy (docs/design.md section 8, docs/threat-model.md rows 6, 7, 27, 28, 30): the
//! allowlist ([`allowlist`], `agentuser net`), and the policy point, the only way out of an agent's
//! network namespace in `allowlist` mode.
//!
//! - [`point`]: the process (one per run, as agentuser-net), its namespace set-up and
//!   privilege drop; [`netns`]: routes and the netfilter ruleset of the namespace;
//! - [`proxy`]: what happens to each connection; [`dns`]: the stub; [`tls`]: SNI;
//!   [`upstream`]: connections out, directly or through `upstream_proxy`;
//! - [`log`]: refusals (agent log, syslog, end-of-run summary).
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod commands;
mod dns;
pub mod log;
pub mod netns;
mod nflog;
mod point;
pub mod pool;
mod proxy;
mod splice;
mod tls;
mod trust;
pub mod upstream;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::context::Context;
use crate::registry::AgentRecord;
use allowlist::{Allowlist, HostPattern};

/// Inside the view, on 127.0.0.1: the HTTP proxy the agent's environment names.
pub const PROXY_PORT: u16 = 3128;
/// Inside the view, on 127.0.0.1 and ::1: where netfilter delivers captured connections.
pub const CAPTURE_PORT: u16 = 3129;
/// Inside the view, on 127.0.0.1 and ::1: the DNS stub.
pub const DNS_PORT: u16 = 53;
/// The system account the policy point runs as (created by install.sh).
pub const ACCOUNT: &str = "agentuser-net";

/// Proxy variables for the agent's environment in `allowlist` mode (both spellings: curl
/// reads only the lowercase http_proxy, Go and others the uppercase).
pub fn agent_env() -> Vec<(String, Vec<u8>)> {
    let url = format!("http://127.0.0.1:{PROXY_PORT}");
    let mut env = Vec::new();
    for name in ["http_proxy", "https_proxy", "all_proxy"] {
        env.push((name.to_owned(), url.clone().into_bytes()));
        env.push((name.to_uppercase(), url.clone().into_bytes()));
    }
    for name in ["no_proxy", "NO_PROXY"] {
        env.push((name.to_owned(), b"localhost,127.0.0.1,::1".to_vec()));
    }
    env
}

/// The policy point account, checked: a system account that is neither root nor an agent.
pub fn account(ctx: &Context, record: &AgentRecord) -> Result<point::Account> {
    let user = nix::unistd::User::from_name(ACCOUNT)
        .with_context(|| format!("looking up {ACCOUNT}"))?
        .ok_or_else(|| {
            anyhow!("network allowlist: the system account {ACCOUNT} does not exist (install.sh creates it)")
        })?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    if uid == 0 || gid == 0 || uid == record.uid || ctx.config.uid_in_range(uid) {
        bail!(
            "network allowlist: {ACCOUNT} has uid {uid} gid {gid}: must be neither root nor an agent"
        );
    }
    Ok(point::Account { uid, gid })
}

/// A running policy point, from the runner's side. Dropping it kills it.
pub struct PolicyPoint {
    pid: Option<Pid>,
    agent: String,
    run: String,
    log_start: u64,
    /// The view's CA bundle (the system's plus the run's CA), with brokered secrets.
    ca_bundle: Option<std::path::PathBuf>,
    /// The filtered ssh-agent's socket, with ssh credentials (`cred ssh`).
    ssh_socket: Option<std::path::PathBuf>,
}

/// Starts the policy point of one run. Returns it and init's end of the socket over which
/// the agent's network namespace (or an error message) arrives.
pub fn start(
    ctx: &Context,
    record: &AgentRecord,
    publish: &[u16],
) -> Result<(PolicyPoint, OwnedFd)> {
    let account = account(ctx, record)?;
    let allowlist = Allowlist::from_record(&record.net_allow)
        .with_context(|| format!("agent '{}': allowlist", record.name))?;
    let localhost: Vec<u16> = allowlist
        .entries()
        .iter()
        .filter(|e| e.host == HostPattern::Localhost)
        .filter_map(|e| e.port)
        .collect();
    let (log_file, log_start) = log::open_for_run(ctx, &record.name)?;
    crate::leftovers::remove_dead_run_files(ctx, &record.name);
    let run = run_id(&record.name);
    let (to_init, init_end) = UnixStream::pair().context("socketpair")?;
    let shared = shared_state(ctx, record, &run, allowlist, log_file)?;
    let secrets = crate::creds::brokered(ctx, record)?;
    let (ca_in, broker) = if secrets.is_empty() {
        (None, None)
    } else {
        let (ca_in, ca_out) = UnixStream::pair().context("socketpair")?;
        (Some(ca_in), Some((secrets, OwnedFd::from(ca_out))))
    };
    // Opened as the owner while this process is still single-threaded.
    let (ssh, ssh_socket) = match crate::broker::ssh::prepare(ctx, record, &run)? {
        Some((agent, socket, warnings)) => {
            for warning in warnings {
                eprintln!("agentuser: warning: {warning}");
            }
            (Some(agent), Some(socket))
        }
        None => (None, None),
    };
    let init_end: OwnedFd = init_end.into();
    let pid = point::spawn(point::Setup {
        shared,
        account,
        localhost,
        publish: publish.to_vec(),
        to_init: to_init.into(),
        init_end: init_end.try_clone().context("dup")?,
        broker,
        ssh,
    })?;
    let mut point = PolicyPoint {
        pid: Some(pid),
        agent: record.name.clone(),
        run,
        log_start,
        ca_bundle: None,
        ssh_socket,
    };
    if let Some(ca_in) = ca_in {
        point.ca_bundle = Some(trust::write_bundle(ctx, &point.run, ca_in)?);
    }
    Ok((point, init_end))
}

/// The run's id, `NAME.PID-SECS`: named after the agent, so run files a killed runner
/// leaves go with the agent (leftovers).
fn run_id(agent: &str) -> String {
    format!(
        "{agent}.{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    )
}

/// What the policy point's connections share: the allowlist, the stub's names, the
/// upstream proxy, and where refusals go.
fn shared_state(
    ctx: &Context,
    record: &AgentRecord,
    run: &str,
    allowlist: Allowlist,
    log_file: std::fs::File,
) -> Result<proxy::Shared> {
    let upstream = match ctx.config.upstream_proxy.as_str() {
        "" => None,
        text => Some(upstream::parse_proxy(text).map_err(|e| anyhow!("upstream_proxy: {e}"))?),
    };
    let mut syslog_prefix = format!(
        "caller={} uid={} agent={}",
        ctx.caller.name, ctx.caller.uid, record.name
    );
    if ctx.caller.via_sudo {
        syslog_prefix.push_str(" via=sudo");
    }
    Ok(proxy::Shared {
        run: run.to_owned(),
        allowlist,
        names: dns::Names::default(),
        upstream,
        syslog_prefix,
        log: std::sync::Mutex::new(log_file),
        logged: AtomicU32::new(0),
        broker: None,
    })
}

impl PolicyPoint {
    /// Stops the policy point and returns the summary of what it refused.
    pub fn finish(mut self, ctx: &Context) -> Vec<String> {
        self.stop();
        let path = log::path(ctx, &self.agent);
        match std::fs::File::open(&path) {
            Ok(mut file) => log::summary(&mut file, self.log_start, &self.run, &self.agent),
            Err(_) => Vec::new(),
        }
    }

    /// The bind mount and variables that make the agent trust the run's CA, if it has one.
    /// With ssh credentials, also the filtered agent's socket (at its own path, under the
    /// registry that the view covers) and SSH_AUTH_SOCK.
    pub fn trust(&self) -> (Vec<crate::view::ViewMount>, Vec<(String, Vec<u8>)>) {
        let (mut mounts, mut env) = match &self.ca_bundle {
            Some(bundle) => trust::view(bundle),
            None => (Vec::new(), Vec::new()),
        };
        if let Some(socket) = &self.ssh_socket {
            mounts.push(crate::view::ViewMount {
                source: socket.clone(),
                target: socket.clone(),
                read_only: false,
            });
            let path = socket.as_os_str().as_encoded_bytes().to_vec();
            env.push(("SSH_AUTH_SOCK".to_owned(), path));
        }
        (mounts, env)
    }

    /// Kills the policy point without waiting for it: once the agent's pid namespace is
    /// empty nothing needs it, and it exits while the runner closes the PAM session and
    /// reaps init. Its pid stays reserved until [`Self::finish`] reaps it.
    pub fn kill(&self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(bundle) = self.ca_bundle.take() {
            let _ = std::fs::remove_file(bundle);
        }
        if let Some(socket) = self.ssh_socket.take() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for PolicyPoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// For a namespace with loopback only (`none` mode): its TCP connections do not pace
/// ([`netns::no_pacing`]). Call from inside the namespace.
pub fn no_pacing() {
    netns::no_pacing()
}

/// init's side: receives the namespace from the policy point and joins it.
pub fn join(channel: &Arc<OwnedFd>) -> Result<()> {
    use std::os::fd::AsFd;
    match crate::sys::net::recv_fd(channel.as_fd())? {
        Ok(ns) => nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("joining the agent's network namespace"),
        Err(message) if message.is_empty() => {
            bail!("network policy point: exited before it was ready")
        }
        Err(message) => bail!("{}", String::from_utf8_lossy(&message)),
    }
}
