//! Hermetic sandbox for integration tests.
//!
//! Every command runs in its own private mount namespace in which `/etc` is a throwaway
//! copy (the whole directory: useradd renames files inside it) and the state directories,
//! `/home`, `/tmp`, `/var/tmp` and `/dev/shm` are private directories of the sandbox. The
//! copies persist between commands of one test, so a test sees a consistent host; the real
//! host sees nothing. Each sandbox gets its own uid range, and its guard kills every process
//! in that range and removes the sandbox on drop, failure included.
#![allow(dead_code)]

pub mod net;

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where sandboxes live: root-owned, traversable, on a file system that honours setuid,
/// and outside every directory the sandbox replaces.
const SANDBOX_ROOT: &str = "/var/cache/agentuser-tests";
/// Agent uids are `base .. base+500`, test users `base+500 ..`.
const RANGE: u32 = 1000;

pub struct Sandbox {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub uid_base: u32,
    next_user: std::cell::Cell<u32>,
    /// A network namespace (a path) every sandbox command runs in (see `net.rs`).
    pub net_ns: std::cell::RefCell<Option<String>>,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The sandbox host has no syslog daemon, so every logged request warns about it once; the
/// line is left out of `Out::stderr` (tests/audit_trail.rs checks it on raw output).
pub const NO_SYSLOG_WARNING: &str =
    "agentuser: warning: no syslog socket at /dev/log: this request is not logged";

impl Out {
    pub fn from(output: Output) -> Out {
        use std::os::unix::process::ExitStatusExt;
        let code = output
            .status
            .code()
            .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
        let stderr =
            String::from_utf8_lossy(&output.stderr).replace(&format!("{NO_SYSLOG_WARNING}\n"), "");
        Out {
            code,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        }
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    /// Asserts the exit code and a one-line `agentuser: ...` error containing `needle`.
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> Out {
        assert_eq!(self.code, code, "expected exit {code}, got {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error, got {self:#?}");
        assert!(lines[0].starts_with("agentuser: "), "{self:#?}");
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}, got {self:#?}"
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }
}

impl Sandbox {
    /// A fresh sandbox. `name` must be unique per test (it seeds the uid range).
    pub fn new(name: &str) -> Sandbox {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "integration tests create accounts and must run as root (see README)"
        );
        // The pid keeps two test runs on one machine (say, two worktrees) out of each
        // other's uid ranges, which the guards and `delete` kill by.
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        std::process::id().hash(&mut hasher);
        let uid_base = 1_800_000_000 + (hasher.finish() % 90_000) as u32 * RANGE;
        let dir = Path::new(SANDBOX_ROOT).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A sandbox of another test, dropped meanwhile, removes the root when it is empty:
        // possibly between making the root and making this directory in it. Once this
        // directory exists the root is not empty and stays.
        for attempt in 0.. {
            fs::create_dir_all(SANDBOX_ROOT).unwrap();
            match fs::create_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 100 => {}
                Err(e) => panic!("{}: {e}", dir.display()),
            }
        }
        fs::set_permissions(SANDBOX_ROOT, fs::Permissions::from_mode(0o755)).unwrap();
        let sandbox = Sandbox {
            bin: dir.join("bin/agentuser"),
            dir,
            uid_base,
            next_user: std::cell::Cell::new(0),
            net_ns: std::cell::RefCell::new(None),
        };
        sandbox.populate();
        sandbox
    }

    fn populate(&self) {
        let d = &self.dir;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        run_host(Command::new("cp").arg("-a").arg("/etc").arg(d.join("etc")));
        scrub_accounts(&d.join("etc"));
        for (sub, mode) in [
            ("state", 0o755),
            ("home", 0o755),
            ("tmp", 0o1777),
            ("vartmp", 0o1777),
            ("shm", 0o1777),
            ("bin", 0o755),
            ("work", 0o755),
            ("etc/agentuser", 0o755),
        ] {
            let p = d.join(sub);
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        self.write_config("");
        let pam = Path::new(env!("CARGO_MANIFEST_DIR")).join("pam/agentuser");
        fs::copy(pam, d.join("etc/pam.d/agentuser")).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_agentuser"), &self.bin).unwrap();
        fs::set_permissions(&self.bin, fs::Permissions::from_mode(0o4755)).unwrap();
        self.sh("groupadd agentuser").ok();
        // The policy point's account, as install.sh creates it.
        self.sh(
            "getent passwd agentuser-net >/dev/null || useradd --system --no-create-home \
             --home-dir /nonexistent --shell /usr/sbin/nologin agentuser-net",
        )
        .ok();
        // The share tracker's account, as install.sh creates it.
        self.sh(
            "getent passwd agentuser-track >/dev/null || useradd --system --no-create-home \
             --home-dir /nonexistent --shell /usr/sbin/nologin agentuser-track",
        )
        .ok();
    }

    /// Replaces the config with the sandbox's uid range plus `extra` TOML lines.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "uid_min = {}\nuid_max = {}\n{extra}\n",
            self.uid_base,
            self.uid_base + RANGE / 2 - 1
        );
        let path = self.dir.join("etc/agentuser/config.toml");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Raw config text (for hostile-config tests), written as-is.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("etc/agentuser/config.toml")
    }

    fn namespace_setup(&self) -> String {
        let d = self.dir.display();
        format!(
            "set -e
mount --bind {d}/etc /etc
mount -t tmpfs -o mode=0755 agentuser-test /var/lib
mkdir -p /var/lib/agentuser
mount --bind {d}/state /var/lib/agentuser
mount --bind {d}/home /home
mount --bind {d}/tmp /tmp
mount --bind {d}/vartmp /var/tmp
mount --bind {d}/shm /dev/shm
set +e
"
        )
    }

    /// A command that runs `argv` inside the sandbox's namespace, as root, with a clean
    /// environment.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = match &*self.net_ns.borrow() {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={ns}")).arg("--").arg("unshare");
                cmd
            }
            None => Command::new("unshare"),
        };
        cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(format!("{}exec \"$@\"", self.namespace_setup()))
            .arg("sh")
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LC_ALL", "C")
            // The checkout may lie below a directory the sandbox replaces (/tmp, /home):
            // commands start at / so nothing depends on where the tests were run from.
            .current_dir("/")
            .stdin(Stdio::null());
        cmd
    }

    fn bin_str(&self) -> &str {
        self.bin.to_str().unwrap()
    }

    /// agentuser as root.
    pub fn root(&self, args: &[&str]) -> Out {
        let mut argv = vec![self.bin_str()];
        argv.extend_from_slice(args);
        self.run(self.command(&argv))
    }

    /// agentuser through its setuid bit, as `user` with that user's groups.
    pub fn as_user(&self, user: &str, args: &[&str]) -> Out {
        self.run(self.user_command(user, args))
    }

    pub fn user_command(&self, user: &str, args: &[&str]) -> Command {
        let mut argv = vec![self.bin_str()];
        argv.extend_from_slice(args);
        self.command_as(user, &argv)
    }

    /// A command that runs `argv` inside the sandbox as `user` (uid, primary group, its
    /// groups), with no setuid bit involved: the user's own rights, or an agent's outside
    /// any view (its uid at its most powerful).
    pub fn command_as(&self, user: &str, argv: &[&str]) -> Command {
        let mut full = vec![
            "setpriv",
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "--",
        ];
        full.extend_from_slice(argv);
        self.command(&full)
    }

    /// `agentuser exec AGENT -- /bin/sh -c SCRIPT` as `user`, not yet started.
    pub fn exec_sh_command(&self, user: &str, agent: &str, script: &str) -> Command {
        self.user_command(user, &["exec", agent, "--", "/bin/sh", "-c", script])
    }

    /// `agentuser exec AGENT -- /bin/sh -c SCRIPT` as `user`.
    pub fn exec_sh(&self, user: &str, agent: &str, script: &str) -> Out {
        self.run(self.exec_sh_command(user, agent, script))
    }

    /// A shell script as root inside the sandbox.
    pub fn sh(&self, script: &str) -> Out {
        self.run(self.command(&["/bin/sh", "-c", script]))
    }

    /// A shell script as `user` (uid, primary group, its groups) inside the sandbox.
    pub fn sh_as(&self, user: &str, script: &str) -> Out {
        self.run(self.command_as(user, &["/bin/sh", "-c", script]))
    }

    pub fn run(&self, mut cmd: Command) -> Out {
        Out::from(cmd.output().expect("spawning a sandbox command"))
    }

    /// Runs `cmd` with `input` on its standard input.
    pub fn run_with_stdin(&self, mut cmd: Command, input: &[u8]) -> Out {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning a sandbox command");
        // The helper may refuse before reading its input: a closed pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(input);
        Out::from(child.wait_with_output().unwrap())
    }

    pub fn spawn(&self, mut cmd: Command) -> Child {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("spawning a sandbox command")
    }

    /// Adds a human test user with a 0755 home under /home and returns its uid.
    pub fn add_user(&self, name: &str, groups: &[&str]) -> u32 {
        let n = self.next_user.get();
        self.next_user.set(n + 1);
        let uid = self.uid_base + RANGE / 2 + n;
        let mut script = format!("useradd -m -K HOME_MODE=0755 -u {uid} -U -s /bin/sh {name}");
        if !groups.is_empty() {
            script.push_str(&format!(" -G {}", groups.join(",")));
        }
        self.sh(&script).ok();
        uid
    }

    /// `user` makes an ed25519 key pair ~/.ssh/NAME (no passphrase, comment NAME) and
    /// returns its public key line.
    pub fn ssh_keygen(&self, user: &str, name: &str) -> String {
        let ssh = format!("/home/{user}/.ssh");
        self.sh_as(
            user,
            &format!(
                "mkdir -p -m 700 {ssh} && ssh-keygen -q -t ed25519 -N '' -C {name} -f {ssh}/{name}"
            ),
        )
        .ok();
        fs::read_to_string(self.host_path(&format!("{ssh}/{name}.pub"))).unwrap()
    }

    /// Adds to `user`'s known_hosts that `host` has the key `key` (a public key line).
    pub fn known_host(&self, user: &str, host: &str, key: &str) {
        let line = format!("{host} {}", key.trim());
        self.sh_as(
            user,
            &format!("printf '%s\\n' '{line}' >> /home/{user}/.ssh/known_hosts"),
        )
        .ok();
    }

    /// `owner` gives `agent` the key ~/.ssh/NAME for logins to `host` (`cred ssh`).
    pub fn cred_ssh(&self, owner: &str, agent: &str, name: &str, host: &str) -> Out {
        let key = format!("/home/{owner}/.ssh/{name}.pub");
        self.as_user(owner, &["cred", "ssh", agent, &key, "--host", host])
    }

    /// alice (a test user in group agentuser, so she may create agents) and her agent
    /// `coder`; returns the agent's uid.
    pub fn alice_and_coder(&self) -> u32 {
        self.add_user("alice", &["agentuser"]);
        self.as_user("alice", &["create", "coder"]).ok();
        self.show("coder")["uid"].as_u64().unwrap() as u32
    }

    /// The agent's JSON record as `show --json` prints it (as root).
    pub fn show(&self, agent: &str) -> serde_json::Value {
        self.root(&["show", agent, "--json"]).ok().json()
    }

    /// Whether a passwd entry exists for `user` in the sandbox.
    pub fn user_exists(&self, user: &str) -> bool {
        self.sh(&format!("getent passwd {user}")).code == 0
    }

    /// Host path of a path inside the sandbox (for the directories the sandbox replaces).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        for (prefix, sub) in [
            ("/var/lib/agentuser", "state"),
            ("/home", "home"),
            ("/tmp", "tmp"),
            ("/var/tmp", "vartmp"),
            ("/dev/shm", "shm"),
            ("/etc", "etc"),
        ] {
            if let Some(rest) = inside.strip_prefix(prefix) {
                return self.dir.join(sub).join(rest.trim_start_matches('/'));
            }
        }
        panic!("{inside} is not inside a sandboxed directory")
    }

    /// Runs `commands` (a shell script, as root, inside the sandbox) while a listener on
    /// /dev/log records what is sent to syslog, and returns the records. This host has no
    /// syslog socket, so the namespace gets a /dev of its own for it.
    pub fn syslog_during(&self, commands: &str) -> String {
        let script = format!(
            r#"set -e
mkdir -p /tmp/realdev && mount --rbind /dev /tmp/realdev
mount -t tmpfs -o mode=0755 dev /dev
for n in null zero urandom random tty full; do touch /dev/$n; mount --bind /tmp/realdev/$n /dev/$n; done
mkdir /dev/shm /dev/pts && mount --rbind /tmp/realdev/shm /dev/shm
python3 -c '
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
open("/tmp/ready", "w").close()
s.settimeout(3)
with open("/tmp/log.txt", "w") as out:
    try:
        while True:
            out.write(s.recv(4096).decode(errors="replace") + "\n"); out.flush()
    except socket.timeout:
        pass
' &
while [ ! -e /tmp/ready ]; do sleep 0.05; done
{commands}
wait
cat /tmp/log.txt"#
        );
        self.sh(&script).ok().stdout
    }

    /// uids of live processes in this sandbox's range.
    pub fn processes_in_range(&self) -> Vec<(i32, u32)> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            // Zombies are dead; this host's init may never reap them.
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                continue;
            }
            let uids: Vec<u32> = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .filter_map(|u| u.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if let Some(&uid) = uids
                .iter()
                .find(|&&u| u >= self.uid_base && u < self.uid_base + RANGE)
            {
                found.push((pid, uid));
            }
        }
        found
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_share_trackers();
        for _ in 0..50 {
            let procs = self.processes_in_range();
            if procs.is_empty() {
                break;
            }
            for (pid, _) in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::env::var_os("AGENTUSER_KEEP_SANDBOX").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::remove_dir(SANDBOX_ROOT);
        }
    }
}

impl Sandbox {
    /// Ends the share trackers of this sandbox's agents (src/share/track.rs): they run as
    /// a system account outside the sandbox's uid range and outlive their runs. Asking one
    /// for its report ends it.
    /// A tracker whose socket a failed test removed is found by its command line (a fork
    /// of this sandbox's own copy of agentuser) and killed.
    fn stop_share_trackers(&self) {
        for agent in fs::read_dir(self.dir.join("state/index"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(mut stream) =
                std::os::unix::net::UnixStream::connect(agent.path().join("tracker.sock"))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
            }
        }
        let bin = self.bin.as_os_str().as_encoded_bytes();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.starts_with(bin) && cmdline.get(bin.len()) == Some(&0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A process started for a test, killed and reaped when the test ends (failure included)
/// or when the test drops it.
pub struct Background(pub Child);

impl Background {
    /// Starts `cmd` (stdout and stderr piped) and waits for the first line it prints: a
    /// process that says when it is ready (a server, an attack's target, a run to look at).
    /// The line is returned as read, newline included; a process that ends first fails
    /// the test.
    pub fn start(mut cmd: Command) -> (Background, String) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting a background process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(!line.is_empty(), "{cmd:?} ended before it printed a line");
        (Background(child), line)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls (up to 20 seconds) until `check` holds; false when it never did.
pub fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Makes the copied account files independent of the host: only system accounts and groups
/// stay (ids below 1000, and `nobody`), never the group `agentuser`, an agent account or a
/// user named like a test user, whatever the host's `/etc` holds (agentuser installed, host
/// users called alice, other agents). Members that no longer exist are dropped from groups.
fn scrub_accounts(etc: &Path) {
    let keep_id = |id: &str| id.parse::<u32>().is_ok_and(|id| id < 1000 || id == 65534);
    let reserved = |name: &str| {
        name == "agentuser"
            || name.starts_with("agent-")
            || ["alice", "bob", "carol", "mallory"].contains(&name)
    };
    let passwd = fs::read_to_string(etc.join("passwd")).unwrap();
    let users: Vec<&str> = passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 3 && keep_id(fields[2]) && !reserved(fields[0])).then_some(fields[0])
        })
        .collect();
    let group = fs::read_to_string(etc.join("group")).unwrap_or_default();
    let groups: Vec<&str> = group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 3 && keep_id(fields[2]) && !reserved(fields[0])).then_some(fields[0])
        })
        .collect();
    // gshadow lists administrators (field 2) and members (field 3); group members (field 3).
    for (file, names, member_fields) in [
        ("passwd", &users, &[][..]),
        ("shadow", &users, &[]),
        ("subuid", &users, &[]),
        ("subgid", &users, &[]),
        ("group", &groups, &[3]),
        ("gshadow", &groups, &[2, 3]),
    ] {
        let path = etc.join(file);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut out = String::new();
        for line in text.lines() {
            let mut fields: Vec<String> = line.split(':').map(str::to_string).collect();
            if !names.contains(&fields[0].as_str()) {
                continue;
            }
            let field_count = fields.len();
            for &i in member_fields.iter().filter(|&&i| i < field_count) {
                let members: Vec<&str> =
                    fields[i].split(',').filter(|m| users.contains(m)).collect();
                fields[i] = members.join(",");
            }
            out.push_str(&fields.join(":"));
            out.push('\n');
        }
        fs::write(&path, out).unwrap();
    }
}

fn run_host(cmd: &mut Command) {
    let status = cmd.status().expect("running a host command");
    assert!(status.success(), "{cmd:?} failed");
}

/// Runs the interactive `shell` (program, then argv) as root on a fresh pty (python3's pty
/// module) inside the sandbox and types each step's text into it, waiting after each for
/// the expected text to appear. Returns the transcript, with `<<mark>>` before each step's
/// output. Special steps: `winsize:R:C` resizes the terminal; `wait-job` waits until the
/// shell gave the terminal to a job. An empty expectation waits 0.7 s.
pub fn on_a_terminal_in(sb: &Sandbox, shell: &[&str], steps: &[(&str, &str)]) -> String {
    const DRIVER: &str = r#"
import json, os, pty, select, signal, sys, time
signal.alarm(300)  # a last resort against a hung driver; its pty's shell gets SIGHUP
steps = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.environ['PS1'] = '$ '
    shell = json.loads(sys.argv[2])
    os.execv(shell[0], shell[1:])
out = b''
def pump(until, timeout):
    global out
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return False
            if not data:
                return False
            out += data
            if until and until.encode() in out.split(b'<<mark>>')[-1]:
                return True
    return until == ''
for send, expect in steps:
    out += b'<<mark>>'
    if send == 'wait-job':
        # Until the shell has given the terminal to a job (not a timed wait: bounded).
        for _ in range(200):
            if os.tcgetpgrp(fd) != pid:
                break
            time.sleep(0.1)
        continue
    if send.startswith('winsize:'):
        import fcntl, struct, termios
        rows, cols = map(int, send.split(':')[1:])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
    else:
        os.write(fd, send.encode())
    if not pump(expect, 20 if expect else 0.7):
        sys.stdout.write(out.decode(errors='replace'))
        sys.exit('timed out waiting for %r' % expect)
os.write(fd, b'exit\n')
pump('', 5)
# Never hang the test run: a shell that did not exit is killed.
for _ in range(50):
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors='replace'))
"#;
    let steps: Vec<(String, String)> = steps
        .iter()
        .map(|(s, e)| (s.to_string(), e.to_string()))
        .collect();
    let json = serde_json::to_string(&steps).unwrap();
    let shell = serde_json::to_string(shell).unwrap();
    let out = sb.run(sb.command(&["python3", "-c", DRIVER, &json, &shell]));
    assert_eq!(out.code, 0, "pty driver failed: {out:#?}");
    out.stdout
}
