//! exec and shell: every test performs an attack for real, as a second uid, and fails if
//! the attack works.

mod common;

use common::{Background, Out, Sandbox, eventually, on_a_terminal_in};

fn exec(sb: &Sandbox, agent: &str, script: &str) -> Out {
    sb.root(&["exec", agent, "--", "/bin/sh", "-c", script])
}

/// A sandbox with alice (an owner in group agentuser, 0755 home with secrets) and her agent.
fn setup(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.add_user("alice", &["agentuser"]);
    sb.sh(
        "echo topsecret > /home/alice/secret600 && chmod 600 /home/alice/secret600 && \
         echo readable > /home/alice/secret644 && chmod 644 /home/alice/secret644 && \
         chown alice: /home/alice/secret*",
    )
    .ok();
    sb.as_user("alice", &["create", "coder"]).ok();
    sb
}

#[test]
fn runs_as_the_agent_with_exit_codes() {
    let sb = setup("runner-basic");
    let uid = sb.show("coder")["uid"].as_u64().unwrap();
    let out = exec(&sb, "coder", "id -u; id -g; id -G; pwd").ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], uid.to_string(), "{out:#?}");
    assert_eq!(lines[1], uid.to_string());
    assert_eq!(lines[2], uid.to_string(), "supplementary groups: {out:#?}");
    assert_eq!(lines[3], "/var/lib/agentuser/homes/agent-coder");
    assert_eq!(exec(&sb, "coder", "exit 7").code, 7);
    assert_eq!(exec(&sb, "coder", "kill -TERM $$").code, 128 + 15);
    sb.root(&["exec", "coder", "--", "no-such-command"])
        .fails(127, "not found");
    sb.root(&["exec", "coder", "--", "/etc/passwd"])
        .fails(126, "ermission denied");
    sb.root(&["exec", "ghost", "--", "true"])
        .fails(125, "no such agent");
    sb.root(&["exec", "coder", "--cwd", "/home/alice", "--", "true"])
        .fails(125, "--cwd");
}

/// Runs `sh` as root on a fresh pty (python3's pty module) inside the sandbox and types
/// `lines` into it, waiting after each for the expected text to appear. Returns the
/// transcript, with `<<mark>>` before each step's output. Special steps: `winsize:R:C`
/// resizes the terminal; `wait-job` waits until the shell gave the terminal to a job.
fn on_a_terminal(sb: &Sandbox, steps: &[(&str, &str)]) -> String {
    on_a_terminal_in(sb, &["/bin/sh", "sh", "-i"], steps)
}

/// Writes a file readable by everyone into the sandbox's work directory (visible in the
/// agent's view) and returns its path.
fn work_file(sb: &Sandbox, name: &str, text: &str) -> String {
    let path = sb.dir.join("work").join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const INJECT: &str = r#"
import fcntl, os, termios
fds = [0, 1, 2]
try:
    fds.append(os.open('/dev/tty', os.O_RDWR))
except OSError as e:
    print('no controlling terminal:', e)
done = 0
for fd in fds:
    try:
        for c in 'touch /tmp/pwned\n':
            fcntl.ioctl(fd, termios.TIOCSTI, c.encode())
        done += 1
    except OSError:
        pass
print('INJECTED', done)
"#;

#[test]
fn tiocsti_cannot_reach_the_callers_shell() {
    let sb = setup("runner-tiocsti");
    let inject = work_file(&sb, "inject.py", INJECT);
    let bin = sb.bin.display().to_string();
    let pwned = sb.host_path("/tmp/pwned");

    // Control: under a plain uid switch the attack works on this host.
    on_a_terminal(
        &sb,
        &[(
            &format!(
                "setpriv --reuid agent-coder --regid agent-coder --clear-groups python3 {inject}\n"
            ),
            "INJECTED",
        )],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    if legacy.trim() == "1" {
        assert!(
            pwned.exists(),
            "the control attack failed: the test proves nothing"
        );
    }
    let _ = std::fs::remove_file(&pwned);

    // With a terminal: the agent gets its own pty.
    let transcript = on_a_terminal(
        &sb,
        &[
            (
                &format!("{bin} exec coder -- python3 {inject}; echo after-$((6*7))\n"),
                "after-42",
            ),
            ("echo again-$((6*7))\n", "again-42"),
        ],
    );
    assert!(!pwned.exists(), "TIOCSTI through the pty ran: {transcript}");
    // Without a terminal on any standard stream: no controlling terminal either.
    let transcript = on_a_terminal(
        &sb,
        &[
            (
                &format!(
                    "{bin} exec coder -- python3 {inject} </dev/null 2>&1 | cat; echo rc-$((6*7))\n"
                ),
                "rc-42",
            ),
            ("echo again-$((6*7))\n", "again-42"),
        ],
    );
    assert!(transcript.contains("INJECTED 0"), "{transcript}");
    assert!(!pwned.exists(), "TIOCSTI without a tty ran: {transcript}");
}

#[test]
fn the_terminal_works_like_a_terminal() {
    let sb = setup("runner-pty");
    let bin = sb.bin.display().to_string();
    // Every step ends with output of the caller's shell, so the next one is not typed ahead
    // into the previous run's relay.
    let transcript = on_a_terminal(
        &sb,
        &[
            // The agent's own pty, owned by the agent; the caller's window size.
            (
                &format!(
                    "stty rows 33 cols 111; {bin} exec coder -- sh -c 'stat -c %U $(tty); stty size'; \
                     echo s-$((0+1))\n"
                ),
                "s-1",
            ),
            // Window size changes follow.
            (
                &format!(
                    "{bin} exec coder -- sh -c 'trap \"stty size; exit\" WINCH; echo armed; \
                     while :; do sleep 0.05; done'; echo s-$((1+1))\n"
                ),
                "armed\r\n",
            ),
            ("winsize:40:120", "s-2"),
            // Ctrl-C reaches the agent's foreground job.
            // The command says when it runs (so the ^C is not typed before the relay is
            // up), then becomes the sleep.
            (
                &format!(
                    "{bin} exec coder -- sh -c 'echo go-$((1+2)); exec sleep 100'; \
                     echo rc-$?-$((1+2))\n"
                ),
                "go-3",
            ),
            ("\x03", "rc-130-3"),
            // Raw mode is restored: the caller's terminal is canonical with echo again.
            (
                "stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | sort | tr '\\n' +; echo\n",
                "echo+icanon+",
            ),
            // Job control in the login shell.
            (&format!("{bin} shell coder; echo s-$((2+2))\n"), "$ "),
            ("sh -c 'echo sl-$((2+3)); exec sleep 100'\n", "sl-5"),
            ("\x1a", "Stopped"),
            // SIGKILL (a stopped job would hold SIGTERM), then wait until bash has reaped it:
            // an `exit` typed before that meets "There are stopped jobs".
            (
                "kill -KILL %1; while jobs -s | grep -q .; do sleep 0.1; done; \
                 echo shell-ok-$((1+1))\n",
                "shell-ok-2",
            ),
            ("exit\n", "s-4"),
        ],
    );
    assert!(transcript.contains("agent-coder\r\n33 111"), "{transcript}");
    assert!(transcript.contains("40 120"), "{transcript}");
}

#[test]
fn the_owners_home_processes_and_temp_files_are_out_of_sight() {
    let sb = setup("runner-view");
    // A process of the owner with a secret in its argv, and a file in the shared /tmp.
    let owner_proc = Background(sb.spawn(sb.command_as(
        "alice",
        &["bash", "-c", "exec -a 'mysql --password=hunter2' sleep 60"],
    )));
    let cmdline = format!("/proc/{}/cmdline", owner_proc.id());
    assert!(eventually(
        || std::fs::read_to_string(&cmdline).is_ok_and(|c| c.contains("hunter2"))
    ));
    sb.sh("echo owner-temp > /tmp/owner-file && chmod 644 /tmp/owner-file")
        .ok();
    // Control: a plain uid switch reaches all of it.
    let control = sb
        .sh_as(
            "agent-coder",
            "cat /home/alice/secret644; cat /proc/*/cmdline | tr '\\0' ' ' | grep -c 'hunter[2]'; \
             cat /tmp/owner-file",
        )
        .stdout;
    assert!(
        control.contains("readable") && control.contains("owner-temp"),
        "control: {control}"
    );
    assert!(control.lines().any(|l| l == "1"), "control: {control}");

    for script in [
        "cat /home/alice/secret600",
        "cat /home/alice/secret644",
        "ls /home/alice",
        "cat /tmp/owner-file",
    ] {
        let out = exec(&sb, "coder", script);
        assert_ne!(out.code, 0, "{script} worked: {out:#?}");
        assert!(!out.stdout.contains("topsecret") && !out.stdout.contains("readable"));
    }
    let out = exec(
        &sb,
        "coder",
        "ls -A /home /root /run/user 2>/dev/null | grep -v ':$' | grep .; echo end",
    )
    .ok();
    assert_eq!(
        out.stdout.trim(),
        "end",
        "hidden directories list: {out:#?}"
    );
    // Only the agent's own processes (and its init) are visible, and no argv of others.
    let out = exec(
        &sb,
        "coder",
        "cat /proc/*/cmdline | tr '\\0' ' ' | grep -c 'hunter[2]'; ls -d /proc/[0-9]* | wc -l",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "0", "owner argv visible: {out:#?}");
    let visible: u32 = lines[1].trim().parse().unwrap();
    assert!(visible <= 6, "{visible} processes visible: {out:#?}");
    // Its own home is there and writable; its /tmp is private and gone afterwards.
    exec(
        &sb,
        "coder",
        "echo mine > ~/note && cat ~/note && echo t > /tmp/agent-file && test -w /dev/shm",
    )
    .ok();
    assert!(!sb.host_path("/tmp/agent-file").exists());
    assert!(
        sb.host_path("/var/lib/agentuser/homes/agent-coder/note")
            .exists()
    );
    drop(owner_proc);
}

#[test]
fn descriptors_environment_and_privileges_do_not_leak() {
    let sb = setup("runner-leaks");
    let bin = sb.bin.display().to_string();
    // A descriptor root opened before exec.
    let out = sb.sh(&format!(
        "exec 9</home/alice/secret600; {bin} exec coder -- sh -c 'cat <&9; ls /proc/self/fd'"
    ));
    assert!(!out.stdout.contains("topsecret"), "fd 9 readable: {out:#?}");
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert!(
        fds.len() <= 4,
        "descriptors above 2 reached the agent: {out:#?}"
    );

    // Canary variables in the caller's environment.
    let mut cmd = sb.command(&[&bin, "exec", "coder", "--env", "CHOSEN=yes", "--", "env"]);
    for (name, value) in [
        ("GITHUB_TOKEN", "canary-gh"),
        ("SSH_AUTH_SOCK", "/tmp/canary-ssh"),
        ("AWS_SECRET_ACCESS_KEY", "canary-aws"),
        ("LD_PRELOAD", "/tmp/canary.so"),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/tmp/canary"),
        ("LC_ALL", "/tmp/canary-locale"),
        ("TERM", "xterm-256color"),
    ] {
        cmd.env(name, value);
    }
    let out = sb.run(cmd).ok();
    assert!(
        !out.stdout.contains("canary"),
        "canary leaked: {}",
        out.stdout
    );
    for wanted in [
        "HOME=/var/lib/agentuser/homes/agent-coder",
        "USER=agent-coder",
        "LOGNAME=agent-coder",
        // The agent's own directories for user-level installs, then the config's.
        "PATH=/var/lib/agentuser/homes/agent-coder/.local/bin:\
         /var/lib/agentuser/homes/agent-coder/bin:/var/lib/agentuser/homes/agent-coder/.cargo/bin:\
         /usr/local/bin:/usr/bin:/bin",
        "TERM=xterm-256color",
        "CHOSEN=yes",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == wanted),
            "{wanted}: {}",
            out.stdout
        );
    }
    sb.root(&["exec", "coder", "--env", "1BAD=x", "--", "true"])
        .fails(2, "invalid variable name");

    // No way back to root: setuid(0), sudo, a setuid binary.
    let out = exec(
        &sb,
        "coder",
        "python3 -c 'import os; os.setuid(0)' 2>/dev/null && echo SETUID-WORKED; \
         sudo -n id 2>/dev/null && echo SUDO-WORKED; grep -E '^(NoNewPrivs|CapEff|CapPrm)' /proc/self/status",
    );
    assert!(!out.stdout.contains("WORKED"), "{out:#?}");
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{out:#?}");
    assert!(out.stdout.contains("CapEff:\t0000000000000000"), "{out:#?}");
}

#[test]
fn nothing_the_agent_starts_outlives_the_run() {
    let sb = setup("runner-daemon");
    exec(
        &sb,
        "coder",
        "setsid sh -c 'sleep 1000' </dev/null >/dev/null 2>&1 & (nohup sleep 1000 >/dev/null 2>&1 &); echo started",
    )
    .ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let left = sb.processes_in_range();
    assert!(
        left.is_empty(),
        "agent processes survived the run: {left:?}"
    );
}

/// `--network none` keeps a network namespace per slot for the agent's next runs
/// (network::pool): one run after another joins the same one, two at once never share one,
/// nothing the previous run left listening is there for the next (its processes are gone
/// with it), and `delete` unmounts them. All in one mount namespace, where the pins live.
#[test]
fn none_namespaces_are_kept_between_runs_never_shared_and_left_clean() {
    let sb = setup("runner-netns-kept");
    // Another agent's slots in the same directory do not make this one's grow (each run
    // below must find the agent's one slot).
    sb.as_user("alice", &["create", "coder2"]).ok();
    let port = 20000 + (sb.uid_base / 1000) % 20000;
    let listen = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n\
         s.listen(4)\nprint('listening', flush=True)\ntime.sleep(30)"
    );
    let connect = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n\
         \x20   print('reached-' + 'listener')\nexcept OSError:\n    print('nothing-' + 'there')"
    );
    let script = format!(
        r#"B={bin}
for i in 1 2 3 4; do $B exec coder2 --network none -- sleep 1 & done; sleep 0.5
ns() {{ $B exec coder --network none -- readlink /proc/self/ns/net; }}
echo "first=$(ns)"
$B exec coder --network none -- /bin/sh -c 'python3 -c "$1" & sleep 1; echo "left=$(readlink /proc/self/ns/net)"; python3 -c "$2"' sh "$LISTEN" "$CONNECT"
$B exec coder --network none -- /bin/sh -c 'echo "next=$(readlink /proc/self/ns/net)"; python3 -c "$1"' sh "$CONNECT"
$B exec coder --network none -- /bin/sh -c 'echo "long=$(readlink /proc/self/ns/net)"; sleep 2' > /tmp/long &
sleep 1
echo "beside=$(ns)"
wait
cat /tmp/long
$B delete coder >/dev/null 2>&1
echo "pins=$(grep -c 'agentuser/netns/coder\.' /proc/self/mountinfo) files=$(ls -A /var/lib/agentuser/netns | grep -c '^coder\.')"
"#,
        bin = sb.bin.display()
    );
    let mut cmd = sb.command(&["/bin/sh", "-c", &script]);
    cmd.env("LISTEN", &listen).env("CONNECT", &connect);
    let out = sb.run(cmd).ok();
    let value = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_string()
    };
    let first = value("first");
    assert!(first.starts_with("net:["), "{out:#?}");
    // Kept: the same namespace, run after run.
    assert_eq!(value("left"), first, "{out:#?}");
    assert_eq!(value("next"), first, "{out:#?}");
    // The listener was there during its run (the check below can fail), and gone after.
    let lines: Vec<&str> = out.stdout.lines().collect();
    let left_at = lines.iter().position(|l| l.starts_with("left=")).unwrap();
    let next_at = lines.iter().position(|l| l.starts_with("next=")).unwrap();
    assert!(
        lines[left_at..next_at].contains(&"reached-listener"),
        "{out:#?}"
    );
    assert!(lines[next_at..].contains(&"nothing-there"), "{out:#?}");
    // Two at once: each its own.
    assert_eq!(value("long"), first, "{out:#?}");
    assert!(value("beside").starts_with("net:["), "{out:#?}");
    assert_ne!(value("beside"), value("long"), "{out:#?}");
    assert_eq!(value("pins"), "0 files=0", "{out:#?}");
}

#[test]
fn loopback_services_need_network_none_abstract_sockets_are_scoped() {
    let sb = setup("runner-network");
    let port = 20000 + (sb.uid_base / 1000) % 20000;
    let (listener, _) = Background::start(sb.command(&[
        "python3",
        "-c",
        &format!(
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1',{port}))\ns.listen(16)\nprint('up',flush=True)\ntime.sleep(60)"
        ),
    ]));
    let probe = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1',{port}),timeout=3); print('CONNECTED')\" 2>/dev/null; \
         python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print('LOOPBACK-UP')\"; \
         echo \"congestion=$(cat /proc/sys/net/ipv4/tcp_congestion_control)\""
    );
    let host = sb.root(&[
        "exec",
        "coder",
        "--network",
        "host",
        "--",
        "/bin/sh",
        "-c",
        &probe,
    ]);
    assert!(host.stdout.contains("CONNECTED"), "host network: {host:#?}");
    let default = exec(&sb, "coder", &probe);
    assert!(
        !default.stdout.contains("CONNECTED"),
        "the default (allowlist) network reached the host's loopback: {default:#?}"
    );
    let none = sb.root(&[
        "exec",
        "coder",
        "--network",
        "none",
        "--",
        "/bin/sh",
        "-c",
        &probe,
    ]);
    assert!(
        !none.stdout.contains("CONNECTED"),
        "--network none reached the host: {none:#?}"
    );
    assert!(none.stdout.contains("LOOPBACK-UP"), "{none:#?}");
    // Namespaces of agentuser's own have loopback connections only, which need no pacing
    // (network/netns.rs); the host's keeps its own setting.
    assert!(none.stdout.contains("congestion=reno"), "{none:#?}");
    assert!(default.stdout.contains("congestion=reno"), "{default:#?}");
    drop(listener);

    // An abstract unix socket of root's (like X11's @/tmp/.X11-unix/X0) on the host network.
    let name = format!("agentuser-test-{port}");
    let (abstract_listener, _) = Background::start(sb.command(&[
        "python3",
        "-c",
        &format!(
            "import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\ns.listen(16)\nprint('up',flush=True)\ntime.sleep(60)"
        ),
    ]));
    let probe = format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('\\0{name}'); print('CONNECTED')\""
    );
    let control = sb.sh_as("agent-coder", &probe);
    assert!(
        control.stdout.contains("CONNECTED"),
        "control: {control:#?}"
    );
    // The kernel's Landlock ABI, as agentuser's doctor reads it (unsafe stays in src/sys).
    let abi = agentuser::sys::landlock::landlock_abi().unwrap_or(0);
    let landlock_abi6 = abi >= 6;
    eprintln!("Landlock ABI {abi}");
    let out = exec(&sb, "coder", &probe);
    if landlock_abi6 {
        assert!(
            !out.stdout.contains("CONNECTED"),
            "abstract socket reached: {out:#?}"
        );
    }
    drop(abstract_listener);
}

#[test]
fn signals_reach_the_agent_and_pipes_are_binary_safe() {
    use std::io::{BufRead, Read, Write};
    let sb = setup("runner-signals");
    let bin = sb.bin.display().to_string();
    for (sig, name) in [
        (nix::sys::signal::Signal::SIGTERM, "TERM"),
        (nix::sys::signal::Signal::SIGHUP, "HUP"),
        (nix::sys::signal::Signal::SIGINT, "INT"),
    ] {
        let script = format!(
            "trap 'echo got-{name}; exit 3' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let mut child = sb.spawn(sb.command(&[&bin, "exec", "coder", "--", "sh", "-c", &script]));
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(rest.trim(), format!("got-{name}"));
        assert_eq!(status.code(), Some(3), "{name}");
    }

    // 10 MiB of every byte value through stdin and stdout, EOF included.
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut cmd = sb.command(&[&bin, "exec", "coder", "--", "cat"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
    let mut echoed = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut echoed)
        .unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        echoed == data,
        "round trip differs ({} bytes back)",
        echoed.len()
    );
}

#[test]
fn only_root_and_the_owner_may_run_the_agent() {
    let sb = setup("runner-setuid");
    sb.add_user("bob", &["agentuser"]);
    let uid = sb.show("coder")["uid"].as_u64().unwrap();
    let out = sb
        .as_user("alice", &["exec", "coder", "--", "id", "-u"])
        .ok();
    assert_eq!(out.stdout.trim(), uid.to_string());
    let out = sb.as_user(
        "alice",
        &["exec", "coder", "--", "cat", "/home/alice/secret600"],
    );
    assert_ne!(out.code, 0, "{out:#?}");
    sb.as_user("bob", &["exec", "coder", "--", "id"])
        .fails(125, "no such agent");
    sb.as_user("bob", &["shell", "coder"])
        .fails(125, "no such agent");
    sb.as_user("agent-coder", &["exec", "coder", "--", "id"])
        .fails(125, "agent accounts may not use agentuser");
}

#[test]
fn killing_the_runner_takes_the_agent_down() {
    let sb = setup("runner-sigkill");
    let child = sb.spawn(sb.command(&[
        sb.bin.to_str().unwrap(),
        "exec",
        "coder",
        "--",
        "sh",
        "-c",
        "sleep 1000 & sleep 1000",
    ]));
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        !sb.processes_in_range().is_empty(),
        "the agent did not start"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait_with_output();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let left = sb.processes_in_range();
    assert!(
        left.is_empty(),
        "agent processes outlived a killed runner: {left:?}"
    );
}

#[test]
fn the_callers_keyring_and_a_refused_account_stay_out() {
    let sb = setup("runner-keyring");
    // A key in the caller's session keyring is not possessed by the agent.
    let bin = sb.bin.display().to_string();
    let out = sb.sh(&format!(
        "keyctl new_session >/dev/null; \
         keyctl add user canary-key canary-secret @s >/dev/null; \
         setpriv --reuid agent-coder --regid agent-coder --clear-groups \
           sh -c 'keyctl search @s user canary-key >/dev/null && echo CONTROL-FOUND'; \
         {bin} exec coder -- sh -c 'keyctl show @s; keyctl search @s user canary-key && echo FOUND'"
    ));
    // Control: a plain uid switch in the same session possesses the key.
    assert!(out.stdout.contains("CONTROL-FOUND"), "{out:#?}");
    let agent = out.stdout.replace("CONTROL-FOUND", "");
    assert!(
        !agent.contains("FOUND") && !agent.contains("canary-key"),
        "{out:#?}"
    );
    // An account PAM refuses (expired) is not run.
    sb.sh("chage -E 1 agent-coder").ok();
    let out = exec(&sb, "coder", "echo RAN");
    assert_eq!(out.code, 125, "{out:#?}");
    assert!(!out.stdout.contains("RAN"));
    assert!(out.stderr.contains("account check refused"), "{out:#?}");
    assert!(sb.processes_in_range().is_empty());
}

#[test]
fn the_agent_runs_under_its_pam_limits() {
    let sb = setup("runner-limits");
    // limits.conf applies to the agent, not the unlimited limits of the privileged runner.
    sb.sh(
        "echo 'agent-coder hard nofile 1234' >> /etc/security/limits.conf && \
           echo 'agent-coder soft nproc 777' >> /etc/security/limits.conf",
    )
    .ok();
    let out = exec(&sb, "coder", "ulimit -Hn; ulimit -Sp").ok();
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["1234", "777"],
        "{out:#?}"
    );
}

#[test]
fn pam_setcred_never_falls_through_to_the_other_service() {
    let sb = setup("runner-pam-other");
    // A host whose fallback service refuses everything, as Fedora's /etc/pam.d/other does.
    sb.sh(
        "printf 'auth required pam_deny.so\\naccount required pam_deny.so\\n\
         password required pam_deny.so\\nsession required pam_deny.so\\n' > /etc/pam.d/other",
    )
    .ok();
    let out = exec(&sb, "coder", "echo RAN").ok();
    assert!(out.stdout.contains("RAN"), "{out:#?}");
    let out = sb
        .as_user(
            "alice",
            &["exec", "coder", "--", "/bin/sh", "-c", "echo RAN"],
        )
        .ok();
    assert!(out.stdout.contains("RAN"), "{out:#?}");
    let doctor = sb.root(&["doctor"]);
    assert!(!doctor.stdout.contains("no auth lines"), "{doctor:#?}");
    // Control: the service file without its auth lines (as installed before 2026-12-02)
    // sends pam_setcred to `other`, which refuses the run; doctor says so.
    sb.sh("sed -i '/^auth/d' /etc/pam.d/agentuser").ok();
    let out = exec(&sb, "coder", "echo RAN");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(!out.stdout.contains("RAN"), "{out:#?}");
    let doctor = sb.root(&["doctor"]);
    assert!(doctor.stdout.contains("no auth lines"), "{doctor:#?}");
    assert!(sb.processes_in_range().is_empty());
}

/// Prints, between markers, what the test expects dropped (OSC 52 write and read, the title
/// and icon reports, DECRQSS, a 7-bit sequence split across two writes, an 8-bit one) and
/// what TUIs need (cursor position and colour queries, a hyperlink).
const SEQUENCES: &str = r#"
printf 'm1\033]52;c;cHduZWQ=\007m2\033]52;c;?\007m3\033[21tm4\033[20tm5\033P$qm\033\\m6'
printf '\033]5'; sleep 0.2; printf '2;c;c3BsaXQ=\007m7\2332\061tm8'
printf '\033[6nm9\033]11;?\007m10\033]8;;http://x/\033\\L\033]8;;\033\\m11\n'
"#;

#[test]
fn answerback_and_clipboard_sequences_never_reach_the_callers_terminal() {
    let sb = setup("runner-seq");
    let bin = sb.bin.display().to_string();
    let emit = work_file(&sb, "emit.sh", SEQUENCES);
    let transcript = on_a_terminal(
        &sb,
        &[
            // Control: a plain uid switch on the same terminal passes everything.
            (
                &format!(
                    "setpriv --reuid agent-coder --regid agent-coder --clear-groups sh {emit}; \
                     echo s-$((0+1))\n"
                ),
                "s-1",
            ),
            (
                &format!("{bin} exec coder -- sh {emit}; echo s-$((1+1))\n"),
                "s-2",
            ),
            (
                &format!(
                    "{bin} exec coder --allow-clipboard-write -- sh {emit}; echo s-$((1+2))\n"
                ),
                "s-3",
            ),
        ],
    );
    let steps: Vec<&str> = transcript.split("<<mark>>").collect();
    let (control, filtered, clipboard) = (steps[1], steps[2], steps[3]);
    let dangerous = [
        "\x1b]52;c;cHduZWQ=\x07",
        "\x1b]52;c;?\x07",
        "\x1b[21t",
        "\x1b[20t",
        "\x1bP$qm",
        "\x1b]52;c;c3BsaXQ=\x07",
    ];
    for seq in dangerous {
        assert!(control.contains(seq), "control lacks {seq:?}: {control:?}");
        assert!(!filtered.contains(seq), "{seq:?} reached: {filtered:?}");
    }
    assert!(control.contains("m7\u{fffd}21tm8"), "{control:?}");
    let needed = ["m8\x1b[6nm9\x1b]11;?\x07m10\x1b]8;;http://x/\x1b\\L\x1b]8;;\x1b\\m11"];
    for text in ["m1m2m3m4m5m6", "m7m8", needed[0]] {
        assert!(filtered.contains(text), "{text:?} missing: {filtered:?}");
    }
    // The opt-out passes clipboard writes only.
    assert!(
        clipboard.contains("m1\x1b]52;c;cHduZWQ=\x07m2m3"),
        "{clipboard:?}"
    );
    assert!(
        clipboard.contains("\x1b]52;c;c3BsaXQ=\x07m7"),
        "{clipboard:?}"
    );
    assert!(!clipboard.contains("\x1b]52;c;?") && !clipboard.contains("[21t"));
}

/// The agent reads a line in its pty's cooked mode, then one key in raw mode: the key only
/// arrives when the caller's terminal is back in raw mode after `fg`.
const STOPPABLE: &str = r#"
import os, sys, tty
print('ready', flush=True)
sys.stdin.readline()
tty.setraw(0)
print('raw', flush=True)
sys.exit(7 if os.read(0, 1) == b'q' else 1)
"#;

#[test]
fn ctrl_z_stops_the_run_and_fg_resumes_it() {
    let sb = setup("runner-jobs");
    let bin = sb.bin.display().to_string();
    let stoppable = work_file(&sb, "stoppable.py", STOPPABLE);
    let bash = ["/bin/bash", "bash", "--norc", "--noprofile", "-i"];
    let ps = "ps -o stat=,args= -u agent-coder";
    let transcript = on_a_terminal_in(
        &sb,
        &bash,
        &[
            // A command that stops at Ctrl-Z, resumes in raw mode and exits with its status.
            (
                &format!("{bin} exec coder -- python3 {stoppable}\n"),
                "ready",
            ),
            ("\x1a", "Stopped"),
            (&format!("jobs; {ps}; echo j-$((1+2))\n"), "j-3"),
            // fg's status is the job's (a stopped job ends the list it was typed in).
            ("fg; echo rc-$?-$((1+1))\n", "exec coder"),
            ("line\n", "raw"),
            ("q", "rc-7-2"),
            // A command that ignores nothing: sleep stops, and a Ctrl-C after fg ends it.
            (
                &format!("{bin} exec coder -- sh -c 'echo ready-$((1+1)); exec sleep 100'\n"),
                "ready-2",
            ),
            ("\x1a", "Stopped"),
            (&format!("{ps}; echo p-$((2+3))\n"), "p-5"),
            ("fg; echo rc-$?-$((2+2))\n", "exec coder"),
            ("wait-job", ""),
            ("\x03", "rc-130-4"),
            // The agent's login shell itself stopping stops the run too.
            (&format!("{bin} shell coder\n"), "$ "),
            ("echo in-$((4+4)); kill -STOP $$\n", "Stopped"),
            (&format!("{ps}; echo p-$((3+4))\n"), "p-7"),
            ("fg; echo rc-$?-$((3+3))\n", "shell coder"),
            ("exit 3\n", "rc-3-6"),
        ],
    );
    let steps: Vec<&str> = transcript.split("<<mark>>").collect();
    // jobs shows the run stopped, and the agent's process is stopped (T), not running.
    assert!(steps[3].contains("Stopped"), "{}", steps[3]);
    assert!(
        steps[3]
            .lines()
            .any(|l| l.starts_with('T') && l.contains("stoppable.py")),
        "{}",
        steps[3]
    );
    assert!(
        steps[9]
            .lines()
            .any(|l| l.starts_with('T') && l.contains("sleep 100")),
        "{}",
        steps[9]
    );
    // The agent's login shell stopped itself, and so did the run.
    assert!(steps[14].contains("in-8"), "{}", steps[14]);
    assert!(
        steps[15]
            .lines()
            .any(|l| l.starts_with('T') && l.contains("bash")),
        "{}",
        steps[15]
    );
}
