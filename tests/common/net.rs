//! A fake internet for network tests: the sandbox's commands run in a network namespace of
//! the test's own ("the host"), joined by a veth pair to a second namespace that plays the
//! internet: a DNS server, HTTP, HTTPS and plain TCP servers. Nothing else is reachable
//! from either namespace: they have no other interface and no route anywhere else.
//!
//! The internet's addresses look public (11.22.33.0/24, 2a0f:77::/64) on purpose: the policy
//! point refuses private answers for public names (DNS rebinding), which is one of the
//! things under test. They are assigned only inside these two namespaces, so traffic to them
//! never leaves the test.
//!
//! Reused by the credentials-broker tests (HTTPS server with a test CA, test sshd).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::Sandbox;

pub const HOST_V4: &str = "11.22.33.1";
pub const DNS_V4: &str = "11.22.33.2";
/// HTTP on 80 and 8080, and a line-echo TCP server on 2222.
pub const WEB_V4: &str = "11.22.33.3";
/// HTTPS on 443 (self-signed test certificate; any SNI accepted).
pub const TLS_V4: &str = "11.22.33.4";
pub const WEB_V6: &str = "2a0f:77::3";

/// The DNS server: answers from a table, logs every query name it receives.
const DNS_SERVER: &str = r#"
import json, socket, struct, sys
records = json.loads(sys.argv[1])
log = open(sys.argv[2], 'a', buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 53))
print('ready', flush=True)
def name_at(data, i):
    labels = []
    while data[i]:
        labels.append(data[i+1:i+1+data[i]].decode(errors='replace'))
        i += 1 + data[i]
    return '.'.join(labels).lower(), i + 1
while True:
    data, peer = s.recvfrom(4096)
    try:
        name, end = name_at(data, 12)
        qtype = struct.unpack('!H', data[end:end+2])[0]
    except Exception:
        continue
    log.write('%s %d\n' % (name, qtype))
    answers = b''
    count = 0
    for addr in records.get(name, []):
        if qtype == 1 and ':' not in addr:
            answers += b'\xc0\x0c' + struct.pack('!HHIH', 1, 1, 30, 4) + socket.inet_aton(addr)
            count += 1
        if qtype == 16 and addr.startswith('txt:'):
            t = addr[4:].encode()
            answers += b'\xc0\x0c' + struct.pack('!HHIH', 16, 1, 30, len(t) + 1) + bytes([len(t)]) + t
            count += 1
    rcode = 0 if name in records else 3
    head = data[:2] + struct.pack('!HHHHH', 0x8180 | rcode, 1, count, 0, 0)
    s.sendto(head + data[12:end+4] + answers, peer)
"#;

/// HTTP (and HTTPS with a certificate) answering `hello from HOST PORT` to every GET.
const WEB_SERVER: &str = r#"
import http.server, socket, ssl, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
cert = sys.argv[3] if len(sys.argv) > 3 else None
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith('/big/'):
            n = int(self.path[5:])
            self.send_response(200); self.send_header('Content-Length', str(n)); self.end_headers()
            chunk = b'x' * 65536
            while n > 0:
                self.wfile.write(chunk[:min(n, 65536)]); n -= 65536
            return
        body = ('hello from %s %d host=%s\n' % (addr, port, self.headers.get('Host'))).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ':' in addr else socket.AF_INET
    allow_reuse_address = True
srv = S((addr, port), H)
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('ready', flush=True)
srv.serve_forever()
"#;

const ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print('ready', flush=True)
def serve(c):
    c.sendall(b'banner\n')
    f = c.makefile('rb')
    for line in f:
        c.sendall(b'echo ' + line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

pub struct FakeInternet {
    /// Holders of the two namespaces (sleep processes), then the servers.
    children: Vec<Child>,
    pub host_ns: String,
    pub internet_ns: String,
    /// Every query name the internet's DNS server received (`name qtype` lines).
    pub dns_log: std::path::PathBuf,
}

fn holder() -> Child {
    Command::new("unshare")
        .args(["--net", "--", "sleep", "3600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare --net")
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("spawning");
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_in(ns: &str, args: &[&str]) {
    let net = format!("--net={ns}");
    let mut argv = vec!["nsenter", &net, "--", "ip"];
    argv.extend_from_slice(args);
    run(&argv);
}

/// The pid and uid of this sandbox's policy point. Every sandbox runs its points as the
/// same agentuser-net uid, and tests run at the same time: this sandbox's own is the
/// process of that uid whose command line starts with this sandbox's binary.
pub fn policy_point(sb: &Sandbox) -> (i32, u32) {
    let uid: u32 = sb
        .sh("id -u agentuser-net")
        .ok()
        .stdout
        .trim()
        .parse()
        .unwrap();
    let ids = format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}");
    for _ in 0..200 {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let ours = cmdline
                .split(|&b| b == 0)
                .next()
                .is_some_and(|argv0| argv0 == sb.bin.as_os_str().as_encoded_bytes());
            if status.contains(&ids) && status.contains("Name:\tagentuser") && ours {
                return (pid, uid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("no policy point found");
}

impl FakeInternet {
    /// Builds both namespaces, points the sandbox's resolver at the fake DNS server and
    /// makes every sandbox command run in the host namespace. `records` maps names to
    /// addresses (or `txt:TEXT`).
    pub fn start(sb: &Sandbox, records: &[(&str, &[&str])]) -> FakeInternet {
        let host = holder();
        let internet = holder();
        let host_ns = format!("/proc/{}/ns/net", host.id());
        let internet_ns = format!("/proc/{}/ns/net", internet.id());
        let mut net = FakeInternet {
            children: vec![host, internet],
            host_ns: host_ns.clone(),
            internet_ns: internet_ns.clone(),
            dns_log: sb.dir.join("dns-queries.log"),
        };
        // The namespace files exist once unshare has run; wait for them to differ.
        for _ in 0..200 {
            let a = std::fs::read_link(&host_ns).ok();
            let b = std::fs::read_link(&internet_ns).ok();
            let mine = std::fs::read_link("/proc/self/ns/net").ok();
            if a.is_some() && b.is_some() && a != b && a != mine && b != mine {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let inside = |ns: &str, script: &str| {
            run(&[
                "nsenter",
                &format!("--net={ns}"),
                "--",
                "/bin/sh",
                "-ec",
                script,
            ]);
        };
        let internet_pid = net.children[1].id().to_string();
        inside(
            &host_ns,
            &format!(
                "ip link set lo up
                 ip link add vh type veth peer name vi
                 ip link set vi netns {internet_pid}
                 ip addr add {HOST_V4}/24 dev vh
                 ip -6 addr add 2a0f:77::1/64 dev vh nodad
                 ip link set vh up"
            ),
        );
        inside(
            &internet_ns,
            &format!(
                "ip link set lo up
                 ip addr add {DNS_V4}/24 dev vi
                 ip addr add {WEB_V4}/24 dev vi
                 ip addr add {TLS_V4}/24 dev vi
                 ip -6 addr add 2a0f:77::2/64 dev vi nodad
                 ip -6 addr add {WEB_V6}/64 dev vi nodad
                 ip link set vi up"
            ),
        );
        let etc = sb.dir.join("etc");
        let _ = std::fs::remove_file(etc.join("resolv.conf"));
        std::fs::write(etc.join("resolv.conf"), format!("nameserver {DNS_V4}\n")).unwrap();
        let nss = std::fs::read_to_string(etc.join("nsswitch.conf")).unwrap_or_default();
        let nss: String = nss
            .lines()
            .filter(|l| !l.starts_with("hosts:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(etc.join("nsswitch.conf"), nss + "hosts: files dns\n").unwrap();

        let table: std::collections::BTreeMap<&str, &[&str]> = records.iter().copied().collect();
        let json = serde_json::to_string(&table).unwrap();
        let log = net.dns_log.display().to_string();
        net.serve(&["python3", "-c", DNS_SERVER, &json, &log, DNS_V4]);
        let cert = sb.dir.join("test-cert.pem").display().to_string();
        run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fake-internet",
            "-keyout",
            &cert,
            "-out",
            &cert,
        ]);
        net.serve(&["python3", "-c", WEB_SERVER, WEB_V4, "80"]);
        net.serve(&["python3", "-c", WEB_SERVER, WEB_V4, "8080"]);
        net.serve(&["python3", "-c", WEB_SERVER, WEB_V6, "80"]);
        net.serve(&["python3", "-c", WEB_SERVER, TLS_V4, "443", &cert]);
        net.serve(&["python3", "-c", ECHO_SERVER, WEB_V4, "2222"]);
        *sb.net_ns.borrow_mut() = Some(host_ns);
        net
    }

    /// Starts a server in the internet namespace and waits until it says `ready`.
    pub fn serve(&mut self, argv: &[&str]) {
        self.spawn_in(&self.internet_ns.clone(), argv);
    }

    /// Starts a server in the host namespace (outside the sandbox's mount namespace, as
    /// root) and waits until it says `ready`.
    pub fn serve_on_host(&mut self, argv: &[&str]) {
        self.spawn_in(&self.host_ns.clone(), argv);
    }

    fn spawn_in(&mut self, ns: &str, argv: &[&str]) {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "{argv:?} did not start");
        self.children.push(child);
    }

    /// Runs `ip ARGS` in the internet's namespace (say, an address for one more server).
    pub fn internet_ip(&self, args: &[&str]) {
        ip_in(&self.internet_ns, args);
    }

    /// Runs `ip ARGS` in the host namespace, the one the sandbox's commands run in.
    pub fn host_ip(&self, args: &[&str]) {
        ip_in(&self.host_ns, args);
    }

    /// The names the internet's DNS server was asked for so far.
    pub fn dns_queries(&self) -> String {
        std::fs::read_to_string(&self.dns_log).unwrap_or_default()
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
