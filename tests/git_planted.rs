//! Planted repositories (docs/threat-model.md row 23): the agent makes a repository-shaped entry
//! out of the owner's own files inside a read-write share, so the owner's git (whose ownership
//! check passes) would run the agent's config. Every attack runs as the agent's real uid; the
//! owner's git runs as the owner. A positive control shows each vector working in a plain
//! `setfacl -R` share. The payload only creates a marker file.

mod common;

use common::{Sandbox, eventually, on_a_terminal_in};

const PROJ: &str = "/home/alice/proj";

/// alice, her agent `coder` and an owner-owned tree `proj` with the directories and the
/// file the attacks reuse. Returns the agent's uid.
fn setup(sb: &Sandbox) -> u32 {
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        &format!(
            "mkdir -p {PROJ} && cd {PROJ} && mkdir docs src assets lib data tools shared app \
             && echo notes > lib/notes.txt && echo text > docs/readme"
        ),
    )
    .ok();
    sb.show("coder")["uid"].as_u64().unwrap() as u32
}

/// The four vectors, as the agent. Tolerant of steps failing: once the guard has renamed a
/// planted `.git`, the next step of the same vector finds nothing there.
fn attack_script() -> String {
    format!(
        r#"P={PROJ}
fsm() {{ printf '[core]\n\tfsmonitor = "touch /home/alice/PWNED-%s; false"\n' "$1"; }}
# 1. rename: an owner directory becomes src/.git and is filled.
mv $P/docs $P/src/.git
mkdir -p $P/src/.git/objects $P/src/.git/refs/heads
echo 'ref: refs/heads/main' > $P/src/.git/HEAD
fsm rename > $P/src/.git/config
# 2. gitfile: an owner file rewritten to point at an owner directory given a git layout.
mkdir -p $P/assets/objects $P/assets/refs/heads
echo 'ref: refs/heads/main' > $P/assets/HEAD
fsm gitfile > $P/assets/config
echo "gitdir: $P/assets" > $P/lib/notes.txt
mv $P/lib/notes.txt $P/lib/.git
# 3. bare layout in an owner directory.
mkdir -p $P/data/objects $P/data/refs/heads
echo 'ref: refs/heads/main' > $P/data/HEAD
printf '[core]\n\tsshCommand = "touch /home/alice/PWNED-bare; false"\n[remote "origin"]\n\turl = ssh://example.invalid/x\n' > $P/data/config
# 4. commondir: an owner directory becomes app/.git, its config comes from shared/.
mkdir -p $P/shared/objects $P/shared/refs/heads
fsm common > $P/shared/config
mv $P/tools $P/app/.git
echo 'ref: refs/heads/main' > $P/app/.git/HEAD
echo "$P/shared" > $P/app/.git/commondir
true
"#
    )
}

/// The owner's git in each planted place, as the owner (safe.bareRepository=all: the
/// default, which the bare-layout vector needs). Returns the markers that appeared.
fn owner_git_runs(sb: &Sandbox) -> Vec<String> {
    sb.sh_as(
        "alice",
        &format!(
            "cd {PROJ}/src && git status >/dev/null 2>&1; cd {PROJ}/lib && git status >/dev/null 2>&1; \
             cd {PROJ}/data && git -c safe.bareRepository=all fetch origin >/dev/null 2>&1; \
             cd {PROJ}/app && git status >/dev/null 2>&1; true"
        ),
    )
    .ok();
    ["rename", "gitfile", "bare", "common"]
        .iter()
        .filter(|v| sb.sh(&format!("test -e /home/alice/PWNED-{v}")).code == 0)
        .map(|v| v.to_string())
        .collect()
}

/// Whether any planted entry is still in a shape git honours (checked before the owner's
/// git ever runs in the protected case).
fn planted_entries_left(sb: &Sandbox) -> Vec<String> {
    [
        "src/.git",
        "lib/.git",
        "app/.git",
        "data/HEAD",
        "assets/HEAD",
    ]
    .iter()
    .filter(|p| {
        sb.sh(&format!("test -e {PROJ}/{p} || test -L {PROJ}/{p}"))
            .code
            == 0
    })
    .map(|p| p.to_string())
    .collect()
}

#[test]
fn control_every_vector_runs_as_the_owner_in_a_plain_acl_share() {
    let sb = Sandbox::new("planted-control");
    let uid = setup(&sb);
    sb.sh(&format!("setfacl -R -m u:{uid}:rwX,d:u:{uid}:rwX {PROJ}"))
        .ok();
    sb.sh_as("agent-coder", &attack_script()).ok();
    assert_eq!(
        owner_git_runs(&sb),
        ["rename", "gitfile", "bare", "common"],
        "the attack must work without agentuser's guard, or the other tests prove nothing"
    );
}

#[test]
fn planted_repositories_are_neutralised_and_the_owner_is_told() {
    let sb = Sandbox::new("planted-guard");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let log = sb.syslog_during(&format!(
        "setpriv --reuid alice --regid alice --init-groups -- {} exec coder -- /bin/sh -c '{}' 2>/tmp/exec.err",
        sb.bin.display(),
        attack_script().replace('\'', r"'\''")
    ));
    let told = std::fs::read_to_string(sb.host_path("/tmp/exec.err")).unwrap();
    assert_eq!(planted_entries_left(&sb), Vec::<String>::new(), "{told}");
    for place in ["src/.git", "lib/.git", "app/.git", "data", "assets"] {
        assert!(
            told.contains(&format!(
                "neutralised a repository planted by agent 'coder': {PROJ}/{place}"
            )),
            "the owner was not told about {place}: {told}"
        );
        assert!(
            log.contains(&format!("action=neutralise-repository path={PROJ}/{place}")),
            "not logged: {place}: {log}"
        );
    }
    assert_eq!(owner_git_runs(&sb), Vec::<String>::new());
    // Everything stays in place under its quarantine name, for the owner to inspect.
    let quarantined = sb.sh(&format!("ls -a {PROJ}/src {PROJ}/data")).ok().stdout;
    assert!(
        quarantined.contains(".git.agentuser-quarantine-"),
        "{quarantined}"
    );
    assert!(
        quarantined.contains("HEAD.agentuser-quarantine-"),
        "{quarantined}"
    );
}

#[test]
fn a_plant_is_neutralised_while_the_agent_still_runs() {
    let sb = Sandbox::new("planted-live");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let script = format!("{} touch {PROJ}/planted; exec sleep 60", attack_script());
    let run = sb.spawn(sb.exec_sh_command("alice", "coder", &script));
    let planted = eventually(|| sb.sh(&format!("test -e {PROJ}/planted")).code == 0);
    assert!(planted, "the agent never finished planting");
    assert!(
        eventually(|| planted_entries_left(&sb).is_empty()),
        "still usable during the run: {:?}",
        planted_entries_left(&sb)
    );
    assert_eq!(owner_git_runs(&sb), Vec::<String>::new());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = run.wait_with_output().unwrap();
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(told.contains(&format!("{PROJ}/src/.git")), "{told}");
}

/// Live protection does not depend on the terminal: the agent floods its pty while the
/// caller's terminal (a pty of `script`, whose own output nobody reads until the end) stops
/// taking output, so the runner blocks writing to it. The agent plants only once the runner
/// is seen blocked, and the runner is still blocked when the plants are found neutralised.
/// The watcher, a thread of its own, goes on. (A watcher served by the runner's loop
/// instead, tried on the way, left every plant usable for the whole run.)
#[test]
fn a_plant_is_neutralised_while_the_callers_terminal_is_stalled() {
    let sb = Sandbox::new("planted-flood");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let agent_script = format!(
        // Quiet itself: once a plant is neutralised, the next steps fail, and their errors
        // would wait for the stalled terminal.
        "yes flooding-the-terminal-while-planting & flood=$!\n\
         while [ ! -e {PROJ}/go ]; do sleep 0.05; done\n{{\n{}\n}} 2>/dev/null\ntouch {PROJ}/planted\n\
         while [ ! -e {PROJ}/stop ]; do sleep 0.1; done\nkill $flood\n",
        attack_script()
    );
    let script_path = format!("{PROJ}/flood.sh");
    sb.sh_as(
        "alice",
        &format!("cat > {script_path} <<'EOF'\n{agent_script}EOF"),
    )
    .ok();
    let command = format!("{} exec coder -- /bin/sh {script_path}", sb.bin.display());
    let run = sb.spawn(sb.command_as(
        "alice",
        &["script", "-q", "-e", "-c", &command, "/dev/null"],
    ));
    let runner = {
        let pid = run.id();
        move || runner_below(pid).is_some_and(blocked_writing)
    };
    let stalled = eventually(&runner);
    sb.sh_as("alice", &format!("touch {PROJ}/go")).ok();
    let planted = eventually(|| sb.sh(&format!("test -e {PROJ}/planted")).code == 0);
    let left = eventually(|| planted_entries_left(&sb).is_empty());
    let during = planted_entries_left(&sb);
    let still_stalled = runner();
    sb.sh_as("alice", &format!("touch {PROJ}/stop")).ok();
    let out = run.wait_with_output().unwrap();
    assert!(planted, "the agent never finished planting: {out:?}");
    assert!(
        stalled,
        "the runner never blocked on the terminal: the test proves nothing"
    );
    assert!(
        still_stalled,
        "the runner went on before the plants were neutralised: the test proves nothing"
    );
    assert!(left, "still usable during the run: {during:?}");
    assert_eq!(owner_git_runs(&sb), Vec::<String>::new());
}

/// The agent's script for the stop tests: a planter in the background that waits for `go`,
/// then the command announces itself and (with `stop`) stops itself, as a TUI suspending
/// does. Written into the share by the owner; returns its path.
fn stopping_script(sb: &Sandbox, stop: &str) -> String {
    let script = format!(
        "( while [ ! -e {PROJ}/go ]; do sleep 0.05; done
{{
{}
}} 2>/dev/null
         touch {PROJ}/planted ) &
echo started-$((1+1))
{stop}
wait
",
        attack_script()
    );
    let path = format!("{PROJ}/stopping.sh");
    sb.sh_as("alice", &format!("cat > {path} <<'EOF'\n{script}EOF"))
        .ok();
    path
}

/// What the owner types while the run is stopped: `go` for the planter, a wait for its
/// work to show (at most 3 s: with the agent stopped, it never does), then git in every
/// planted place.
fn while_stopped() -> String {
    format!(
        "touch {PROJ}/go; for i in $(seq 30); do test -e {PROJ}/planted && break; sleep 0.1; \
         done; test -e {PROJ}/planted && echo PLANTED-during-$((2+2)); \
         (cd {PROJ}/src && git status; cd {PROJ}/lib && git status; cd {PROJ}/app && git status; \
         cd {PROJ}/data && git -c safe.bareRepository=all fetch origin) >/dev/null 2>&1; \
         ls /home/alice | sed -n 's/^PWN/ran-PWN/p'; echo w-$((1+3))\n"
    )
}

/// Asserts that nothing the agent did ran while its run was stopped, and that the planter
/// did work once continued (else the test proves nothing).
fn assert_nothing_ran_while_stopped(sb: &Sandbox, transcript: &str) {
    let steps: Vec<&str> = transcript.split("<<mark>>").collect();
    let during = steps.iter().find(|s| s.contains("w-4")).unwrap();
    assert!(!during.contains("PLANTED-during-4"), "{transcript}");
    assert!(!during.contains("ran-PWNED"), "{transcript}");
    assert!(
        sb.sh(&format!("test -e {PROJ}/planted")).code == 0,
        "the planter never ran, even after fg: the test proves nothing\n{transcript}"
    );
    assert_eq!(planted_entries_left(sb), Vec::<String>::new());
    assert_eq!(owner_git_runs(sb), Vec::<String>::new());
}

/// The owner's interactive bash on a terminal of its own.
const ALICE_BASH: [&str; 9] = [
    "/usr/bin/setpriv",
    "setpriv",
    "--reuid=alice",
    "--regid=alice",
    "--init-groups",
    "/bin/bash",
    "--norc",
    "--noprofile",
    "-i",
];

/// Shares the project, writes the agent's script (with `stop` after its announcement) and
/// has alice's shell on a terminal type `start` (given agentuser's path and the script's),
/// then the steps of a stopped run: the owner's work while it is stopped, then `fg`.
/// Returns the sandbox and the transcript (see `assert_nothing_ran_while_stopped`).
fn a_stopped_run(
    name: &str,
    stop: &str,
    start: impl Fn(&str, &str) -> Vec<(String, &'static str)>,
) -> (Sandbox, String) {
    let sb = Sandbox::new(name);
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let script = stopping_script(&sb, stop);
    let mut steps = start(&sb.bin.display().to_string(), &script);
    steps.push((while_stopped(), "w-4"));
    steps.push(("fg; echo rc-$?-$((2+3))\n".into(), "rc-0-5"));
    let steps: Vec<(&str, &str)> = steps.iter().map(|(s, e)| (s.as_str(), *e)).collect();
    let transcript = on_a_terminal_in(&sb, &ALICE_BASH, &steps);
    (sb, transcript)
}

#[test]
fn nothing_of_the_agent_runs_while_its_command_is_stopped() {
    let (sb, transcript) = a_stopped_run("planted-ctrlz", "kill -STOP $$", |bin, script| {
        vec![(format!("{bin} exec coder -- /bin/sh {script}\n"), "Stopped")]
    });
    assert_nothing_ran_while_stopped(&sb, &transcript);
}

#[test]
fn nothing_of_the_agent_runs_while_its_run_is_stopped_in_the_background() {
    let (sb, transcript) = a_stopped_run("planted-bg", "", |bin, script| {
        vec![
            (
                format!("{bin} exec coder -- /bin/sh {script} &\n"),
                "started-2",
            ),
            // Typed while the shell runs `sleep` and reads nothing: the run, a job in the
            // background, reads the terminal and stops.
            ("sleep 3; jobs; echo j-$((1+2))\n".into(), ""),
            ("\n".into(), "j-3"),
        ]
    });
    let steps: Vec<&str> = transcript.split("<<mark>>").collect();
    assert!(
        steps[3].contains("Stopped"),
        "the run did not stop at the terminal: {transcript}"
    );
    assert_nothing_ran_while_stopped(&sb, &transcript);
}

/// The watcher acts on what the agent's processes do, never on a live process of the
/// owner's: a repository the owner makes in the read-write share while the agent runs is
/// left alone. (The check of an event's process once failed for every event, through an
/// ioctl called with a stray argument, and every event then counted as the agent's: the
/// owner's `git init` broke half-way.) The owner's process stays alive until the run ends,
/// since an event whose process is gone counts as the agent's. The agent's own plants in
/// the same run are neutralised: the watcher was working.
#[test]
fn a_repository_a_live_owner_process_makes_during_a_run_is_left_alone() {
    let sb = Sandbox::new("planted-owner-during");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let script = format!(
        "touch {PROJ}/ready; while [ ! -e {PROJ}/done ]; do sleep 0.05; done; {}",
        attack_script()
    );
    let run = sb.spawn(sb.exec_sh_command("alice", "coder", &script));
    assert!(eventually(
        || sb.sh(&format!("test -e {PROJ}/ready")).code == 0
    ));
    let owner = format!(
        "import os, time\n\
         g = '{PROJ}/fresh/.git'\n\
         for d in ('objects', 'refs/heads'): os.makedirs(g + '/' + d)\n\
         open(g + '/HEAD', 'w').write('ref: refs/heads/main\\n')\n\
         open(g + '/config', 'w').write('[core]\\n\\tbare = false\\n')\n\
         open('{PROJ}/done', 'w').close()\n\
         time.sleep(60)\n"
    );
    let mut owner = sb.spawn(sb.command_as("alice", &["python3", "-c", &owner]));
    let out = run.wait_with_output().unwrap();
    let _ = owner.kill();
    let _ = owner.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("/fresh"), "{stderr}");
    assert_eq!(
        sb.sh(&format!("test -f {PROJ}/fresh/.git/HEAD")).code,
        0,
        "{stderr}"
    );
    assert!(
        stderr.contains("neutralised a repository planted"),
        "the agent's plants were not neutralised: the test proves nothing\n{stderr}"
    );
    assert_eq!(planted_entries_left(&sb), Vec::<String>::new());
}

/// The runner among the descendants of `ancestor`: a process called agentuser whose parent
/// is not (init, its child, is called agentuser too).
fn runner_below(ancestor: u32) -> Option<u32> {
    let field = |pid: u32, name: &str| -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let parent = |pid: u32| field(pid, "PPid:").and_then(|p| p.parse::<u32>().ok());
    let below = |mut pid: u32| {
        for _ in 0..16 {
            match parent(pid) {
                Some(p) if p == ancestor => return true,
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            field(pid, "Name:").as_deref() == Some("agentuser")
                && parent(pid).and_then(|p| field(p, "Name:")).as_deref() != Some("agentuser")
                && below(pid)
        })
}

/// Whether `pid`'s main thread is in write(2) (/proc/PID/syscall: the number first).
fn blocked_writing(pid: u32) -> bool {
    let write = libc::SYS_write.to_string();
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some(write.as_str()))
}

/// Shares `proj` read-write; a run plants while its runner is stopped (so it sees nothing),
/// then the runner is killed (so it can sweep nothing either).
fn plant_while_the_runner_is_stopped_then_kill_it(sb: &Sandbox) {
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let script = format!(
        "touch {PROJ}/ready; while [ ! -e {PROJ}/go ]; do sleep 0.05; done; {} touch {PROJ}/planted; exec sleep 60",
        attack_script()
    );
    let mut run = sb.spawn(sb.exec_sh_command("alice", "coder", &script));
    let runner = nix::unistd::Pid::from_raw(run.id() as i32);
    assert!(eventually(
        || sb.sh(&format!("test -e {PROJ}/ready")).code == 0
    ));
    nix::sys::signal::kill(runner, nix::sys::signal::Signal::SIGSTOP).unwrap();
    sb.sh_as("alice", &format!("touch {PROJ}/go")).ok();
    assert!(eventually(|| sb
        .sh(&format!("test -e {PROJ}/planted"))
        .code
        == 0));
    nix::sys::signal::kill(runner, nix::sys::signal::Signal::SIGKILL).unwrap();
    run.wait().unwrap();
    // The plant survived the run (what is left to clean up).
    assert!(
        !planted_entries_left(sb).is_empty(),
        "nothing was left to recover: the test proves nothing"
    );
}

#[test]
fn a_run_whose_runner_was_killed_is_swept_by_the_next_exec() {
    let sb = Sandbox::new("planted-killed");
    setup(&sb);
    plant_while_the_runner_is_stopped_then_kill_it(&sb);
    let next = sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
    assert!(
        next.stderr.contains("ended without its runner"),
        "{next:#?}"
    );
    assert!(
        next.stderr.contains(&format!("{PROJ}/src/.git")),
        "{next:#?}"
    );
    assert_eq!(planted_entries_left(&sb), Vec::<String>::new());
    assert_eq!(owner_git_runs(&sb), Vec::<String>::new());
}

#[test]
fn the_owners_repositories_keep_working_and_are_never_touched() {
    let sb = Sandbox::new("planted-owner");
    setup(&sb);
    let commit = "git -c user.name=a -c user.email=a@b commit -qm";
    sb.sh_as(
        "alice",
        &format!("mkdir {PROJ}/own && cd {PROJ}/own && git init -q && echo a > a && git add a && {commit} a"),
    )
    .ok();
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    // Made while no agent runs, after the share.
    sb.sh_as(
        "alice",
        &format!("mkdir {PROJ}/later && cd {PROJ}/later && git init -q && echo b > b && git add b && {commit} b"),
    )
    .ok();
    let identity = |repo: &str| {
        sb.sh(&format!(
            "stat -c %i {PROJ}/{repo}/.git && cat {PROJ}/{repo}/.git/HEAD"
        ))
        .ok()
        .stdout
    };
    let before = (identity("own"), identity("later"));
    // The agent works in the share, plants elsewhere, and runs git in the owner's trees.
    let script = format!(
        "echo x > {PROJ}/own/x; echo y > {PROJ}/later/y; mkdir {PROJ}/new; \
         cd {PROJ}/own && git status >/dev/null; {}",
        attack_script()
    );
    let run = sb.exec_sh("alice", "coder", &script).ok();
    assert!(!run.stderr.contains("/own"), "{run:#?}");
    assert!(!run.stderr.contains("/later"), "{run:#?}");
    assert_eq!((identity("own"), identity("later")), before);
    for repo in ["own", "later"] {
        sb.sh_as(
            "alice",
            &format!("cd {PROJ}/{repo} && git add -A && {commit} more && git log --oneline | wc -l | grep -qx 2"),
        )
        .ok();
    }
    // A repository the owner makes between runs survives the next one too.
    sb.sh_as(
        "alice",
        &format!("mkdir {PROJ}/third && cd {PROJ}/third && git init -q"),
    )
    .ok();
    let third = sb.sh(&format!("stat -c %i {PROJ}/third/.git")).ok().stdout;
    sb.exec_sh("alice", "coder", &format!("echo z > {PROJ}/third/z"))
        .ok();
    assert_eq!(
        sb.sh(&format!("stat -c %i {PROJ}/third/.git")).ok().stdout,
        third
    );
    sb.sh_as(
        "alice",
        &format!("cd {PROJ}/third && git status >/dev/null"),
    )
    .ok();
}

/// Concurrent runs of one agent never take each other for a run whose runner died: each
/// run's marker is locked before it appears, so no run fails on its marker and no run
/// sweeps the shares under another (issue 15 item 8).
#[test]
fn concurrent_runs_of_one_agent_never_take_each_other_for_dead_ones() {
    let sb = Sandbox::new("planted-concurrent");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    // One run after another takes the same marker slot again: no file is made per run.
    for _ in 0..3 {
        sb.as_user(
            "alice",
            &["exec", "coder", "--network", "none", "--", "/bin/true"],
        )
        .ok();
    }
    let slots = sb.sh("ls -A /var/lib/agentuser/runs").ok().stdout;
    assert_eq!(slots.trim(), "coder.0.json", "{slots}");
    // The race is narrow (between a marker's creation and its lock): several rounds.
    for _ in 0..3 {
        let children: Vec<_> = (0..40)
            .map(|_| {
                let cmd = sb.user_command(
                    "alice",
                    &["exec", "coder", "--network", "none", "--", "/bin/true"],
                );
                sb.spawn(cmd)
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(!stderr.contains("ended without its runner"), "{stderr}");
        }
    }
    // `none` runs kept their network namespaces in slots (network::pool), one run each at
    // a time: never more slots than runs at once.
    let slots = sb
        .sh("ls /var/lib/agentuser/netns | grep -c '^coder\\.[0-9]*\\.lock$'")
        .ok()
        .stdout;
    let slots: usize = slots.trim().parse().unwrap();
    assert!(
        (1..=40).contains(&slots),
        "{slots} namespace slots for 40 runs at once"
    );
    // Nothing in the runs directory records a run (the slots are blank), and no temporary
    // marker is left.
    let left = sb
        .sh("cd /var/lib/agentuser/runs && for f in $(ls -A); do echo \"$f $(tr -d ' ' < $f | wc -c)\"; done")
        .ok()
        .stdout;
    assert!(
        !left.is_empty(),
        "no marker slot: the runs recorded nothing"
    );
    for line in left.lines() {
        let (name, size) = line.split_once(' ').unwrap();
        assert!(!name.starts_with('.'), "temporary marker left: {left}");
        assert_eq!(
            size, "0",
            "a marker still records a run (non-blank bytes): {left}"
        );
    }
}

/// The first runs of an agent, made at once, all start: the state directory they make on
/// the way (`runs/`, for the markers) may be made by another of them meanwhile. The window
/// is narrow: rounds of runs started together, each round on a state without `runs/`.
#[test]
fn first_runs_made_at_once_all_start() {
    let sb = Sandbox::new("planted-first-runs");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let bin = sb.bin.display().to_string();
    for round in 0..10 {
        let out = sb.sh(&format!(
            "rm -rf /var/lib/agentuser/runs; \
             for i in $(seq 30); do \
               {bin} exec coder --network host -- /bin/true 2>>/tmp/first-runs.err \
                 || echo FAILED >>/tmp/first-runs.err & \
             done; wait; cat /tmp/first-runs.err; rm -f /tmp/first-runs.err"
        ));
        assert!(
            !out.stdout.contains("FAILED"),
            "round {round}: {}",
            out.stdout
        );
    }
}

/// The run's detached helper (it closes the watcher's fanotify group and holds the view's
/// mount namespace so that init's exit need not tear it down) ends with the run: nothing
/// started by `exec` is left once it returns, and the view goes with it. The one process
/// meant to outlive runs is the agent's share tracker, as agentuser-track
/// (tests/share.rs checks it).
#[test]
fn the_detached_closer_ends_with_the_run() {
    let sb = Sandbox::new("planted-closer");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    // `[e]` keeps the pattern from matching the shell that runs pgrep.
    let pattern = format!("{} [e]xec coder", sb.bin.display());
    let running = || {
        let script = format!(
            "t=$(id -u agentuser-track); for p in $(pgrep -f '{pattern}'); do \
             [ \"$(stat -c %u /proc/$p)\" = \"$t\" ] || echo $p; done"
        );
        !sb.sh(&script).ok().stdout.trim().is_empty()
    };
    // Control: the check sees a run's processes while it lasts.
    let mut long = sb.spawn(sb.user_command(
        "alice",
        &["exec", "coder", "--", "/bin/sh", "-c", "sleep 2"],
    ));
    assert!(eventually(running), "the check does not see a run");
    assert!(long.wait().unwrap().success());
    assert!(eventually(|| !running()));
    for _ in 0..3 {
        sb.as_user("alice", &["exec", "coder", "--", "/bin/true"])
            .ok();
    }
    assert!(
        eventually(|| !running()),
        "a process of the runs outlived them"
    );
}

/// Deleting the agent after its runner was killed searches like the next exec would have:
/// the shares are handed back, never with a plant still in them.
#[test]
fn a_run_whose_runner_was_killed_is_swept_by_delete() {
    let sb = Sandbox::new("planted-killed-delete");
    setup(&sb);
    plant_while_the_runner_is_stopped_then_kill_it(&sb);
    let out = sb.as_user("alice", &["delete", "coder"]).ok();
    assert!(out.stderr.contains("ended without its runner"), "{out:#?}");
    assert_eq!(planted_entries_left(&sb), Vec::<String>::new());
    assert_eq!(owner_git_runs(&sb), Vec::<String>::new());
}

/// A run ends even when something writes on the share's file system for every system call
/// of the repository watcher: strace, logging the run there. Its queue then never empties,
/// and the watcher used to wait for that at the end of the run (a livelock: this run spun
/// until killed). Now it handles what is queued for at most a second and the runner
/// sweeps the share instead; a plant made during the run is still neutralised.
#[test]
fn a_run_ends_while_its_own_system_calls_are_logged_on_the_share_file_system() {
    let sb = Sandbox::new("planted-strace");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    sb.sh_as(
        "alice",
        &format!("cat > {PROJ}/attack.sh <<'EOF'\n{}\nEOF", attack_script()),
    )
    .ok();
    let script = format!(
        "start=$(date +%s); \
         timeout -s KILL 120 strace -f -qq -o /home/alice/strace.log {bin} exec coder -- /bin/sh {PROJ}/attack.sh; \
         echo rc=$?; echo took=$(( $(date +%s) - start )); rm -f /home/alice/strace.log",
        bin = sb.bin.display()
    );
    let out = sb.sh(&script);
    assert!(out.stdout.contains("rc=0"), "{out:#?}");
    let took: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("took="))
        .and_then(|t| t.trim().parse().ok())
        .expect("elapsed seconds");
    assert!(took < 60, "the run took {took} s under strace: {out:#?}");
    assert_eq!(planted_entries_left(&sb), Vec::<String>::new());
}
