//! Fault injection (issue 15): agentuser, or one of the account tools it runs, is killed at
//! the entry of the Nth call of a system call that changes state, or its whole process
//! group is killed at a random moment; then the same command runs again. After every
//! round: the command completes, record and account agree, `pwck -r`/`grpck -r` say no
//! more than before, no temp file is left, and `delete` leaves no ACL entry, account or
//! process behind. CI runs a sample; `bench/faults.sh` runs the whole sweep on demand.

mod common;

use common::Sandbox;

/// System calls at whose entry the kill lands: every kind of state change agentuser and
/// the shadow-utils tools make.
const SYSCALLS: &str = "rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,fchown,\
                        fchmod,setxattr,fsync,link,linkat,write";

/// The sample CI runs: (command, Nth call) pairs. `AGENTUSER_FAULTS=all` runs 1..=60.
fn sample() -> Vec<u32> {
    match std::env::var("AGENTUSER_FAULTS").as_deref() {
        Ok("all") => (1..=60).collect(),
        _ => vec![1, 2, 3, 5, 8, 13, 21, 34],
    }
}

/// What the account checkers say, to compare with a baseline (the host's /etc may hold
/// complaints of its own).
fn checkers(sb: &Sandbox) -> String {
    sb.sh("pwck -r 2>&1; grpck -r 2>&1; true").stdout
}

/// agentuser's own temp files (shadow-utils' `passwd+` and dead holders' locks are its own
/// business: the next tool replaces them; what matters is that it can run, checked below).
fn temp_files(sb: &Sandbox) -> String {
    sb.sh("find /var/lib/agentuser -maxdepth 3 -name '.*tmp*' 2>/dev/null")
        .stdout
}

/// A plain account tool of the host works (no lock is left held).
fn assert_host_tools_work(sb: &Sandbox, round: &str) {
    let out = sb.sh(&format!(
        "useradd -M -N -u {} fault-probe && groupadd -g {} fault-probe && userdel -f fault-probe \
         && groupdel fault-probe",
        sb.uid_base + 999,
        sb.uid_base + 999
    ));
    assert_eq!(out.code, 0, "{round}: {out:#?}");
}

/// Runs `args` as root under strace, killed at the `n`th call of one of [`SYSCALLS`] in any
/// of its processes.
fn killed_at(sb: &Sandbox, n: u32, args: &[&str]) -> common::Out {
    let bin = sb.bin.to_str().unwrap().to_string();
    let inject = format!("inject={SYSCALLS}:signal=KILL:when={n}");
    let trace = format!("trace={SYSCALLS}");
    let mut argv = vec![
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        &trace,
        "-e",
        &inject,
    ];
    argv.push(&bin);
    argv.extend_from_slice(args);
    sb.run(sb.command(&argv))
}

/// Everything that must hold once an interrupted create was run again and succeeded.
fn assert_consistent(sb: &Sandbox, baseline: &str, round: &str) {
    assert_eq!(checkers(sb), baseline, "{round}: pwck/grpck");
    assert_eq!(temp_files(sb), "", "{round}: temp files left");
    assert_host_tools_work(sb, round);
    let show = sb.show("coder");
    let uid = show["uid"].as_u64().unwrap();
    let passwd = sb.sh("getent passwd agent-coder").ok().stdout;
    assert_eq!(
        passwd.split(':').nth(2),
        Some(uid.to_string().as_str()),
        "{round}"
    );
    let home = sb
        .sh("stat -c '%u %a' /var/lib/agentuser/homes/agent-coder")
        .ok()
        .stdout;
    assert_eq!(home.trim(), format!("{uid} 700"), "{round}");
}

fn assert_gone(sb: &Sandbox, uid: u64, round: &str) {
    assert_eq!(
        sb.root(&["list", "--json"]).ok().json(),
        serde_json::json!([]),
        "{round}"
    );
    assert!(!sb.user_exists("agent-coder"), "{round}: account left");
    assert!(
        !sb.host_path("/var/lib/agentuser/homes/agent-coder")
            .exists(),
        "{round}: home left"
    );
    let acl = sb.sh("getfacl -Rpn /home/alice/proj 2>/dev/null").stdout;
    assert!(
        !acl.contains(&format!("user:{uid}:")),
        "{round}: an ACL entry of the agent is left:\n{acl}"
    );
    let agent_processes: Vec<_> = sb
        .processes_in_range()
        .into_iter()
        .filter(|&(_, u)| u64::from(u) == uid)
        .collect();
    assert!(agent_processes.is_empty(), "{round}: {agent_processes:?}");
    assert_eq!(temp_files(sb), "", "{round}: temp files left");
    assert_host_tools_work(sb, round);
}

#[test]
fn create_killed_at_any_state_change_is_completed_by_running_it_again() {
    let sb = Sandbox::new("faults-create");
    let baseline = checkers(&sb);
    for n in sample() {
        let round = format!("create killed at call {n}");
        let killed = killed_at(&sb, n, &["create", "coder"]);
        let again = sb.root(&["create", "coder"]);
        assert!(
            again.code == 0 || again.stderr.contains("agent 'coder' already exists"),
            "{round}: {killed:#?} then {again:#?}"
        );
        // Whatever the kill left, the rerun finished it (or it had finished already).
        assert_eq!(sb.show("coder")["state"], "ready", "{round}");
        assert_consistent(&sb, &baseline, &round);
        let uid = sb.show("coder")["uid"].as_u64().unwrap();
        killed_at(&sb, n, &["delete", "coder"]);
        let again = sb.root(&["delete", "coder"]);
        assert!(
            again.code == 0 || again.stderr.contains("no such agent"),
            "{round}: {again:#?}"
        );
        assert_gone(&sb, uid, &round);
    }
}

#[test]
fn share_and_live_credentials_killed_anywhere_leave_nothing_after_delete() {
    let sb = Sandbox::new("faults-grants");
    sb.add_user("alice", &["agentuser"]);
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/proj/a /home/alice/proj/b && touch /home/alice/proj/a/f \
         /home/alice/proj/b/g && umask 077 && echo tok > /home/alice/tok",
    )
    .ok();
    for n in sample() {
        let round = format!("grants killed at call {n}");
        sb.as_user("alice", &["create", "coder"]).ok();
        let uid = sb.show("coder")["uid"].as_u64().unwrap();
        for args in [
            &["share", "coder", "/home/alice/proj", "--rw"][..],
            &[
                "cred",
                "add",
                "coder",
                "/home/alice/tok",
                "--to",
                "t",
                "--live",
            ][..],
        ] {
            // strace -u runs the helper as alice (setuid still applies: the tracer is root).
            let bin = sb.bin.to_str().unwrap().to_string();
            let inject = format!("inject={SYSCALLS}:signal=KILL:when={n}");
            let trace = format!("trace={SYSCALLS}");
            let mut cmd = vec!["strace", "-f", "-qq", "-o", "/dev/null", "-e", &trace];
            cmd.extend_from_slice(&["-e", &inject, "-u", "alice", &bin]);
            cmd.extend_from_slice(args);
            sb.run(sb.command(&cmd));
        }
        sb.as_user("alice", &["delete", "coder"]).ok();
        assert_gone(&sb, uid, &round);
        let tok = sb.sh("getfacl -pn /home/alice/tok").ok().stdout;
        assert!(!tok.contains("mask::"), "{round}: {tok}");
    }
}

#[test]
fn a_killed_process_group_never_leaves_etc_half_made() {
    let sb = Sandbox::new("faults-pgrp");
    let baseline = checkers(&sb);
    for delay_ms in [0u64, 3, 6, 10, 15, 25, 40] {
        let round = format!("process group killed after {delay_ms} ms");
        let mut cmd = sb.command(&[sb.bin.to_str().unwrap(), "create", "coder"]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = sb.spawn(cmd);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let again = sb.root(&["create", "coder"]);
        assert!(
            again.code == 0 || again.stderr.contains("agent 'coder' already exists"),
            "{round}: {again:#?}"
        );
        assert_eq!(sb.show("coder")["state"], "ready", "{round}");
        assert_consistent(&sb, &baseline, &round);
        let uid = sb.show("coder")["uid"].as_u64().unwrap();
        sb.root(&["delete", "coder"]).ok();
        assert_gone(&sb, uid, &round);
    }
}
