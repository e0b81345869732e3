//! Sockets the agent might reach: unix sockets (path and abstract) from /proc/net/unix and
//! TCP/UDP listeners from /proc/net/{tcp,tcp6,udp,udp6}, plus the connect tests that decide
//! whether the agent actually reaches them. A connect test sends nothing.
//!
//! /proc/net shows the network namespace of the reader. So the privileged process reads the
//! host's lists once and hands them to the probe as candidates; the probe adds what its own
//! namespace shows and connects to each. A path socket is reached through the file system
//! and works across network namespaces; abstract sockets and loopback ports do not.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sys::socket as sock;

/// Flag of a listening stream/seqpacket socket in /proc/net/unix (`__SO_ACCEPTCON`).
const ACCEPTCON: u32 = 0x0001_0000;
/// How long a TCP connect test may wait (loopback answers in microseconds; a full backlog
/// or a filtering rule must not stall the audit).
const TCP_TIMEOUT: Duration = Duration::from_millis(300);
/// Most unix sockets tested per pass (each test is one non-blocking connect).
pub const MAX_UNIX_TESTS: usize = 4096;
/// Most loopback TCP ports tested per pass (each may wait up to TCP_TIMEOUT).
pub const MAX_TCP_TESTS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnixSocket {
    /// The path, or `@name` for an abstract socket (NULs shown as `@`, as the kernel does).
    pub name: String,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: i32,
    pub inode: u64,
}

impl UnixSocket {
    pub fn is_abstract(&self) -> bool {
        self.name.starts_with('@')
    }

    pub fn kind_word(&self) -> &'static str {
        match self.kind {
            sock::STREAM => "stream",
            sock::DGRAM => "dgram",
            sock::SEQPACKET => "seqpacket",
            _ => "unix",
        }
    }
}

/// Named unix sockets that accept connections (listening stream/seqpacket sockets and bound
/// datagram receivers), deduplicated by name and type.
pub fn parse_unix(text: &str) -> Vec<UnixSocket> {
    let mut found = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (
            Some(_num),
            Some(_refs),
            Some(_proto),
            Some(flags),
            Some(kind),
            Some(_st),
            Some(inode),
        ) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        )
        else {
            continue;
        };
        // The path is the rest of the line after the seventh field (it may contain spaces).
        let Some(name) = line
            .find(&format!(" {inode} "))
            .map(|i| line[i + inode.len() + 2..].trim_start().to_string())
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let (Ok(flags), Ok(kind), Ok(inode)) = (
            u32::from_str_radix(flags, 16),
            i32::from_str_radix(kind, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let listening = match kind {
            sock::STREAM | sock::SEQPACKET => flags & ACCEPTCON != 0,
            // Autobound client names are five hex digits; they receive only replies.
            sock::DGRAM => !is_autobind(&name),
            _ => false,
        };
        if listening {
            found
                .entry((name.clone(), kind))
                .or_insert(UnixSocket { name, kind, inode });
        }
    }
    found.into_values().collect()
}

fn is_autobind(name: &str) -> bool {
    name.strip_prefix('@')
        .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Connect test of a unix socket, as the current (agent) identity.
pub fn reaches_unix(socket: &UnixSocket) -> bool {
    match socket.name.strip_prefix('@') {
        // The kernel shows NUL bytes inside abstract names as '@'; map them back.
        Some(abstract_name) => {
            let bytes: Vec<u8> = abstract_name
                .bytes()
                .map(|b| if b == b'@' { 0 } else { b })
                .collect();
            sock::connect_unix(&bytes, true, socket.kind).is_ok()
        }
        None => sock::connect_unix(socket.name.as_bytes(), false, socket.kind).is_ok(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub uid: u32,
}

impl Listener {
    /// The address a local connect test targets: wildcard listeners answer on loopback.
    pub fn target(&self) -> SocketAddr {
        let ip = match self.addr {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.port)
    }

    /// Bound to loopback or to every address (so reachable over loopback).
    pub fn on_loopback(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_loopback() || a.is_unspecified(),
            IpAddr::V6(a) => {
                a.is_loopback()
                    || a.is_unspecified()
                    || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }

    pub fn label(&self) -> String {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        format!("{proto} {}", SocketAddr::new(self.addr, self.port))
    }
}

/// Listening TCP sockets or unconnected bound UDP sockets from one /proc/net file.
pub fn parse_inet(text: &str, proto: Proto) -> Vec<Listener> {
    // TCP_LISTEN is 0A; an unconnected UDP socket shows TCP_CLOSE (07).
    let wanted_state = match proto {
        Proto::Tcp => "0A",
        Proto::Udp => "07",
    };
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[3] != wanted_state {
            continue;
        }
        let (Some((addr, port)), Ok(uid)) = (parse_endpoint(f[1]), f[7].parse::<u32>()) else {
            continue;
        };
        // A UDP socket with a peer is a client, not a service.
        if proto == Proto::Udp && parse_endpoint(f[2]).is_none_or(|(_, p)| p != 0) {
            continue;
        }
        found.push(Listener {
            proto,
            addr,
            port,
            uid,
        });
    }
    found
}

/// `0100007F:1F90` or the 32-digit IPv6 form. The kernel prints each 32-bit word of the
/// address (network byte order in memory) as a native-endian number.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Every listener this process's network namespace shows.
pub fn read_listeners() -> Vec<Listener> {
    let mut all = Vec::new();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            all.extend(parse_inet(&text, proto));
        }
    }
    all.sort();
    all.dedup();
    all
}

/// Every named unix socket this process's network namespace shows.
pub fn read_unix_sockets() -> Vec<UnixSocket> {
    std::fs::read_to_string("/proc/net/unix")
        .map(|t| parse_unix(&t))
        .unwrap_or_default()
}

/// TCP connect test; nothing is sent, the connection is closed at once.
pub fn reaches_tcp(listener: &Listener) -> bool {
    TcpStream::connect_timeout(&listener.target(), TCP_TIMEOUT).is_ok()
}

/// Which process holds each socket inode: (uid, command name). Needs root to read other
/// users' /proc/PID/fd; bounded by the number of processes.
pub fn socket_holders(inodes: &[u64]) -> BTreeMap<u64, (u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let wanted: std::collections::BTreeSet<u64> = inodes.iter().copied().collect();
    let mut holders = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let dir = entry.path();
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) && !holders.contains_key(&inode) {
                let uid = std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(u32::MAX);
                let comm = std::fs::read_to_string(dir.join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                holders.insert(inode, (uid, comm));
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn unix_table() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/dbus/system_bus_socket
0000000000000000: 00000002 00000000 00010000 0001 01 1002 @/tmp/.X11-unix/X0
0000000000000000: 00000003 00000000 00000000 0001 03 1003 /run/dbus/system_bus_socket
0000000000000000: 00000002 00000000 00000000 0002 01 1004 /dev/log
0000000000000000: 00000002 00000000 00000000 0002 01 1005 @0001f
0000000000000000: 00000002 00000000 00000000 0001 03 1006
0000000000000000: 00000002 00000000 00010000 0005 01 1007 /run/with space.sock
";
        let names: Vec<(String, i32)> = parse_unix(text)
            .into_iter()
            .map(|s| (s.name, s.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/dev/log".to_string(), sock::DGRAM),
                ("/run/dbus/system_bus_socket".to_string(), sock::STREAM),
                ("/run/with space.sock".to_string(), sock::SEQPACKET),
                ("@/tmp/.X11-unix/X0".to_string(), sock::STREAM),
            ]
        );
    }

    #[test]
    fn inet_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 100 0 0 10 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0
";
        let l = parse_inet(tcp, Proto::Tcp);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(l[0].port, 8080);
        assert_eq!(l[0].uid, 0);
        assert!(l[1].on_loopback());
        assert_eq!(l[1].target(), "127.0.0.1:22".parse().unwrap());
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 5 1 0 100 0 0 10 0
";
        let l = parse_inet(tcp6, Proto::Tcp);
        assert_eq!(l[0].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(l[0].port, 3306);
        assert_eq!(l[0].uid, 107);
        assert_eq!(l[0].label(), "tcp [::1]:3306");
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 7 2 0 0
  2: 0100007F:0036 0100007F:0035 01 00000000:00000000 00:00000000 00000000   101        0 8 2 0 0
";
        let l = parse_inet(udp, Proto::Udp);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].port, 53);
        let not_loopback = Listener {
            addr: "192.168.1.2".parse().unwrap(),
            ..l[0].clone()
        };
        assert!(!not_loopback.on_loopback());
    }

    #[test]
    fn connect_tests_send_nothing_and_see_listeners() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let l = Listener {
            proto: Proto::Tcp,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            uid: 0,
        };
        assert!(reaches_tcp(&l));
        drop(listener);
        assert!(!reaches_tcp(&l));

        let name = format!("agentuser-audit-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let socket = read_unix_sockets()
            .into_iter()
            .find(|s| s.name == format!("@{name}"))
            .expect("abstract socket listed");
        assert!(reaches_unix(&socket));
        drop(server);
        assert!(!reaches_unix(&socket));
    }
}
