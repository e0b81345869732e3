//! The policy point process: one per run, forked by the runner before the view is built.
//!
//! ```text
//! runner (root)
//!  ├─ policy point (root only while it sets up, then agentuser-net; host network namespace,
//!  │   holding listeners that live in the agent's namespace)
//!  │   └─ publisher (only with --publish: agentuser-net, in the agent's namespace)
//!  └─ init ─ agent (joins the namespace the policy point made)
//! ```
//!
//! Set-up, as root: a new session (the caller's terminal signals never reach it), standard
//! streams on /dev/null, the `--publish` listeners bound on the host's 127.0.0.1; then a new
//! network namespace, configured ([`super::netns`]), the listeners bound inside it, and the
//! namespace handed to init over a unix socket; back to the host's namespace. Then, for good:
//! the account agentuser-net with no groups, no-new-privs, not dumpable, killed when the
//! runner dies (PR_SET_PDEATHSIG, set after the uid change that clears it), and a Landlock
//! domain that leaves it reading /etc and the system libraries only (for the resolver), no
//! writing anywhere and no binding of ports. Its log is a descriptor root opened for it.
//! The agent runs as another uid in another pid namespace: it can neither see, signal,
//! trace nor read it.
#![forbid(unsafe_code)]

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid, setsid};

use super::proxy::{self, Shared};
use super::{CAPTURE_PORT, DNS_PORT, PROXY_PORT};
use crate::sys::spawn::{dup_onto, exit_now, fork, reset_signals};

/// The unprivileged account the policy point runs as.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Everything the policy point needs, prepared by the runner.
pub struct Setup {
    pub shared: Shared,
    pub account: Account,
    /// Host loopback ports reachable inside the view (`localhost:PORT` entries).
    pub localhost: Vec<u16>,
    pub publish: Vec<u16>,
    /// The policy point's end of the socket to init (the namespace goes over it).
    pub to_init: OwnedFd,
    /// init's end, closed in the policy point.
    pub init_end: OwnedFd,
    /// Brokered secrets, and where the CA certificate goes to the runner.
    pub broker: Option<(crate::broker::Secrets, OwnedFd)>,
    /// The filtered ssh-agent (`cred ssh`): its socket and the owner's key source.
    pub ssh: Option<crate::broker::ssh::Agent>,
}

/// Listeners bound inside the agent's namespace.
struct Listeners {
    proxy: std::net::TcpListener,
    capture4: std::net::TcpListener,
    capture6: std::net::TcpListener,
    dns4: std::net::UdpSocket,
    dns6: std::net::UdpSocket,
    localhost: Vec<(std::net::TcpListener, u16)>,
    /// Reports of the packets the ruleset drops ([`super::nflog`]).
    refused: OwnedFd,
}

/// Forks the policy point; returns its pid.
pub fn spawn(setup: Setup) -> Result<Pid> {
    let runner = nix::unistd::getpid();
    match fork()? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let Setup {
                shared,
                account,
                localhost,
                publish,
                to_init,
                init_end,
                broker,
                ssh,
            } = setup;
            let mut shared = shared;
            drop(init_end);
            crate::sys::syslog::close();
            let mut keep = vec![to_init.as_raw_fd(), shared.log_fd()];
            keep.extend(broker.as_ref().map(|(_, fd)| fd.as_raw_fd()));
            keep.extend(ssh.iter().flat_map(|a| a.fds.iter().copied()));
            if crate::sys::net::close_all_except(&keep).is_err() {
                exit_now(1);
            }
            if let Some((secrets, ca_out)) = broker {
                shared.broker = Some(start_broker(secrets, ca_out));
            }
            match prepare(runner, account, &localhost, &publish, &to_init) {
                Ok(listeners) => {
                    drop(to_init);
                    serve(listeners, shared, ssh)
                }
                Err(err) => {
                    // init reports it and the run fails (125); nothing ran yet.
                    let message = format!("network policy point: {}", crate::error::one_line(&err));
                    let _ = nix::unistd::write(to_init.as_fd(), message.as_bytes());
                    exit_now(1)
                }
            }
        }
    }
}

/// The run's CA, made here so that its key is only ever in this process; its certificate
/// goes to the runner over `ca_out`, which then closes (EOF tells the runner it is all).
fn start_broker(secrets: crate::broker::Secrets, ca_out: OwnedFd) -> crate::broker::Broker {
    let Ok(authority) = crate::broker::ca::Authority::generate() else {
        // The runner reads an empty certificate and fails the run.
        exit_now(1)
    };
    let mut out = File::from(ca_out);
    if std::io::Write::write_all(&mut out, authority.certificate_pem().as_bytes()).is_err() {
        exit_now(1);
    }
    drop(out);
    secrets.lock_in_memory();
    crate::broker::Broker { secrets, authority }
}

fn prepare(
    runner: Pid,
    account: Account,
    localhost: &[u16],
    publish: &[u16],
    to_init: &OwnedFd,
) -> Result<Listeners> {
    reset_signals()?;
    setsid().context("setsid")?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("/dev/null")?;
    for fd in 0..=2 {
        dup_onto(null.as_fd(), fd)?;
    }
    let published = publish
        .iter()
        .map(|&port| {
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .with_context(|| format!("--publish {port}: 127.0.0.1:{port} on the host"))
                .map(|l| (l, port))
        })
        .collect::<Result<Vec<_>>>()?;
    let host_ns = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    unshare(CloneFlags::CLONE_NEWNET).context("creating the network namespace")?;
    super::netns::configure()?;
    let listeners = bind_listeners(localhost)?;
    let agent_ns = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    crate::sys::net::send_fd(to_init.as_fd(), agent_ns.as_fd())?;
    if !published.is_empty() {
        spawn_publisher(account, published)?;
    }
    drop(agent_ns);
    setns(host_ns.as_fd(), CloneFlags::CLONE_NEWNET).context("returning to the host network")?;
    drop(host_ns);
    crate::sys::syslog::open();
    drop_privileges(account, runner)?;
    Ok(listeners)
}

fn bind_listeners(localhost: &[u16]) -> Result<Listeners> {
    let v4 = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = |port| SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let tcp = |addr: SocketAddr| {
        std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))
    };
    let udp = |addr: SocketAddr| {
        std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))
    };
    let mut forwards = Vec::new();
    for &port in localhost {
        if [PROXY_PORT, CAPTURE_PORT, DNS_PORT].contains(&port) {
            bail!("localhost:{port}: that port is the policy point's own in the view");
        }
        forwards.push((tcp(v4(port))?, port));
    }
    Ok(Listeners {
        proxy: tcp(v4(PROXY_PORT))?,
        capture4: tcp(v4(CAPTURE_PORT))?,
        capture6: tcp(v6(CAPTURE_PORT))?,
        dns4: udp(v4(DNS_PORT))?,
        dns6: udp(v6(DNS_PORT))?,
        localhost: forwards,
        refused: super::nflog::open()?,
    })
}

/// The unprivileged identity, for good, and the fences around it.
fn drop_privileges(account: Account, parent: Pid) -> Result<()> {
    crate::sys::process::drop_for_good(account.uid, account.gid)
        .context("the policy point's privilege drop")?;
    // The uid change cleared the parent-death signal: set it again, then make sure the
    // parent did not die in between.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid() != parent {
        bail!("the runner is gone");
    }
    confine()
}

/// Landlock: read-only access to what the resolver reads (/etc, the libraries NSS loads,
/// resolv.conf's real directory), no writing, no binding of TCP ports, no abstract sockets
/// outside the domain.
fn confine() -> Result<()> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
        RulesetCreatedAttr, Scope, path_beneath_rules,
    };
    let abi = ABI::V6;
    let mut readable = vec![
        "/etc".to_owned(),
        "/usr".to_owned(),
        "/lib".to_owned(),
        "/lib64".to_owned(),
    ];
    if let Ok(real) = std::fs::canonicalize("/etc/resolv.conf") {
        if let Some(dir) = real.parent() {
            readable.push(dir.display().to_string());
        }
    }
    readable.retain(|p| std::path::Path::new(p).exists());
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp)?
        // Not Scope::Signal: it would also stop the kernel's parent-death signal from the
        // policy point to its publisher, which then outlived the run.
        .scope(Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules(&readable, AccessFs::from_read(abi)))?
        .restrict_self()
        .context("Landlock")?;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
    {
        Ok(rt) => rt,
        Err(_) => exit_now(1),
    }
}

fn serve(listeners: Listeners, shared: Shared, ssh: Option<crate::broker::ssh::Agent>) -> ! {
    let shared = Arc::new(shared);
    if let Some(agent) = ssh {
        let log_to = shared.clone();
        let log = Arc::new(move |why: String| {
            log_to.refuse("ssh-agent", "ssh-agent".into(), why, None);
        });
        if crate::broker::ssh::serve(agent, log).is_err() {
            exit_now(1);
        }
    }
    runtime().block_on(async move {
        let tcp = |l: std::net::TcpListener| {
            l.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
        };
        let udp = |s: std::net::UdpSocket| {
            s.set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(s))
        };
        let started = (|| -> std::io::Result<()> {
            tokio::spawn(proxy::serve_proxy(tcp(listeners.proxy)?, shared.clone()));
            tokio::spawn(proxy::serve_capture(
                tcp(listeners.capture4)?,
                shared.clone(),
                false,
            ));
            tokio::spawn(proxy::serve_capture(
                tcp(listeners.capture6)?,
                shared.clone(),
                true,
            ));
            tokio::spawn(proxy::serve_dns(udp(listeners.dns4)?, shared.clone()));
            tokio::spawn(proxy::serve_dns(udp(listeners.dns6)?, shared.clone()));
            super::nflog::serve(listeners.refused, shared.clone())?;
            for (listener, port) in listeners.localhost {
                let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                tokio::spawn(proxy::serve_forward(tcp(listener)?, target));
            }
            Ok(())
        })();
        if started.is_err() {
            exit_now(1);
        }
        std::future::pending::<()>().await;
    });
    exit_now(0)
}

/// `--publish`: a process in the agent's namespace that accepts on the host's 127.0.0.1:PORT
/// and connects to 127.0.0.1:PORT in the view.
fn spawn_publisher(account: Account, published: Vec<(std::net::TcpListener, u16)>) -> Result<()> {
    let point = nix::unistd::getpid();
    match fork()? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            if drop_privileges(account, point).is_err() {
                exit_now(1);
            }
            runtime().block_on(async move {
                for (listener, port) in published {
                    if listener.set_nonblocking(true).is_err() {
                        exit_now(1);
                    }
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        exit_now(1);
                    };
                    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    tokio::spawn(proxy::serve_forward(listener, target));
                }
                std::future::pending::<()>().await;
            });
            exit_now(0)
        }
    }
}
