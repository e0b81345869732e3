//! The allowlist network mode: every test performs the attack for real, as the agent's uid,
//! in a fake internet of the test's own (tests/common/net.rs), with a positive control in
//! `host` mode showing the attack works without the policy point.

mod common;

use common::net::{self, FakeInternet};
use common::{Out, Sandbox};

/// alice, her agent coder, and a fake internet whose DNS knows these names.
fn setup(name: &str) -> (Sandbox, FakeInternet) {
    let sb = Sandbox::new(name);
    sb.add_user("alice", &["agentuser"]);
    sb.as_user("alice", &["create", "coder"]).ok();
    let internet = FakeInternet::start(
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
    (sb, internet)
}

fn exec(sb: &Sandbox, mode: &str, script: &str) -> Out {
    sb.as_user(
        "alice",
        &[
            "exec",
            "coder",
            "--network",
            mode,
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    )
}

#[test]
fn smoke() {
    let (sb, _internet) = setup("net-smoke");
    sb.as_user("alice", &["net", "coder", "allow", "web.test"])
        .ok();
    let out = exec(
        &sb,
        "allowlist",
        "curl -sS -m 5 http://web.test/; curl -sS -m 5 --noproxy '*' http://web.test/; curl -sS -m 5 http://other.test/",
    );
    eprintln!("{out:#?}");
    let log = sb.as_user("alice", &["net", "coder", "log"]);
    eprintln!("{log:#?}");
    panic!();
}

#[test]
fn smoke2() {
    let (sb, _internet) = setup("net-smoke2");
    sb.as_user("alice", &["net", "coder", "allow", "web.test"])
        .ok();
    let q = r#"
import socket,struct
q=b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x04test\x00\x00\x01\x00\x01'
for dst in ['127.0.0.1','11.22.33.2']:
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(q,(dst,53))
    try: print(dst, s.recvfrom(512))
    except Exception as e: print(dst, e)
"#;
    let out = exec(
        &sb,
        "allowlist",
        &format!(
            "python3 -c \"{}\"; cat /etc/resolv.conf; getent hosts web.test; ip route; ip addr",
            q.replace('"', "\\\"")
        ),
    );
    eprintln!("{out:#?}");
    panic!();
}
