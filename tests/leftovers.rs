//! What an agent leaves in the state directory (/var/lib/agentuser) goes with it: `delete`
//! removes every per-agent file (record, secrets, git directories, share index, network log,
//! run markers, the broker's run files), also those of a run whose runner was killed, and
//! `doctor` reports what an agent that no longer exists left behind, which root's
//! `delete NAME` removes.

mod common;

use std::path::{Path, PathBuf};

use common::net::FakeInternet;
use common::{Sandbox, eventually};

const PROJ: &str = "/home/alice/proj";

/// Every path below `dir`, depth first.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, out);
        }
    }
}

/// What of agent `name` (uid `uid`) the state directory holds: entries named after it,
/// entries it owns, and run files of the policy point (there is no other agent).
fn traces(sb: &Sandbox, name: &str, uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let state = sb.host_path("/var/lib/agentuser");
    let mut all = Vec::new();
    walk(&state, &mut all);
    all.into_iter()
        .filter(|p| {
            let relative = p
                .strip_prefix(&state)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            relative.contains(name)
                || relative.starts_with("run-ca/")
                || relative.starts_with("run-ssh/")
                || std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == uid || m.gid() == uid)
        })
        .map(|p| p.strip_prefix(&state).unwrap().display().to_string())
        .collect()
}

/// alice's agent coder with one of everything that keeps state: a read-write share holding a
/// repository, a brokered secret, an ssh key, an allowlist. Then a run whose runner is
/// killed after the policy point refused a name. Returns the agent's uid.
fn agent_with_state(sb: &Sandbox) -> u32 {
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        &format!("mkdir -p {PROJ} && cd {PROJ} && git init -q"),
    )
    .ok();
    let key = sb.ssh_keygen("alice", "id_git");
    sb.known_host("alice", "git.test", &key);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    sb.as_user(
        "alice",
        &["net", "coder", "allow", "api.test", "git.test:22"],
    )
    .ok();
    let store = ["cred", "env", "coder", "API_KEY", "--host", "api.test"];
    let value = b"sk-secret-0123456789abcdef\n";
    sb.run_with_stdin(sb.user_command("alice", &store), value)
        .ok();
    sb.cred_ssh("alice", "coder", "id_git", "git.test").ok();
    let script = format!("getent hosts blocked.test; touch {PROJ}/ready; exec sleep 60");
    let mut run = sb.spawn(sb.exec_sh_command("alice", "coder", &script));
    assert!(eventually(
        || sb.sh(&format!("test -e {PROJ}/ready")).code == 0
    ));
    let runner = nix::unistd::Pid::from_raw(run.id() as i32);
    nix::sys::signal::kill(runner, nix::sys::signal::Signal::SIGKILL).unwrap();
    run.wait().unwrap();
    uid
}

#[test]
fn delete_leaves_nothing_of_the_agent_in_the_state_dir() {
    let sb = Sandbox::new("leftovers-delete");
    let _internet = FakeInternet::start(&sb, &[("api.test", &["11.22.33.3"])]);
    let uid = agent_with_state(&sb);
    // Control: each kind of state is there to be removed.
    let before = traces(&sb, "coder", uid).join("\n");
    for kind in [
        "agents/coder",
        "secrets/coder",
        "git/coder",
        "index/coder",
        "netlog/coder.log",
        "runs/coder.",
        "run-ca/",
        "run-ssh/",
    ] {
        assert!(before.contains(kind), "no {kind} in:\n{before}");
    }
    sb.as_user("alice", &["delete", "coder"]).ok();
    assert_eq!(traces(&sb, "coder", uid), Vec::<String>::new());
    // Nothing to report either.
    let doctor = sb.root(&["doctor", "--json"]);
    assert!(!doctor.stdout.contains("coder"), "{doctor:#?}");
}

#[test]
fn doctor_reports_what_a_gone_agent_left_and_roots_delete_removes_it() {
    let sb = Sandbox::new("leftovers-doctor");
    let _internet = FakeInternet::start(&sb, &[("api.test", &["11.22.33.3"])]);
    let uid = agent_with_state(&sb);
    // What an older delete, or one cut short, left behind: saved before, put back after.
    let state = sb.host_path("/var/lib/agentuser");
    let saved = sb.dir.join("saved");
    let keep = ["netlog", "runs", "index", "git", "secrets"];
    std::fs::create_dir_all(&saved).unwrap();
    for dir in keep {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(state.join(dir))
            .arg(saved.join(dir))
            .status()
            .unwrap();
        assert!(status.success());
    }
    sb.as_user("alice", &["delete", "coder"]).ok();
    for dir in keep {
        let status = std::process::Command::new("cp")
            .args(["-a", "-T"])
            .arg(saved.join(dir))
            .arg(state.join(dir))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let left = traces(&sb, "coder", uid);
    assert!(
        !left.is_empty(),
        "nothing was put back: the test proves nothing"
    );

    let doctor = sb.root(&["doctor"]);
    assert!(doctor.stdout.contains("leftover"), "{doctor:#?}");
    assert!(doctor.stdout.contains("netlog/coder.log"), "{doctor:#?}");
    assert!(doctor.stdout.contains("runs/coder."), "{doctor:#?}");
    assert!(
        doctor.stdout.contains("agentuser delete coder"),
        "{doctor:#?}"
    );
    // Only root may clear what no record says whose it was.
    sb.as_user("alice", &["delete", "coder"])
        .fails(1, "no such agent");
    sb.root(&["delete", "coder"]).ok();
    assert_eq!(traces(&sb, "coder", uid), Vec::<String>::new());
    let doctor = sb.root(&["doctor"]);
    assert!(!doctor.stdout.contains("coder"), "{doctor:#?}");
}

/// A user naming agents that do not exist leaves nothing in root's state directory: no
/// command makes a lock file (or any file) for a made-up name, so nobody can fill
/// /var/lib/agentuser with them. Root's `delete` of such a name leaves nothing either.
#[test]
fn naming_agents_that_do_not_exist_makes_no_file() {
    let sb = Sandbox::new("leftovers-noname");
    sb.alice_and_coder();
    let locks = sb.host_path("/var/lib/agentuser/locks");
    let names = |dir: &Path| -> Vec<String> {
        let mut all = Vec::new();
        walk(dir, &mut all);
        all.iter().map(|p| p.display().to_string()).collect()
    };
    let before = names(&sb.host_path("/var/lib/agentuser"));
    // Positive control: naming the agent that exists takes (and so makes) its lock file.
    sb.as_user("alice", &["cred", "rm", "coder", "NOPE"]);
    assert!(
        locks.join("coder").exists(),
        "control: coder's lock file is made"
    );
    for (i, args) in [
        &["delete", "ghost0"][..],
        &["cred", "rm", "ghost1", "X"],
        &["cred", "list", "ghost2"],
        &["share", "ghost3", "/home/alice"],
        &["unshare", "ghost4", "/home/alice"],
        &["net", "ghost5", "allow", "example.org"],
        &[
            "cred",
            "ssh",
            "ghost6",
            "/home/alice/nokey.pub",
            "--host",
            "git.test",
        ],
        &["exec", "ghost7", "--", "true"],
        &["set", "ghost8", "network=none"],
    ]
    .iter()
    .enumerate()
    {
        let out = sb.as_user("alice", args);
        assert_ne!(out.code, 0, "{args:?} succeeded");
        assert!(
            out.stderr.contains("no such agent"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            !locks.join(format!("ghost{i}")).exists(),
            "{args:?} made a lock file"
        );
    }
    sb.root(&["delete", "ghost9"]);
    let mut after = names(&sb.host_path("/var/lib/agentuser"));
    after.retain(|p| !before.contains(p) && !p.ends_with("/locks/coder"));
    assert!(after.is_empty(), "new files: {after:?}");
}

/// The policy point's run files of a killed runner do not pile up while the agent lives:
/// the next run in the allowlist mode removes those whose runner is gone.
#[test]
fn the_next_run_removes_the_run_files_a_killed_runner_left() {
    let sb = Sandbox::new("leftovers-next-run");
    let _internet = FakeInternet::start(&sb, &[("api.test", &["11.22.33.3"])]);
    let uid = agent_with_state(&sb);
    let run_files = || {
        traces(&sb, "coder", uid)
            .into_iter()
            .filter(|t| t.starts_with("run-ca/") || t.starts_with("run-ssh/"))
            .filter(|t| t.contains('.'))
            .collect::<Vec<_>>()
    };
    // Control: the killed run left its CA bundle and ssh-agent socket.
    assert!(run_files().len() >= 2, "{:?}", traces(&sb, "coder", uid));
    sb.exec_sh("alice", "coder", "true").ok();
    assert_eq!(run_files(), Vec::<String>::new());
}
