//! audit and doctor against a deliberately leaky host in a hermetic sandbox.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Background, Sandbox};
use serde_json::Value;

/// Starts `script` under python3 as root inside the sandbox and waits for its first line.
fn python(sb: &Sandbox, script: &str) -> (Background, String) {
    let (helper, line) = Background::start(sb.command(&["python3", "-c", script]));
    (helper, line.trim().to_string())
}

struct LeakyHost {
    sb: Sandbox,
    port: String,
    abstract_name: String,
    _helpers: Vec<Background>,
}

/// An owner with a 0755 home holding a 0644 .netrc and a .bashrc exporting a key, a root
/// listener on 127.0.0.1, a root abstract socket, and an agent in group docker with a
/// NOPASSWD sudo rule.
fn leaky_host(name: &str) -> LeakyHost {
    let sb = Sandbox::new(name);
    // The host network, so the view reaches the host's loopback listener.
    sb.write_config("network = \"host\"");
    sb.add_user("alice", &[]);
    sb.sh(
        "printf 'machine example.com login alice password hunter2\\n' > /home/alice/.netrc
         printf 'export OPENAI_API_KEY=sk-test\\n' >> /home/alice/.bashrc
         chown alice:alice /home/alice/.netrc /home/alice/.bashrc
         chmod 0644 /home/alice/.netrc /home/alice/.bashrc
         groupadd docker",
    )
    .ok();
    sb.root(&["create", "coder", "--owner", "alice"]).ok();
    sb.sh("usermod -aG docker agent-coder
         printf 'agent-coder ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/agent
         chmod 0440 /etc/sudoers.d/agent")
        .ok();
    let (tcp, port) = python(
        &sb,
        "import socket,time\n\
         s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(64)\n\
         print(s.getsockname()[1], flush=True); time.sleep(900)",
    );
    let abstract_name = format!("agentuser-{name}-{}", std::process::id());
    let (unix, _) = python(
        &sb,
        &format!(
            "import socket,time\n\
             s=socket.socket(socket.AF_UNIX); s.bind('\\0{abstract_name}'); s.listen(64)\n\
             print('ready', flush=True); time.sleep(900)"
        ),
    );
    LeakyHost {
        sb,
        port,
        abstract_name: format!("@{abstract_name}"),
        _helpers: vec![tcp, unix],
    }
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().expect("findings array")
}

/// The finding for `subject` in `category`, if any.
fn finding<'a>(report: &'a Value, category: &str, subject: &str) -> Option<&'a Value> {
    findings(report)
        .iter()
        .find(|f| f["category"] == category && f["subject"] == subject)
}

fn reached_in(f: Option<&Value>, view: &str) -> bool {
    f.is_some_and(|f| {
        f["views"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == view))
    })
}

#[track_caller]
fn assert_high_in(report: &Value, category: &str, subject: &str, view: &str) {
    let f = finding(report, category, subject);
    assert!(
        reached_in(f, view) && f.unwrap()["severity"] == "high",
        "expected a high {category} finding for {subject} in the {view} view, got {f:?}\nin {report:#}"
    );
}

#[test]
fn audit_reports_what_each_view_reaches() {
    let host = leaky_host("audit-views");
    let sb = &host.sb;
    let out = sb.as_user("alice", &["audit", "coder", "--json"]);
    assert_eq!(out.code, 1, "{out:#?}");
    let report = out.json();
    let tcp = format!("tcp 127.0.0.1:{}", host.port);

    // The plain uid switch reaches all of it.
    for (category, subject) in [
        ("readable-secret", "/home/alice/.netrc"),
        ("readable-secret", "/home/alice/.bashrc"),
        ("tcp-listener", tcp.as_str()),
        ("abstract-socket", host.abstract_name.as_str()),
        ("group", "docker"),
    ] {
        assert_high_in(&report, category, subject, "host");
    }
    // The runner's view hides the homes but shares the host's network in host mode (rated
    // high itself), and the
    // account's own groups (here docker, granted by the admin) come along, as with login:
    // audit measures that rather than assumes it.
    assert_high_in(&report, "tcp-listener", &tcp, "view");
    assert_high_in(&report, "group", "docker", "view");
    for secret in ["/home/alice/.netrc", "/home/alice/.bashrc"] {
        assert!(
            !reached_in(finding(&report, "readable-secret", secret), "view"),
            "{secret} reachable in the view: {report:#}"
        );
    }
    assert!(report["passes"]["view"]["ok"] == true && report["passes"]["host"]["ok"] == true);
    assert_high_in(&report, "network", "network host", "view");
    // The sudoers rule is read by the privileged side; no-new-privs (measured in the view)
    // confines it to the host view.
    let sudo = finding(&report, "sudo", "/etc/sudoers.d/agent:1");
    assert!(
        reached_in(sudo, "host") && !reached_in(sudo, "view"),
        "{report:#}"
    );
    assert_eq!(sudo.unwrap()["severity"], "high");
    assert!(
        finding(&report, "no-new-privs", "runner").is_none(),
        "{report:#}"
    );

    // The table names the same things, one line each.
    let table = sb.as_user("alice", &["audit", "coder"]);
    assert_eq!(table.code, 1);
    for needle in ["/home/alice/.netrc", tcp.as_str(), "docker", "host-only"] {
        assert!(table.stdout.contains(needle), "{needle}: {}", table.stdout);
    }
}

#[test]
fn audit_with_network_none_reaches_neither_listener_nor_homes() {
    let host = leaky_host("audit-netnone");
    let sb = &host.sb;
    sb.write_config("network = \"none\"");
    // A file name the agent chose, with an OSC 52 clipboard write in it, in shared /tmp.
    sb.sh_as(
        "agent-coder",
        "touch \"$(printf '/tmp/x\\033]52;c;aGk=\\007')\"",
    )
    .ok();
    let table = sb.root(&["audit", "coder"]);
    assert!(
        table.stdout.contains("/tmp/x\\u{1b}]52"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains('\u{1b}') && !table.stdout.contains('\u{7}'));
    let report = sb.root(&["audit", "coder", "--json"]).json();
    assert_eq!(report["network"], "none");
    let tcp = format!("tcp 127.0.0.1:{}", host.port);
    assert_high_in(&report, "tcp-listener", &tcp, "host");
    assert_high_in(&report, "abstract-socket", &host.abstract_name, "host");
    for (category, subject) in [
        ("tcp-listener", tcp.as_str()),
        ("abstract-socket", host.abstract_name.as_str()),
        ("readable-secret", "/home/alice/.netrc"),
        ("readable-secret", "/home/alice/.bashrc"),
    ] {
        assert!(
            !reached_in(finding(&report, category, subject), "view"),
            "{subject} reachable in the view with network none: {report:#}"
        );
    }
}

#[test]
fn audit_is_for_the_owner_and_root_only() {
    let sb = Sandbox::new("audit-authz");
    sb.add_user("alice", &[]);
    sb.add_user("mallory", &[]);
    sb.root(&["create", "coder", "--owner", "alice"]).ok();
    sb.as_user("mallory", &["audit", "coder"])
        .fails(1, "no such agent");
    sb.root(&["audit", "nobody-here"]).fails(1, "no such agent");
    sb.root(&["audit", "Bad_Name"]).fails(2, "");
    // The agent itself may not audit (nor use agentuser at all).
    sb.as_user("agent-coder", &["doctor"])
        .fails(1, "agent accounts may not use agentuser");
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn doctor_reports_the_unhardened_host() {
    let sb = Sandbox::new("audit-doctor");
    sb.add_user("alice", &[]);
    sb.root(&["create", "coder", "--owner", "alice"]).ok();
    let out = sb.as_user("alice", &["doctor", "--json"]);
    let report = out.json();
    // This development host is unhardened on purpose; on a hardened one the same checks
    // must come out clean.
    let weak = [
        ("dev.tty.legacy_tiocsti", "1"),
        ("fs.protected_symlinks", "0"),
    ];
    let mut any_weak = false;
    for (name, bad) in weak {
        let value = sysctl(name);
        let subject = format!("{name}={value}");
        let f = finding(&report, "sysctl", &subject)
            .unwrap_or_else(|| panic!("no finding for {subject}: {report:#}"));
        if value == bad {
            any_weak = true;
            assert_eq!(f["severity"], "high", "{f}");
            assert!(f["fix"].as_str().unwrap().contains("sysctl -w"), "{f}");
        } else {
            assert_eq!(f["severity"], "info", "{f}");
        }
    }
    if any_weak {
        assert_eq!(out.code, 1, "{out:#?}");
    }
    // alice's home is 0755 (useradd's default here): named, with a fix.
    let home = finding(&report, "home-mode", "/home/alice").expect("0755 home named");
    assert!(home["fix"].as_str().unwrap().contains("chmod 0750"));
    // The installation in the sandbox is sound.
    for category in ["binary", "pam", "config", "acl"] {
        let f = findings(&report)
            .iter()
            .find(|f| f["category"] == category)
            .unwrap_or_else(|| panic!("no {category} check: {report:#}"));
        assert_eq!(f["severity"], "info", "{f}");
    }
    // Every non-info finding says how to fix it.
    for f in findings(&report) {
        if f["severity"] != "info" {
            assert!(f["fix"].is_string(), "finding without a fix: {f}");
        }
    }
    let table = sb.root(&["doctor"]);
    assert_eq!(table.code, out.code);
    assert!(table.stdout.contains("legacy_tiocsti"), "{}", table.stdout);
    assert!(table.stdout.contains("fix: "), "{}", table.stdout);
}

#[test]
fn doctor_flags_a_broken_installation() {
    let sb = Sandbox::new("audit-doctor-broken");
    std::fs::remove_file(sb.host_path("/etc/pam.d/agentuser")).unwrap();
    let report = sb.root(&["doctor", "--json"]).json();
    let pam = finding(&report, "pam", "/etc/pam.d/agentuser").expect("pam check");
    assert_eq!(pam["severity"], "high");
    assert!(pam["fix"].as_str().unwrap().contains("install"));
}

// ---- the probe as an unprivileged uid, without the runner ----------------------------
//
// Until the runner lands, the probe's kernel-decided answers are checked by running it in
// a copy of this test binary under `setpriv` as nobody (the runner will do the same switch
// plus its namespaces).

const PROBE_ENV: &str = "AGENTUSER_AUDIT_PROBE_ROOT";

/// Child mode: when PROBE_ENV is set, observe the tree it names and print the result.
#[test]
fn probe_child_mode() {
    let Some(root) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    let root = PathBuf::from(root);
    let plan = probe_plan(&root);
    let obs = agentuser::audit::probes::observe(&plan);
    println!("PROBE:{}", serde_json::to_string(&obs).unwrap());
}

fn probe_plan(root: &Path) -> agentuser::audit::probes::Plan {
    use agentuser::audit::network::{UnixSocket, read_unix_sockets};
    let wanted: Vec<UnixSocket> = read_unix_sockets()
        .into_iter()
        .filter(|s| s.name.contains("agentuser-audit-probe"))
        .collect();
    agentuser::audit::probes::Plan {
        homes: vec![root.join("alice"), root.join("bob")],
        skip: vec![root.join("alice/shared")],
        writable_roots: vec![(root.join("opt"), 2)],
        host_temp: Vec::new(),
        unix: wanted,
        listeners: Vec::new(),
        limits: Default::default(),
    }
}

struct TreeGuard(PathBuf);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn probe_as_an_unprivileged_uid_sees_only_what_the_kernel_allows() {
    let root = PathBuf::from(format!(
        "/var/cache/agentuser-tests/audit-probe-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let _guard = TreeGuard(root.clone());
    let files: &[(&str, u32)] = &[
        ("alice/.netrc", 0o644),
        ("alice/.aws/credentials", 0o600),
        ("alice/.ssh/id_ed25519", 0o600),
        ("alice/notes.txt", 0o644),
        ("alice/shared/.netrc", 0o644),
        ("bob/.netrc", 0o644),
        ("bob/hidden.txt", 0o644),
        ("opt/tool/run.sh", 0o666),
        ("opt/tool/safe.sh", 0o755),
    ];
    for (rel, mode) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "machine x login y password z\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    for (dir, mode) in [
        ("", 0o755),
        ("alice", 0o755),
        ("alice/.ssh", 0o700),
        ("alice/.aws", 0o755),
        ("alice/shared", 0o755),
        ("bob", 0o711),
        ("opt", 0o755),
        ("opt/tool", 0o755),
        ("alice/dropbox", 0o777),
        ("private", 0o700),
    ] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // A socket anyone may connect to, one behind a 0700 directory, and an abstract one.
    let open =
        std::os::unix::net::UnixListener::bind(root.join("opt/agentuser-audit-probe-open.sock"))
            .unwrap();
    std::fs::set_permissions(
        root.join("opt/agentuser-audit-probe-open.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let closed = std::os::unix::net::UnixListener::bind(
        root.join("private/agentuser-audit-probe-closed.sock"),
    )
    .unwrap();
    let abstract_name = format!("agentuser-audit-probe-{}", std::process::id());
    let abstract_socket = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let exe = root.join("probe-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "probe_child_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, &root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE:").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no probe output: {output:?}"));
    let obs: agentuser::audit::probes::Observations = serde_json::from_str(line).unwrap();
    drop((open, closed, abstract_socket));

    assert_eq!(obs.uid, 65534);
    let alice = obs
        .homes
        .iter()
        .find(|h| h.home.ends_with("alice"))
        .unwrap();
    let named: Vec<String> = alice
        .secrets
        .iter()
        .map(|s| s.path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(named, vec!["alice/.netrc"], "{alice:#?}");
    // .netrc and notes.txt; not the 0600 files, not the share.
    assert_eq!(alice.readable_files, 2, "{alice:#?}");
    assert!(
        alice.writable.iter().any(|p| p.ends_with("dropbox")),
        "{alice:#?}"
    );
    // bob's 0711 home cannot be listed, but his .netrc opens by name.
    let bob = obs.homes.iter().find(|h| h.home.ends_with("bob")).unwrap();
    assert!(!bob.listable);
    assert_eq!(bob.secrets.len(), 1, "{bob:#?}");
    assert_eq!(
        bob.readable_files, 1,
        "hidden.txt has no known name: {bob:#?}"
    );
    // The writable scan finds the 0666 script and not the 0755 one.
    let writable: Vec<&Path> = obs.writable.iter().map(|w| w.path.as_path()).collect();
    assert!(
        writable.iter().any(|p| p.ends_with("run.sh")),
        "{writable:?}"
    );
    assert!(
        !writable.iter().any(|p| p.ends_with("safe.sh")),
        "{writable:?}"
    );
    // Socket reach follows the file system permissions; abstract sockets have none.
    let reached: Vec<&str> = obs.unix.iter().map(|s| s.name.as_str()).collect();
    assert!(
        reached.iter().any(|n| n.ends_with("open.sock")),
        "{reached:?}"
    );
    assert!(
        !reached.iter().any(|n| n.ends_with("closed.sock")),
        "{reached:?}"
    );
    assert!(
        reached.contains(&format!("@{abstract_name}").as_str()),
        "{reached:?}"
    );
}
