//! Turns the probes' observations into findings with severities, and merges the two passes
//! so each finding says where the agent reached it (the runner's view, the host's, or both).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::findings::{Finding, Severity, View};
use super::network::UnixSocket;
use super::probes::{HomeScan, Observations};

/// What the privileged process knows about the sockets it handed to the probes.
pub struct SocketOwners {
    /// inode → (uid, command) of the process holding it.
    pub holders: BTreeMap<u64, (u32, String)>,
    /// path → uid owning the socket file.
    pub files: BTreeMap<String, u32>,
}

/// Groups whose membership is more access than an agent should have, with why.
const RISKY_GROUPS: &[(&str, Severity, &str)] = &[
    ("root", Severity::High, "group root owns system files"),
    (
        "sudo",
        Severity::High,
        "sudo rights per the default sudoers",
    ),
    ("wheel", Severity::High, "sudo/su rights on many systems"),
    ("admin", Severity::High, "sudo rights on older Ubuntu"),
    (
        "docker",
        Severity::High,
        "the docker socket is root-equivalent",
    ),
    ("lxd", Severity::High, "the lxd socket is root-equivalent"),
    (
        "incus-admin",
        Severity::High,
        "the incus socket is root-equivalent",
    ),
    (
        "libvirt",
        Severity::High,
        "can start VMs with host devices as root",
    ),
    ("disk", Severity::High, "raw access to block devices"),
    ("kmem", Severity::High, "reads kernel memory"),
    (
        "shadow",
        Severity::High,
        "reads password hashes in /etc/shadow",
    ),
    (
        "staff",
        Severity::High,
        "writes /usr/local (Debian), which root runs",
    ),
    (
        "input",
        Severity::High,
        "reads keyboards and mice (keylogging)",
    ),
    ("adm", Severity::Medium, "reads system logs"),
    (
        "systemd-journal",
        Severity::Medium,
        "reads the whole journal",
    ),
    ("tty", Severity::Medium, "writes other users' terminals"),
    ("kvm", Severity::Medium, "direct access to /dev/kvm"),
    ("lpadmin", Severity::Medium, "administers printers"),
];

/// Path sockets every local user is meant to reach.
const PUBLIC_SOCKETS: &[&str] = &[
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
    "/dev/log",
    "/run/systemd/journal/socket",
    "/run/systemd/journal/stdout",
    "/run/systemd/journal/dev-log",
    "/run/systemd/notify",
    "/run/systemd/userdb/io.systemd.DynamicUser",
    "/run/systemd/userdb/io.systemd.Multiplexer",
    "/run/systemd/io.system.ManagedOOM",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/run/avahi-daemon/socket",
    "/run/cups/cups.sock",
];

/// Sockets that amount to root.
const ROOT_SOCKETS: &[&str] = &[
    "docker.sock",
    "containerd.sock",
    "podman.sock",
    "crio.sock",
    "lxd/unix.socket",
    "incus/unix.socket",
    "libvirt-sock",
    "snapd.socket",
];

/// Findings of one pass (their `views` set to `view`).
pub fn pass_findings(
    obs: &Observations,
    view: View,
    agent_uid: u32,
    agent_gid: u32,
    owners: &SocketOwners,
) -> Vec<Finding> {
    let mut out = Vec::new();
    runner_identity(obs, view, agent_uid, &mut out);
    homes(obs, &mut out);
    writable(obs, agent_uid, &mut out);
    for socket in &obs.unix {
        if let Some(f) = unix_socket(socket, agent_uid, owners) {
            out.push(f);
        }
    }
    tcp_listeners(obs, agent_uid, &mut out);
    udp_listeners(obs, agent_uid, &mut out);
    held_groups(obs, agent_gid, &mut out);
    for note in &obs.truncated {
        out.push(Finding::new(Severity::Info, "bounded", "scan", note));
    }
    for f in &mut out {
        f.views = vec![view];
    }
    out
}

/// Whether the probe ran as the runner promises: as the agent, and in the view with
/// no_new_privs.
fn runner_identity(obs: &Observations, view: View, agent_uid: u32, out: &mut Vec<Finding>) {
    if view == View::View && !obs.no_new_privs {
        out.push(
            Finding::new(
                Severity::High,
                "no-new-privs",
                "runner",
                "the agent's view runs without no_new_privs: setuid programs gain privileges",
            )
            .fix("report this as a bug in agentuser"),
        );
    }
    if obs.uid != agent_uid {
        out.push(Finding::new(
            Severity::High,
            "identity",
            format!("uid {}", obs.uid),
            format!("the probe ran as uid {} instead of {agent_uid}", obs.uid),
        ));
    }
}

/// Loopback TCP services of other users that accepted the probe's connection.
fn tcp_listeners(obs: &Observations, agent_uid: u32, out: &mut Vec<Finding>) {
    for l in obs.tcp.iter().filter(|l| l.uid != agent_uid) {
        let mut f = Finding::new(
            Severity::High,
            "tcp-listener",
            l.label(),
            format!(
                "a loopback service of {} accepts the agent's connections",
                uid_word(l.uid)
            ),
        )
        .fix("run the agent with --network none (or network = \"none\" in the config)");
        if l.port == 22 {
            f.detail.push_str(
                "; with sshd the agent can log in to its own account with a key it puts in \
                 ~/.ssh/authorized_keys, outside agentuser's view",
            );
            f.fix = Some(
                "add `DenyGroups` or `DenyUsers agent-*` to /etc/ssh/sshd_config, and use \
                 --network none"
                    .into(),
            );
        }
        out.push(f);
    }
}

/// Loopback UDP services of other users the probe saw (and did not send to).
fn udp_listeners(obs: &Observations, agent_uid: u32, out: &mut Vec<Finding>) {
    for l in obs.udp.iter().filter(|l| l.uid != agent_uid) {
        out.push(
            Finding::new(
                Severity::Medium,
                "udp-listener",
                l.label(),
                format!(
                    "a loopback UDP service of {} is visible (not tested: that would send a datagram)",
                    uid_word(l.uid)
                ),
            )
            .fix("run the agent with --network none"),
        );
    }
}

/// The groups the probe held besides the agent's own.
fn held_groups(obs: &Observations, agent_gid: u32, out: &mut Vec<Finding>) {
    let mut gids: Vec<u32> = obs.groups.clone();
    gids.push(obs.gid);
    gids.sort_unstable();
    gids.dedup();
    for gid in gids.into_iter().filter(|&g| g != agent_gid) {
        out.push(group_finding(gid, "the probe held it"));
    }
}

/// A group the agent holds (measured) or will get at any login (from the group database).
pub fn group_finding(gid: u32, how: &str) -> Finding {
    let name = group_name(gid);
    let (severity, why) = RISKY_GROUPS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, s, w)| (*s, *w))
        .unwrap_or((Severity::Info, "a supplementary group"));
    Finding::new(
        severity,
        "group",
        &name,
        format!("member of group {name} ({how}): {why}"),
    )
    .fix(format!("gpasswd -d AGENT_USER {name}"))
}

/// What the probe reached in other users' homes.
fn homes(obs: &Observations, out: &mut Vec<Finding>) {
    for scan in &obs.homes {
        let home = scan.home.display().to_string();
        home_secrets(scan, &home, out);
        home_readable(scan, &home, out);
        home_writable(scan, &home, out);
    }
}

/// Secret-looking files the agent reads in a home (listed, then counted).
fn home_secrets(scan: &HomeScan, home: &str, out: &mut Vec<Finding>) {
    for secret in &scan.secrets {
        out.push(
            Finding::new(
                Severity::High,
                "readable-secret",
                secret.path.display().to_string(),
                format!("{} readable by the agent", secret.kind),
            )
            .fix(format!(
                "chmod 0600 the file and chmod 0750 {home}; give the agent a copy with \
                 `agentuser cred add` if it needs it"
            )),
        );
    }
    let more = scan.secrets_total.saturating_sub(scan.secrets.len() as u64);
    if more > 0 {
        out.push(Finding::new(
            Severity::High,
            "readable-secret",
            format!("{home}/..."),
            format!("{more} more secret-looking files readable"),
        ));
    }
}

/// Other files the agent reads in a home, or (when it reads none) that it lists the names.
fn home_readable(scan: &HomeScan, home: &str, out: &mut Vec<Finding>) {
    let examples: Vec<String> = scan
        .examples
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if scan.readable_files > scan.secrets_total {
        out.push(
            Finding::new(
                Severity::Medium,
                "readable-files",
                home,
                format!(
                    "{} readable files{}",
                    scan.readable_files,
                    if examples.is_empty() {
                        String::new()
                    } else {
                        format!(", e.g. {}", examples.join(", "))
                    }
                ),
            )
            .fix(format!("chmod 0750 {home} (or 0700)")),
        );
    } else if scan.listable && scan.readable_files == 0 {
        out.push(
            Finding::new(
                Severity::Info,
                "listable-home",
                home,
                "file names are visible, no file is readable",
            )
            .fix(format!("chmod 0750 {home}")),
        );
    }
}

/// Paths the agent writes inside a home (listed, then counted).
fn home_writable(scan: &HomeScan, home: &str, out: &mut Vec<Finding>) {
    for path in &scan.writable {
        out.push(Finding::new(
            Severity::High,
            "writable",
            path.display().to_string(),
            "writable by the agent inside another user's home",
        ));
    }
    let more = scan
        .writable_total
        .saturating_sub(scan.writable.len() as u64);
    if more > 0 {
        out.push(Finding::new(
            Severity::High,
            "writable",
            format!("{home}/..."),
            format!("{more} more writable paths"),
        ));
    }
}

fn writable(obs: &Observations, agent_uid: u32, out: &mut Vec<Finding>) {
    for w in &obs.writable {
        let path = w.path.display().to_string();
        let sticky_shared = w.dir && w.mode & 0o1002 == 0o1002;
        let f = if sticky_shared {
            Finding::new(
                Severity::Medium,
                "writable",
                &path,
                "world-writable sticky directory shared with other users (file squatting)",
            )
        } else if w.owner == agent_uid {
            Finding::new(
                Severity::Medium,
                "writable",
                &path,
                "owned by the agent outside its home",
            )
        } else {
            Finding::new(
                Severity::High,
                "writable",
                &path,
                format!(
                    "writable by the agent ({} of {}, mode {:04o})",
                    if w.dir { "directory" } else { "file" },
                    uid_word(w.owner),
                    w.mode
                ),
            )
        };
        out.push(f);
    }
    let more = obs.writable_total.saturating_sub(obs.writable.len() as u64);
    if more > 0 {
        out.push(Finding::new(
            Severity::Medium,
            "writable",
            "(more)",
            format!("{more} more writable paths not listed"),
        ));
    }
}

fn unix_socket(socket: &UnixSocket, agent_uid: u32, owners: &SocketOwners) -> Option<Finding> {
    let holder = owners.holders.get(&socket.inode);
    let owner = holder
        .map(|(uid, _)| *uid)
        .or_else(|| owners.files.get(&socket.name).copied());
    if owner == Some(agent_uid) {
        return None;
    }
    let who = match holder {
        Some((uid, comm)) => format!("{comm} ({})", uid_word(*uid)),
        None => owner.map(uid_word).unwrap_or_else(|| "unknown".into()),
    };
    let kind = socket.kind_word();
    if socket.is_abstract() {
        return Some(
            Finding::new(
                Severity::High,
                "abstract-socket",
                &socket.name,
                format!("abstract {kind} socket of {who} accepts the agent's connections"),
            )
            .fix("run the agent with --network none (abstract sockets belong to the network namespace)"),
        );
    }
    let path = socket.name.as_str();
    let (severity, why) = if PUBLIC_SOCKETS.contains(&path) {
        (Severity::Info, "a system service meant for every user")
    } else if ROOT_SOCKETS.iter().any(|s| path.ends_with(s)) {
        (Severity::High, "root-equivalent container/VM manager")
    } else if [
        "/home/",
        "/root/",
        "/run/user/",
        "/tmp/",
        "/var/tmp/",
        "/dev/shm/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
    {
        (
            Severity::High,
            "a user's private socket (agent, session bus, X11, IDE)",
        )
    } else {
        (Severity::Medium, "a service socket")
    };
    Some(Finding::new(
        severity,
        "unix-socket",
        path,
        format!("{kind} socket of {who} accepts the agent's connections: {why}"),
    ))
}

/// Merges findings of several passes: one finding per (category, subject), with the union
/// of views and the highest severity.
pub fn merge(findings: Vec<Finding>) -> Vec<Finding> {
    let mut merged: BTreeMap<(String, String), Finding> = BTreeMap::new();
    for f in findings {
        let key = (f.category.clone(), f.subject.clone());
        match merged.get_mut(&key) {
            Some(existing) => {
                for v in f.views {
                    if !existing.views.contains(&v) {
                        existing.views.push(v);
                    }
                }
                existing.views.sort();
                existing.severity = existing.severity.min(f.severity);
            }
            None => {
                merged.insert(key, f);
            }
        }
    }
    merged.into_values().collect()
}

pub fn uid_word(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

pub fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => gid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::network::{Listener, Proto};
    use crate::audit::probes::{HomeScan, Secret, Writable};

    const AGENT: u32 = 1_900_000_000;

    fn severity_of(findings: &[Finding], subject: &str) -> Option<Severity> {
        findings
            .iter()
            .find(|f| f.subject == subject)
            .map(|f| f.severity)
    }

    /// A pass that reached a secret and other files in a home, a sticky and a plain
    /// world-writable directory, public, root-equivalent, private and own sockets, and a
    /// root's and an own loopback port; it held no_new_privs.
    fn reached_observations() -> Observations {
        let socket = |name: &str, inode| UnixSocket {
            name: name.into(),
            kind: crate::sys::socket::STREAM,
            inode,
        };
        Observations {
            uid: AGENT,
            gid: AGENT,
            no_new_privs: true,
            homes: vec![HomeScan {
                home: "/home/alice".into(),
                listable: true,
                entries: 3,
                readable_files: 5,
                secrets: vec![Secret {
                    path: "/home/alice/.netrc".into(),
                    kind: "netrc credentials".into(),
                }],
                secrets_total: 1,
                ..HomeScan::default()
            }],
            writable: vec![
                Writable {
                    path: "/tmp".into(),
                    owner: 0,
                    mode: 0o1777,
                    dir: true,
                },
                Writable {
                    path: "/usr/local/bin".into(),
                    owner: 0,
                    mode: 0o777,
                    dir: true,
                },
            ],
            unix: vec![
                socket("/run/dbus/system_bus_socket", 1),
                socket("/run/docker.sock", 2),
                socket("/run/user/1000/bus", 3),
                socket("/home/agent/own.sock", 4),
                socket("@/tmp/.X11-unix/X0", 5),
            ],
            tcp: vec![
                Listener {
                    proto: Proto::Tcp,
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 5432,
                    uid: 0,
                },
                Listener {
                    proto: Proto::Tcp,
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 8000,
                    uid: AGENT,
                },
            ],
            ..Observations::default()
        }
    }

    #[test]
    fn severities_follow_what_was_reached() {
        let obs = reached_observations();
        let owners = SocketOwners {
            holders: [(4, (AGENT, "agent".to_string()))].into_iter().collect(),
            files: BTreeMap::new(),
        };
        let f = pass_findings(&obs, View::View, AGENT, AGENT, &owners);
        assert!(f.iter().all(|f| f.views == [View::View]));
        assert_eq!(severity_of(&f, "/home/alice/.netrc"), Some(Severity::High));
        assert_eq!(severity_of(&f, "/home/alice"), Some(Severity::Medium));
        assert_eq!(severity_of(&f, "/tmp"), Some(Severity::Medium));
        assert_eq!(severity_of(&f, "/usr/local/bin"), Some(Severity::High));
        assert_eq!(
            severity_of(&f, "/run/dbus/system_bus_socket"),
            Some(Severity::Info)
        );
        assert_eq!(severity_of(&f, "/run/docker.sock"), Some(Severity::High));
        assert_eq!(severity_of(&f, "/run/user/1000/bus"), Some(Severity::High));
        assert_eq!(severity_of(&f, "@/tmp/.X11-unix/X0"), Some(Severity::High));
        assert_eq!(severity_of(&f, "tcp 127.0.0.1:5432"), Some(Severity::High));
        // The agent's own socket and port are not findings.
        assert_eq!(severity_of(&f, "/home/agent/own.sock"), None);
        assert_eq!(severity_of(&f, "tcp 127.0.0.1:8000"), None);
        // no_new_privs held: no finding about it.
        assert!(!f.iter().any(|f| f.category == "no-new-privs"));
    }

    #[test]
    fn merge_unions_views_and_keeps_the_worst_severity() {
        let a = Finding::new(Severity::Medium, "x", "s", "d").in_views(&[View::Host]);
        let b = Finding::new(Severity::High, "x", "s", "d").in_views(&[View::View]);
        let c = Finding::new(Severity::Info, "x", "other", "d").in_views(&[View::View]);
        let merged = merge(vec![a, b, c]);
        assert_eq!(merged.len(), 2);
        let s = merged.iter().find(|f| f.subject == "s").unwrap();
        assert_eq!(s.views, [View::View, View::Host]);
        assert_eq!(s.severity, Severity::High);
    }
}
