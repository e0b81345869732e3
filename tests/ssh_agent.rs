//! The filtered ssh-agent (issue 13 item 4): `cred ssh` lets the agent log in with one of
//! its owner's keys to chosen hosts, through a socket the policy point serves, never holding
//! the key. Two test sshds in the fake internet (tests/common/net.rs) accept the owner's
//! key: git.test (the key's host) and other.test (allowed in the network allowlist, not
//! bound to the key). The owner's own ssh-agent holds two keys; the control is the owner
//! using that agent directly.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::net::FakeInternet;
use common::{Out, Sandbox};

const GIT_V4: &str = "11.22.33.6";
const OTHER_V4: &str = "11.22.33.7";

/// An sshd in the internet namespace on ADDR:22 with one host key of type KEY_TYPE
/// (`ssh-keygen -t`), that lets root in by key only and answers a session without a command
/// with `welcome-NAME`, and runs the command of one that has one (git's upload-pack and
/// receive-pack). Its own keys and files, made by the test.
fn start_sshd(
    sb: &Sandbox,
    internet: &mut FakeInternet,
    name: &str,
    addr: &str,
    keys: &str,
    key_type: &str,
) {
    let d = sb.dir.display();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = format!("{d}/hostkey_{name}");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", "", "-f", &host_key])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(format!("{d}/authorized_{name}"), keys).unwrap();
    let session = format!("{d}/session_{name}");
    std::fs::write(
        &session,
        format!(
            "#!/bin/sh\n[ -n \"$SSH_ORIGINAL_COMMAND\" ] && exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n\
             echo welcome-{name}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "ListenAddress {addr}:22\nHostKey {host_key}\nAuthorizedKeysFile {d}/authorized_{name}\n\
         UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         ForceCommand {session}\nPidFile none\n"
    );
    std::fs::write(format!("{d}/sshd_{name}.conf"), config).unwrap();
    let script = format!(
        "( for i in $(seq 400); do ss -ltn | grep -q ' {addr}:22 ' && break; sleep 0.05; done; \
           echo ready ) & exec /usr/sbin/sshd -D -e -f {d}/sshd_{name}.conf 2>>{d}/sshd_{name}.log"
    );
    internet.internet_ip(&["addr", "add", &format!("{addr}/24"), "dev", "vi"]);
    internet.serve(&["/bin/sh", "-c", &script]);
}

struct Setup {
    sb: Sandbox,
    _internet: FakeInternet,
    git_pub: String,
    other_pub: String,
}

/// alice with two keys (id_git, id_other), both accepted by both sshds; git.test's host key
/// in her known_hosts; her agent coder allowed to reach git.test:22 and other.test:22, and
/// given id_git for git.test. Both sshds have one host key of type KEY_TYPE.
fn setup(name: &str, key_type: &str) -> Setup {
    let sb = Sandbox::new(name);
    sb.alice_and_coder();
    let mut internet =
        FakeInternet::start(&sb, &[("git.test", &[GIT_V4]), ("other.test", &[OTHER_V4])]);
    let git_pub = sb.ssh_keygen("alice", "id_git");
    let other_pub = sb.ssh_keygen("alice", "id_other");
    let both = format!("{git_pub}{other_pub}");
    start_sshd(&sb, &mut internet, "git", GIT_V4, &both, key_type);
    start_sshd(&sb, &mut internet, "other", OTHER_V4, &both, key_type);
    let host_key = std::fs::read_to_string(sb.dir.join("hostkey_git.pub")).unwrap();
    sb.known_host("alice", "git.test", &host_key);
    sb.as_user(
        "alice",
        &["net", "coder", "allow", "git.test:22", "other.test:22"],
    )
    .ok();
    sb.cred_ssh("alice", "coder", "id_git", "git.test").ok();
    Setup {
        sb,
        _internet: internet,
        git_pub,
        other_pub,
    }
}

/// Sends SIGN_REQUEST for the key in FILE (a .pub) over some data, straight to
/// $SSH_AUTH_SOCK; prints the reply's message number (14 signed, 5 refused).
const RAW_SIGN: &str = r#"
import base64, os, socket, struct, sys
blob = base64.b64decode(open(sys.argv[1]).read().split()[1])
s = socket.socket(socket.AF_UNIX); s.connect(os.environ['SSH_AUTH_SOCK'])
st = lambda b: struct.pack('>I', len(b)) + b
msg = bytes([13]) + st(blob) + st(b'a commit to sign') + struct.pack('>I', 0)
s.sendall(struct.pack('>I', len(msg)) + msg)
n = struct.unpack('>I', s.recv(4))[0]
print(s.recv(n)[0])
"#;

const SSH: &str = "ssh -T -o BatchMode=yes -o StrictHostKeyChecking=no \
                   -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 -o IdentitiesOnly=yes";

/// As alice, with her own ssh-agent holding both keys: `before` as alice, then `agent` as
/// the agent through exec (one line per result, `NAME:output`).
fn with_owner_agent(s: &Setup, before: &str, agent: &str) -> Out {
    let bin = s.sb.bin.display();
    let inner = format!(
        "r() {{ n=$1; shift; printf '%s:%s\\n' \"$n\" \"$(\"$@\" 2>&1 | tr '\\n' '|')\"; }}
         printf '%s' '{git}' > /tmp/git.pub; printf '%s' '{other}' > /tmp/other.pub
         cat > /tmp/sign.py <<'EOF'\n{RAW_SIGN}\nEOF
         {agent}",
        git = s.git_pub.trim(),
        other = s.other_pub.trim()
    );
    let script = format!(
        "eval $(ssh-agent -s) >/dev/null
         ssh-add -q /home/alice/.ssh/id_git /home/alice/.ssh/id_other
         r() {{ n=$1; shift; printf '%s:%s\\n' \"$n\" \"$(\"$@\" 2>&1 | tr '\\n' '|')\"; }}
         cat > /tmp/sign.py <<'EOF'\n{RAW_SIGN}\nEOF
         {before}
         {bin} exec coder -- /bin/sh -c \"$1\"
         ssh-agent -k >/dev/null"
    );
    s.sb.run({
        let mut cmd =
            s.sb.command_as("alice", &["/bin/sh", "-c", &script, "sh", &inner]);
        cmd.env("HOME", "/home/alice");
        cmd
    })
}

fn line<'a>(out: &'a Out, name: &str) -> &'a str {
    let prefix = format!("{name}:");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {out:?}"))
}

#[test]
fn agent_logs_in_to_the_keys_host_only_with_the_chosen_key() {
    let s = setup("ssh-agent-filter", "ed25519");
    let out = with_owner_agent(
        &s,
        &format!(
            "r owner-lists ssh-add -L
             r owner-other-host {SSH} -i /home/alice/.ssh/id_git.pub root@other.test
             r owner-raw-other python3 /tmp/sign.py /home/alice/.ssh/id_other.pub
             r owner-raw-git python3 /tmp/sign.py /home/alice/.ssh/id_git.pub"
        ),
        &format!(
            "r lists ssh-add -L
             r git {SSH} -i /tmp/git.pub root@git.test
             r other-host {SSH} -i /tmp/git.pub root@other.test
             r other-key {SSH} -i /tmp/other.pub root@git.test
             r raw-other python3 /tmp/sign.py /tmp/other.pub
             r raw-git python3 /tmp/sign.py /tmp/git.pub
             r private cat /home/alice/.ssh/id_git
             r sock sh -c 'echo $SSH_AUTH_SOCK'"
        ),
    );
    // Controls: the owner's agent holds both keys, and other.test accepts the key.
    assert!(
        line(&out, "owner-lists").contains(s.other_pub.split(' ').nth(1).unwrap()),
        "{out:?}"
    );
    assert!(
        line(&out, "owner-other-host").contains("welcome-other"),
        "{out:?}"
    );
    // The agent: only the chosen key listed, git.test accepts it, nothing else works.
    let listed = line(&out, "lists");
    assert!(
        listed.contains(s.git_pub.split(' ').nth(1).unwrap()),
        "{out:?}"
    );
    assert!(
        !listed.contains(s.other_pub.split(' ').nth(1).unwrap()),
        "{out:?}"
    );
    assert!(line(&out, "git").contains("welcome-git"), "{out:?}");
    assert!(!line(&out, "other-host").contains("welcome"), "{out:?}");
    assert!(
        line(&out, "other-host").contains("Permission denied"),
        "{out:?}"
    );
    assert!(!line(&out, "other-key").contains("welcome"), "{out:?}");
    // Raw requests: the owner's agent signs anything with either key; the agent's signs
    // neither the other key nor, with the chosen key, anything but a bound login.
    assert_eq!(line(&out, "owner-raw-other"), "14|", "{out:?}");
    assert_eq!(line(&out, "owner-raw-git"), "14|", "{out:?}");
    assert_eq!(line(&out, "raw-other"), "5|", "{out:?}");
    assert_eq!(line(&out, "raw-git"), "5|", "{out:?}");
    assert!(!line(&out, "private").contains("PRIVATE KEY"), "{out:?}");
    let log = s.sb.as_user("alice", &["net", "coder", "log"]).ok();
    assert!(log.stdout.contains("not one of an allowed host"), "{log:?}");
}

/// Without the owner's ssh-agent, the key comes from the private key file, read with the
/// owner's rights at run start; the agent still cannot read the file itself.
#[test]
fn key_file_read_as_the_owner_serves_the_same_filter() {
    let s = setup("ssh-agent-file", "ed25519");
    let script = format!(
        "printf '%s' '{}' > /tmp/git.pub
         {SSH} -i /tmp/git.pub root@git.test; echo git=$?
         {SSH} -i /tmp/git.pub root@other.test; echo other=$?
         cat /home/alice/.ssh/id_git; echo cat=$?",
        s.git_pub.trim()
    );
    let out = s.sb.exec_sh("alice", "coder", &script);
    assert!(out.stdout.contains("welcome-git\ngit=0"), "{out:?}");
    assert!(out.stdout.contains("other=255"), "{out:?}");
    assert!(!out.stdout.contains("welcome-other"), "{out:?}");
    assert!(out.stdout.contains("cat=1"), "{out:?}");
    // Control: the file is the owner's, and she can read it.
    s.sb.sh_as("alice", "grep -q 'PRIVATE KEY' /home/alice/.ssh/id_git")
        .ok();
}

/// A bare repository on the test host, `main` with one commit, served by both sshds.
fn bare_repo(s: &Setup) -> std::path::PathBuf {
    let repo = s.sb.dir.join("repo.git");
    let seed = s.sb.dir.join("seed");
    let script = format!(
        "set -e; git init -q --bare -b main {repo}; git init -q -b main {seed}; cd {seed}
         git -c user.name=t -c user.email=t@test commit -q --allow-empty -m seed
         git push -q {repo} main",
        repo = repo.display(),
        seed = seed.display()
    );
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    repo
}

/// `git clone` and `git push` over ssh through the filtered agent and the policy point:
/// they work toward the key's host, and the same push toward another host that accepts the
/// key (the owner's control) is refused.
#[test]
fn git_clone_and_push_over_ssh_only_to_the_keys_host() {
    let s = setup("ssh-agent-git", "ed25519");
    let repo = bare_repo(&s);
    let repo = repo.display();
    let commit = "git -c user.name=a -c user.email=a@test commit -q --allow-empty -m";
    let out = with_owner_agent(
        &s,
        &format!(
            "export GIT_SSH_COMMAND='{SSH} -i /home/alice/.ssh/id_git.pub'
             r owner-clone git clone -q root@other.test:{repo} /tmp/owner
             cd /tmp/owner && {commit} from-owner-other
             r owner-push sh -c 'git push -q origin HEAD:main && echo pushed'
             cd /; unset GIT_SSH_COMMAND"
        ),
        &format!(
            "export GIT_SSH_COMMAND='{SSH} -i /tmp/git.pub'
             r clone sh -c 'git clone -q root@git.test:{repo} /tmp/work && echo cloned'
             cd /tmp/work && {commit} from-agent-git
             r push sh -c 'git push -q origin HEAD:main && echo pushed'
             {commit} from-agent-other
             r push-other sh -c 'git push -q root@other.test:{repo} HEAD:main && echo pushed'"
        ),
    );
    // Control: other.test takes pushes with the key.
    assert!(line(&out, "owner-push").contains("pushed"), "{out:?}");
    assert!(line(&out, "clone").contains("cloned"), "{out:?}");
    assert!(line(&out, "push").contains("pushed"), "{out:?}");
    assert!(!line(&out, "push-other").contains("pushed"), "{out:?}");
    let log = std::process::Command::new("git")
        .args(["--git-dir", &repo.to_string(), "log", "--format=%s", "main"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("from-owner-other"), "{log}");
    assert!(log.contains("from-agent-git"), "{log}");
    assert!(!log.contains("from-agent-other"), "{log}");
    let net = s.sb.as_user("alice", &["net", "coder", "log"]).ok();
    assert!(net.stdout.contains("not one of an allowed host"), "{net:?}");
}

/// The session-bind check with RSA and ECDSA host keys: the recorded host key of the key's
/// host binds, another host's key of the same type does not.
fn host_key_type_checked(name: &str, key_type: &str) {
    let s = setup(name, key_type);
    let out = with_owner_agent(
        &s,
        &format!("r owner-other-host {SSH} -i /home/alice/.ssh/id_git.pub root@other.test"),
        &format!(
            "r git {SSH} -i /tmp/git.pub root@git.test
             r other-host {SSH} -i /tmp/git.pub root@other.test"
        ),
    );
    assert!(
        line(&out, "owner-other-host").contains("welcome-other"),
        "{out:?}"
    );
    assert!(line(&out, "git").contains("welcome-git"), "{out:?}");
    assert!(!line(&out, "other-host").contains("welcome"), "{out:?}");
    let log = s.sb.as_user("alice", &["net", "coder", "log"]).ok();
    assert!(log.stdout.contains("not one of an allowed host"), "{log:?}");
}

#[test]
fn rsa_host_keys_are_checked() {
    host_key_type_checked("ssh-agent-rsa", "rsa");
}

#[test]
fn ecdsa_host_keys_are_checked() {
    host_key_type_checked("ssh-agent-ecdsa", "ecdsa");
}

/// `cred rm` of an ssh key: the record forgets it, the next run has no filtered agent, and
/// no socket of it is left in the state directory.
#[test]
fn cred_rm_of_an_ssh_key_leaves_no_trace_of_it() {
    let s = setup("ssh-agent-rm", "ed25519");
    let script = format!(
        "printf '%s' '{}' > /tmp/git.pub; echo sock=${{SSH_AUTH_SOCK-unset}}
         {SSH} -i /tmp/git.pub root@git.test; echo git=$?",
        s.git_pub.trim()
    );
    let exec = || s.sb.exec_sh("alice", "coder", &script).ok().stdout;
    // Control: given, the key logs in.
    let before = exec();
    assert!(before.contains("welcome-git\ngit=0"), "{before}");
    let given =
        s.sb.as_user("alice", &["cred", "list", "coder", "--json"])
            .ok()
            .json()
            .to_string();
    assert!(given.contains("id_git.pub"), "{given}");

    s.sb.as_user(
        "alice",
        &["cred", "rm", "coder", "/home/alice/.ssh/id_git.pub"],
    )
    .ok();
    let listed =
        s.sb.as_user("alice", &["cred", "list", "coder", "--json"])
            .ok()
            .stdout;
    assert!(!listed.contains("id_git"), "{listed}");
    let record =
        std::fs::read_to_string(s.sb.host_path("/var/lib/agentuser/agents/coder.toml")).unwrap();
    assert!(
        !record.contains(s.git_pub.split(' ').nth(1).unwrap()),
        "{record}"
    );
    let after = exec();
    assert!(after.contains("sock=unset"), "{after}");
    assert!(!after.contains("welcome"), "{after}");
    assert!(after.contains("git=255"), "{after}");
    let sockets = std::fs::read_dir(s.sb.host_path("/var/lib/agentuser/run-ssh"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(sockets, 0);
}
