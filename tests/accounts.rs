//! create / list / show / delete against real accounts in a hermetic sandbox.

mod common;

use common::Sandbox;

fn passwd_fields(sb: &Sandbox, user: &str) -> Vec<String> {
    let out = sb.sh(&format!("getent passwd {user}")).ok();
    out.stdout.trim().split(':').map(str::to_owned).collect()
}

#[test]
fn create_makes_a_locked_isolated_account() {
    let sb = Sandbox::new("create-basic");
    sb.root(&["create", "coder", "--comment", "test agent"])
        .ok();
    let f = passwd_fields(&sb, "agent-coder");
    let uid: u32 = f[2].parse().unwrap();
    assert!(
        uid >= sb.uid_base && uid < sb.uid_base + 500,
        "uid {uid} outside the range"
    );
    assert_eq!(f[3], f[2], "own group with the same number");
    assert_eq!(f[4], "test agent");
    assert_eq!(f[5], "/var/lib/agentuser/homes/agent-coder");
    assert_eq!(f[6], "/bin/bash");
    // Locked password, no supplementary groups, home 0700 owned by the agent.
    let shadow = sb.sh("getent shadow agent-coder").ok().stdout;
    assert!(
        shadow.split(':').nth(1).unwrap().starts_with('!'),
        "{shadow}"
    );
    let groups = sb.sh("id -G agent-coder").ok().stdout;
    assert_eq!(groups.trim(), f[3]);
    let stat = sb
        .sh("stat -c '%a %u' /var/lib/agentuser/homes/agent-coder")
        .ok()
        .stdout;
    assert_eq!(stat.trim(), format!("700 {uid}"));
    // No subordinate ids for the agent (it must not map other uids).
    assert!(
        !sb.sh("grep -q '^agent-coder:' /etc/subuid")
            .stdout
            .contains("agent")
    );
    assert_ne!(sb.sh("grep -q '^agent-coder:' /etc/subuid").code, 0);

    let json = sb.show("coder");
    for key in [
        "name",
        "owner",
        "user",
        "uid",
        "gid",
        "home",
        "shares",
        "credentials",
    ] {
        assert!(json.get(key).is_some(), "show --json lacks {key}: {json}");
    }
    assert_eq!(json["owner"], "root");
    assert_eq!(json["uid"], uid);
    let list = sb.root(&["list", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(sb.root(&["list"]).ok().stdout.contains("agent-coder"));
}

#[test]
fn delete_undoes_everything_and_never_reuses_the_uid() {
    let sb = Sandbox::new("delete-basic");
    let alice = sb.add_user("alice", &[]);
    sb.root(&["create", "coder"]).ok();
    let uid = sb.show("coder")["uid"].as_u64().unwrap() as u32;
    // Leave traces the way an agent would: temp files, shm, a detached daemon.
    sb.sh_as(
        "agent-coder",
        "touch /tmp/a /var/tmp/b /dev/shm/c; mkdir -p /tmp/d/e; touch /tmp/d/e/f; \
         setsid sleep 1000 </dev/null >/dev/null 2>&1 & \
         setsid sh -c 'while :; do sleep 1000 & sleep 0.01; done' </dev/null >/dev/null 2>&1 &",
    )
    .ok();
    sb.sh_as("alice", "touch /tmp/alice-file").ok();
    assert!(sb.processes_in_range().iter().any(|&(_, u)| u == uid));

    sb.root(&["delete", "coder"]).ok();
    assert!(
        !sb.processes_in_range().iter().any(|&(_, u)| u == uid),
        "agent process survived"
    );
    assert!(!sb.user_exists("agent-coder"));
    assert_ne!(sb.sh("getent group agent-coder").code, 0, "group survived");
    for gone in [
        "/tmp/a",
        "/var/tmp/b",
        "/dev/shm/c",
        "/tmp/d",
        "/var/lib/agentuser/homes/agent-coder",
    ] {
        assert!(!sb.host_path(gone).exists(), "{gone} survived delete");
    }
    assert!(
        sb.host_path("/tmp/alice-file").exists(),
        "another user's file was removed"
    );
    assert_eq!(
        std::fs::metadata(sb.host_path("/tmp/alice-file"))
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid()
            })
            .unwrap(),
        alice
    );
    sb.root(&["show", "coder"]).fails(1, "no such agent");

    // The freed uid is never handed out again, not even to the same name.
    sb.root(&["create", "coder"]).ok();
    let again = sb.show("coder")["uid"].as_u64().unwrap() as u32;
    assert_ne!(again, uid);
    sb.root(&["create", "other"]).ok();
    assert_ne!(sb.show("other")["uid"].as_u64().unwrap() as u32, uid);
}

#[test]
fn keep_home_keeps_only_the_home() {
    let sb = Sandbox::new("keep-home");
    sb.root(&["create", "coder"]).ok();
    sb.sh_as(
        "agent-coder",
        "echo work > /var/lib/agentuser/homes/agent-coder/notes",
    )
    .ok();
    sb.root(&["delete", "coder", "--keep-home"]).ok();
    assert!(!sb.user_exists("agent-coder"));
    assert!(
        sb.host_path("/var/lib/agentuser/homes/agent-coder/notes")
            .exists()
    );
}

/// How many agents `list --json` shows root.
fn agent_count(sb: &Sandbox) -> usize {
    sb.root(&["list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let sb = Sandbox::new("bad-input");
    sb.add_user("agent-bob", &[]);
    for name in [
        "",
        "Coder",
        "0day",
        "a_b",
        "-x",
        "abcdefghijklmnopqrstuvwxy",
        "a/b",
    ] {
        sb.root(&["create", "--", name])
            .fails(2, "invalid agent name");
    }
    sb.root(&["create", "bob"])
        .fails(1, "already exists and is not an agent");
    sb.root(&["create", "coder", "--owner", "nobody-here"])
        .fails(1, "unknown owner");
    sb.root(&["create", "coder", "--comment", "a:b"])
        .fails(2, "--comment");
    sb.root(&["create", "coder"]).ok();
    sb.root(&["create", "coder"]).fails(1, "already exists");
    sb.root(&["delete", "ghost"]).fails(1, "no such agent");
    sb.root(&["frobnicate"]).fails(2, "unrecognized subcommand");
    sb.root(&["exec", "coder"]).fails(2, "");
    assert_eq!(agent_count(&sb), 1);

    // Names of existing system accounts, with a template that maps names to themselves.
    sb.write_config("user_template = \"{name}\"");
    for name in ["root", "daemon", "alice"] {
        if name == "alice" {
            sb.add_user("alice", &[]);
        }
        sb.root(&["create", name]).fails(1, "is not an agent");
    }
    assert_eq!(agent_count(&sb), 1);
}

#[test]
fn hostile_or_broken_config_is_refused() {
    let sb = Sandbox::new("hostile-config");
    let path = sb.config_path();
    use std::os::unix::fs::PermissionsExt;
    for (text, mode, needle) in [
        (
            "uid_min = 5000\nuid_max = 6000\n",
            0o664,
            "writable by group or others",
        ),
        (
            "uid_min = 5000\nuid_max = 6000\n",
            0o646,
            "writable by group or others",
        ),
        ("bogus = true\n", 0o644, "unknown field"),
        ("uid_min = 0\n", 0o644, "uid_min"),
        (
            "user_template = \"{name}\"\nuid_min = 65000\nuid_max = 66000\n",
            0o644,
            "reserved id",
        ),
        ("home_base = \"/tmp/../etc\"\n", 0o644, "home_base"),
        ("[[[\n", 0o644, "config"),
    ] {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        sb.root(&["create", "coder"]).fails(1, needle);
        sb.root(&["list"]).fails(1, needle);
    }
    // Owned by someone else.
    sb.write_config("");
    let alice = sb.add_user("alice", &[]);
    std::os::unix::fs::chown(&path, Some(alice), None).unwrap();
    sb.root(&["list"]).fails(1, "not owned by root");
    // A symlink in place of the config.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
    sb.root(&["list"]).fails(1, "config");
    std::fs::remove_file(&path).unwrap();
    // Absent: built-in defaults apply.
    sb.root(&["list"]).ok();
    assert!(!sb.user_exists("agent-coder"));
}

#[test]
fn uid_range_exhaustion_and_owner_limit() {
    let sb = Sandbox::new("limits");
    sb.add_user("alice", &["agentuser"]);
    sb.write_config("max_agents_per_owner = 2");
    sb.as_user("alice", &["create", "one"]).ok();
    sb.as_user("alice", &["create", "two"]).ok();
    sb.as_user("alice", &["create", "three"])
        .fails(1, "agent limit reached");
    // Root is not limited per owner, but the range is finite.
    std::fs::write(
        sb.config_path(),
        format!("uid_min = {}\nuid_max = {}\n", sb.uid_base, sb.uid_base + 2),
    )
    .unwrap();
    sb.root(&["create", "three"]).ok();
    sb.root(&["create", "four"]).fails(1, "exhausted");
    assert!(!sb.user_exists("agent-four"));
    sb.root(&["show", "four"]).fails(1, "no such agent");
}

#[test]
fn setuid_callers_are_authorized_by_policy() {
    let sb = Sandbox::new("setuid-policy");
    sb.add_user("alice", &["agentuser"]);
    sb.add_user("bob", &[]);
    sb.add_user("carol", &["agentuser"]);

    sb.as_user("bob", &["create", "bobs"])
        .fails(1, "permission denied");
    assert!(!sb.user_exists("agent-bobs"));
    sb.as_user("alice", &["create", "coder"]).ok();
    assert_eq!(sb.show("coder")["owner"], "alice");
    sb.as_user("alice", &["create", "x", "--owner", "bob"])
        .fails(1, "only root");

    // Others can neither see nor touch alice's agent.
    sb.as_user("carol", &["show", "coder"])
        .fails(1, "no such agent");
    sb.as_user("carol", &["delete", "coder"])
        .fails(1, "no such agent");
    let carol_list = sb.as_user("carol", &["list", "--json"]).ok().json();
    assert_eq!(carol_list.as_array().unwrap().len(), 0);
    assert!(sb.user_exists("agent-coder"));
    assert_eq!(
        sb.as_user("alice", &["list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The agent itself may not use agentuser at all.
    for args in [
        &["list"][..],
        &["show", "coder"],
        &["create", "y"],
        &["delete", "coder"],
    ] {
        sb.as_user("agent-coder", args)
            .fails(1, "agent accounts may not use agentuser");
    }
    // Root may name any owner; under sudo the human becomes the owner.
    sb.root(&["create", "forbob", "--owner", "bob"]).ok();
    assert_eq!(sb.show("forbob")["owner"], "bob");
    let bob_uid = sb.sh("id -u bob").ok().stdout.trim().to_string();
    let mut cmd = sb.command(&[sb.bin.to_str().unwrap(), "create", "viasudo"]);
    cmd.env("SUDO_UID", &bob_uid).env("SUDO_USER", "bob");
    sb.run(cmd).ok();
    assert_eq!(sb.show("viasudo")["owner"], "bob");

    sb.as_user("alice", &["delete", "coder"]).ok();
    assert!(!sb.user_exists("agent-coder"));
}

#[test]
fn hostile_environment_limits_and_descriptors_do_not_steer_the_helper() {
    let sb = Sandbox::new("hostile-env");
    sb.add_user("alice", &["agentuser"]);
    // A fake useradd early in PATH must never run, and closed standard descriptors must not
    // be reused for state files.
    sb.sh(
        "mkdir -p /tmp/evil && printf '#!/bin/sh\\ntouch /tmp/evil/ran\\n' > /tmp/evil/useradd \
           && chmod 755 /tmp/evil/useradd && cp /tmp/evil/useradd /tmp/evil/groupadd",
    )
    .ok();
    let bin = sb.bin.display().to_string();
    sb.sh_as(
        "alice",
        &format!(
            "PATH=/tmp/evil:$PATH HOME=/tmp/evil XDG_CONFIG_HOME=/tmp/evil \
             RUST_LOG=trace LD_PRELOAD=/tmp/evil/x.so {bin} create coder <&- >&- 2>&-"
        ),
    )
    .ok();
    assert!(
        !sb.host_path("/tmp/evil/ran").exists(),
        "a PATH-planted tool ran"
    );
    assert!(sb.user_exists("agent-coder"));
    assert_eq!(sb.show("coder")["owner"], "alice");
    assert_eq!(
        sb.sh("ls -A /var/lib/agentuser/agents").ok().stdout.trim(),
        "coder.toml"
    );

    // A file-size limit set by the caller is lifted, or (where the host withholds
    // CAP_SYS_RESOURCE from root) the helper refuses before writing anything.
    let out = sb.sh_as("alice", &format!("ulimit -f 0; {bin} create second"));
    if out.code == 0 {
        assert_eq!(sb.show("second")["state"], "ready");
    } else {
        assert!(out.stderr.contains("file-size limit"), "{out:#?}");
        assert!(!sb.user_exists("agent-second"));
    }
    let record = std::fs::read_to_string(sb.host_path("/var/lib/agentuser/agents/coder.toml"));
    assert!(record.unwrap().contains("name = \"coder\""));
}

#[test]
fn concurrent_creates_get_distinct_uids() {
    let sb = Sandbox::new("concurrent");
    let names: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| sb.spawn(sb.command(&[sb.bin.to_str().unwrap(), "create", n])))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = sb.root(&["list", "--json"]).ok().json();
    let mut uids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(uids.len(), 6);
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 6, "duplicate uids: {list}");
    for n in &names {
        assert!(sb.user_exists(&format!("agent-{n}")));
    }
}

/// Starts `agentuser ARGS` as root, SIGKILLs it after `delay_ms`, then runs the same
/// command again to completion and returns that second run.
fn kill_then_rerun(sb: &Sandbox, args: &[&str], delay_ms: u64) -> common::Out {
    let mut argv = vec![sb.bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    let mut child = sb.spawn(sb.command(&argv));
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
    // Let any tool the killed helper had started finish before looking.
    std::thread::sleep(std::time::Duration::from_millis(150));
    sb.root(args)
}

#[test]
fn interrupted_create_and_delete_are_completed_by_running_them_again() {
    let sb = Sandbox::new("interrupted");
    for (i, delay_ms) in [0u64, 3, 8, 15, 30, 60, 120].into_iter().enumerate() {
        let name = format!("int{i}");
        let user = format!("agent-{name}");
        let again = kill_then_rerun(&sb, &["create", &name], delay_ms);
        assert!(
            again.code == 0 || again.stderr.contains("already exists"),
            "re-running create after a kill at {delay_ms} ms: {again:#?}"
        );
        let record = sb.show(&name);
        assert_eq!(record["state"], "ready", "{record}");
        assert!(sb.user_exists(&user));

        let again = kill_then_rerun(&sb, &["delete", &name], delay_ms);
        assert!(
            again.code == 0 || again.stderr.contains("no such agent"),
            "re-running delete after a kill at {delay_ms} ms: {again:#?}"
        );
        assert!(
            !sb.user_exists(&user),
            "account left after delete at {delay_ms} ms"
        );
        assert_ne!(sb.sh(&format!("getent group {user}")).code, 0);
        sb.root(&["show", &name]).fails(1, "no such agent");
    }
    // No orphan accounts: every agent-like passwd entry has a record and vice versa.
    let orphans = sb.sh("getent passwd | grep -c '^agent-'").stdout;
    assert_eq!(orphans.trim(), "0");
}

#[test]
fn state_changes_are_logged_to_syslog() {
    let sb = Sandbox::new("syslog");
    sb.add_user("alice", &["agentuser"]);
    let bin = sb.bin.display().to_string();
    let log = sb.syslog_during(&format!(
        "setpriv --reuid alice --regid alice --init-groups -- {bin} create coder
setpriv --reuid alice --regid alice --init-groups -- {bin} delete coder"
    ));
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" agentuser[")).collect();
    assert!(
        lines.iter().any(|l| l.contains("caller=alice")
            && l.contains("agent=coder")
            && l.contains("action=create")),
        "no create record in {log:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("action=delete")),
        "no delete record in {log:?}"
    );
    // authpriv (10) * 8 + notice (5) = 85
    assert!(lines.iter().all(|l| l.starts_with("<85>")), "{log:?}");
}

#[test]
fn create_never_takes_over_or_removes_a_kept_home() {
    let sb = Sandbox::new("kept-home");
    sb.add_user("bob", &["agentuser"]);
    sb.root(&["create", "coder"]).ok();
    let notes = "/var/lib/agentuser/homes/agent-coder/notes";
    sb.sh_as("agent-coder", &format!("echo precious > {notes}"))
        .ok();
    sb.root(&["delete", "coder", "--keep-home"]).ok();
    // Another user creating an agent of the same name must neither inherit nor destroy it.
    sb.as_user("bob", &["create", "coder"])
        .fails(1, "already exists");
    assert!(sb.host_path(notes).exists(), "the kept home was removed");
    assert!(!sb.user_exists("agent-coder"));
}

/// Issue 15 item 3: the account tools agentuser runs write no warning about agentuser's id
/// range and never into a pipe, so a dead agentuser cannot kill them (SIGPIPE) while they
/// hold the /etc locks; and they live in a process group of their own.
#[test]
fn account_tools_never_write_into_a_pipe_nor_warn() {
    let sb = Sandbox::new("create-tool-output");
    let bin = sb.bin.to_str().unwrap().to_string();
    sb.run(sb.command(&[
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=write,setpgid,memfd_create,pipe,pipe2",
        "-s",
        "300",
        "-o",
        "/tmp/trace",
        &bin,
        "create",
        "coder",
    ]))
    .ok();
    let trace = std::fs::read_to_string(sb.host_path("/tmp/trace")).unwrap();
    assert!(
        trace.contains("setpgid(0, 0)"),
        "no group of their own:\n{trace}"
    );
    assert!(!trace.contains("SYS_UID_MAX"), "{trace}");
    assert!(!trace.contains("SYS_GID_MAX"), "{trace}");
    // Their output goes to a memory file, never a pipe.
    assert!(
        trace.contains("memfd_create(\"agentuser-tool-output\""),
        "{trace}"
    );
    assert!(!trace.contains("pipe"), "{trace}");
    // Positive control: useradd itself warns for such a uid without the range settings.
    let out = sb.sh(&format!(
        "useradd --system --no-log-init -M --uid {} control-user 2>&1",
        sb.uid_base + 400
    ));
    assert!(out.stdout.contains("SYS_UID_MAX"), "{out:#?}");
}
