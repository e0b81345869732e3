//! The helper's state under stress: locks that no user can hold against another
//! (docs/threat-model.md row 18), interruptions that stop at a safe point, damaged records that
//! affect only their own agent, and temp files that do not linger.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::Sandbox;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// alice and bob may create agents; alice gets `coder` and `other`.
fn two_users(sb: &Sandbox) {
    sb.add_user("alice", &["agentuser"]);
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("alice", &["create", "coder"]).ok();
    sb.as_user("alice", &["create", "other"]).ok();
}

/// A tree of `dirs` x 1000 files owned by alice: big enough that a walk over it takes a
/// while on any machine.
fn big_tree(sb: &Sandbox, path: &str, dirs: u32) {
    let script = format!(
        "import os\nfor d in range({dirs}):\n    p = '{path}/d%d' % d\n    os.makedirs(p)\n    \
         for f in range(1000):\n        open('%s/%d' % (p, f), 'w').close()\n"
    );
    sb.run(sb.command_as("alice", &["python3", "-c", &script]))
        .ok();
}

/// Waits until the lock note of `agent` says `command` holds it (the process is then past
/// its start-up, inside its state change); panics if `child` ends first.
fn wait_for_lock_holder(sb: &Sandbox, child: &mut Child, agent: &str, command: &str) {
    let note = sb.host_path(&format!("/var/lib/agentuser/locks/{agent}"));
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(&note).is_ok_and(|n| n.contains(&format!("command={command}"))) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{command} ended ({status}) before it was seen holding the lock");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never took the lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The state letter of a process in /proc (R, S, D, T for stopped, ...), None once gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The state of the first share of `agent`, from its record ("ready", "granting", ...), or
/// "none" without a share.
fn share_state(sb: &Sandbox, agent: &str) -> String {
    let path = sb.host_path(&format!("/var/lib/agentuser/agents/{agent}.toml"));
    let record: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    match record.get("shares").and_then(|s| s.get(0)) {
        Some(share) => share["state"].as_str().unwrap().to_string(),
        None => "none".into(),
    }
}

/// Asserts a failure with `code` whose last line is the error, containing `needle`, after
/// nothing but warnings (about damaged state, which every command names).
#[track_caller]
fn fails_after_warnings(out: common::Out, code: i32, needle: &str) {
    assert_eq!(out.code, code, "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    let (last, warnings) = lines.split_last().expect("no error line");
    assert!(
        last.starts_with("agentuser: ") && last.contains(needle),
        "{out:#?}"
    );
    assert!(
        warnings
            .iter()
            .all(|l| l.starts_with("agentuser: warning: ")),
        "{out:#?}"
    );
}

fn wait_output(child: Child) -> common::Out {
    common::Out::from(child.wait_with_output().unwrap())
}

#[test]
fn terminal_stop_signals_do_not_stop_the_helper() {
    let sb = Sandbox::new("state-tstp");
    two_users(&sb);
    big_tree(&sb, "/home/alice/big", 150);
    for sig in [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU] {
        let mut child =
            sb.spawn(sb.user_command("alice", &["share", "coder", "/home/alice/big", "--rw"]));
        let pid = child.id();
        wait_for_lock_holder(&sb, &mut child, "coder", "share");
        // What a terminal sends on ^Z (the kernel sends it whatever the uids).
        kill(Pid::from_raw(pid as i32), sig)
            .expect("the share ended before the signal: grow the tree");
        // Either it stops (the attack) or it completes.
        loop {
            if proc_state(pid) == Some('T') {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                panic!("{sig} stopped the helper while it held the lock of 'coder'");
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_output(child).ok();
        sb.as_user("alice", &["unshare", "coder", "/home/alice/big"])
            .ok();
    }
    // The caller cannot stop it either: SIGSTOP from its own uid is refused by the kernel.
    let mut child =
        sb.spawn(sb.user_command("alice", &["share", "coder", "/home/alice/big", "--rw"]));
    let pid = child.id();
    wait_for_lock_holder(&sb, &mut child, "coder", "share");
    let stop = sb.sh_as("alice", &format!("kill -STOP {pid}"));
    // Positive control: alice may stop a process of her own.
    let own = sb.sh_as("alice", "sleep 5 & kill -STOP $! && kill -KILL $!");
    wait_output(child).ok();
    assert_ne!(stop.code, 0, "alice stopped the setuid helper: {stop:#?}");
    assert!(stop.stderr.contains("not permitted"), "{stop:#?}");
    own.ok();
}

#[test]
fn a_stalled_command_on_one_agent_stalls_no_one_else() {
    let sb = Sandbox::new("state-stall");
    two_users(&sb);
    big_tree(&sb, "/home/alice/big", 100);
    sb.sh_as(
        "alice",
        "mkdir /home/alice/small && touch /home/alice/small/f",
    )
    .ok();
    let mut share =
        sb.spawn(sb.user_command("alice", &["share", "coder", "/home/alice/big", "--rw"]));
    let pid = share.id();
    wait_for_lock_holder(&sb, &mut share, "coder", "share");
    // Stalled in the middle of its walk (a hung file system would do the same): only root
    // can stop it this way, which stands for any holder that does not go on.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();

    sb.as_user("bob", &["create", "helper"]).ok();
    sb.as_user("bob", &["delete", "helper"]).ok();
    sb.as_user("alice", &["share", "other", "/home/alice/small"])
        .ok();
    sb.as_user("alice", &["exec", "other", "--", "true"]).ok();
    sb.as_user("alice", &["unshare", "other", "/home/alice/small"])
        .ok();
    // The stalled agent itself: a bounded wait, then one line naming the holder.
    sb.as_user("alice", &["unshare", "coder", "/home/alice/big"])
        .fails(1, "agent 'coder' is busy")
        .fails(1, &format!("pid {pid} (user=alice"))
        .fails(1, "command=share");

    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    wait_output(share).ok();
    assert_eq!(share_state(&sb, "coder"), "ready");
}

#[test]
fn a_held_registry_lock_delays_only_what_needs_it_and_names_its_holder() {
    let sb = Sandbox::new("state-registry-lock");
    two_users(&sb);
    sb.sh_as(
        "alice",
        "mkdir /home/alice/small && touch /home/alice/small/f",
    )
    .ok();
    // Positive control: the registry-wide lock, held the way every command held it before
    // (here by flock(1), which writes no note), does block a create...
    let mut holder =
        sb.spawn(sb.command(&["flock", "-o", "/var/lib/agentuser/lock", "sleep", "60"]));
    let start = Instant::now();
    while sb.sh("flock -n /var/lib/agentuser/lock true").code == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    sb.as_user("bob", &["create", "helper"])
        .fails(1, "the agent registry is busy")
        .fails(1, "(flock, uid 0)");
    assert!(!sb.user_exists("agent-helper"));
    // ... while everything done to one existing agent goes on without it.
    sb.as_user("alice", &["share", "coder", "/home/alice/small", "--rw"])
        .ok();
    sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
    sb.as_user("alice", &["unshare", "coder", "/home/alice/small"])
        .ok();
    sb.as_user("alice", &["delete", "other"]).ok();
    let _ = holder.kill();
    let _ = holder.wait();
    sb.as_user("bob", &["create", "helper"]).ok();
}

#[test]
fn hangup_or_interrupt_mid_share_stops_in_a_state_a_rerun_completes() {
    let sb = Sandbox::new("state-interrupt");
    two_users(&sb);
    big_tree(&sb, "/home/alice/big", 150);
    for (sig, code) in [
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
        (Signal::SIGTERM, 143),
    ] {
        let mut child =
            sb.spawn(sb.user_command("alice", &["share", "coder", "/home/alice/big", "--rw"]));
        wait_for_lock_holder(&sb, &mut child, "coder", "share");
        kill(Pid::from_raw(child.id() as i32), sig).expect("share ended early: grow the tree");
        wait_output(child).fails(code, &format!("interrupted by {}", sig.as_str()));
        // The journal says where it stopped, and nothing is left half-written.
        assert_eq!(share_state(&sb, "coder"), "granting");
        assert_eq!(
            temp_files(&sb, "/var/lib/agentuser/agents"),
            Vec::<String>::new()
        );
        // The rerun completes it: every file is granted.
        sb.as_user("alice", &["share", "coder", "/home/alice/big", "--rw"])
            .ok();
        assert_eq!(share_state(&sb, "coder"), "ready");
        let uid = sb.show("coder")["uid"].as_u64().unwrap();
        let missing = sb
            .sh(&format!(
                "getfacl -R -p /home/alice/big 2>/dev/null | grep -c '^# file:' ; \
                 getfacl -R -p -n /home/alice/big 2>/dev/null | grep -c '^user:{uid}:rw'"
            ))
            .ok()
            .stdout;
        let counts: Vec<&str> = missing.lines().collect();
        assert_eq!(counts[0], counts[1], "entries without a grant: {missing}");
        // The same for unshare.
        let mut child =
            sb.spawn(sb.user_command("alice", &["unshare", "coder", "/home/alice/big"]));
        wait_for_lock_holder(&sb, &mut child, "coder", "unshare");
        kill(Pid::from_raw(child.id() as i32), sig).expect("unshare ended early: grow the tree");
        wait_output(child).fails(code, "interrupted");
        assert_eq!(share_state(&sb, "coder"), "revoking");
        sb.as_user("alice", &["unshare", "coder", "/home/alice/big"])
            .ok();
        assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 0);
    }
}

/// Names of temp files of interrupted writes in a sandbox directory.
fn temp_files(sb: &Sandbox, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.host_path(dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    names.sort();
    names
}

#[test]
fn stale_temp_files_are_reported_and_removed_by_the_next_writer() {
    let sb = Sandbox::new("state-temps");
    two_users(&sb);
    sb.sh_as(
        "alice",
        "mkdir /home/alice/small && echo t > /home/alice/token",
    )
    .ok();
    sb.as_user("alice", &["cred", "add", "coder", "/home/alice/token"])
        .ok();
    // As an interrupted write leaves them (pids of processes long gone).
    let agents = sb.host_path("/var/lib/agentuser/agents");
    std::fs::write(agents.join(".coder.toml.tmp.999999999"), "half").unwrap();
    std::fs::write(
        sb.host_path("/var/lib/agentuser/.uids-used.tmp.999999998"),
        "1",
    )
    .unwrap();
    let home = "/var/lib/agentuser/homes/agent-coder";
    sb.sh(&format!(
        "setpriv --reuid agent-coder --regid agent-coder --clear-groups -- \
         sh -c 'echo secret > {home}/.agentuser-4242-1f-0.tmp'"
    ))
    .ok();

    let doctor = sb.as_user("alice", &["doctor", "--json"]).json();
    let reported: Vec<String> = doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "stale-temp-file")
        .map(|f| f["subject"].as_str().unwrap().to_string())
        .collect();
    for name in [
        "/var/lib/agentuser/agents/.coder.toml.tmp.999999999",
        "/var/lib/agentuser/.uids-used.tmp.999999998",
        &format!("{home}/.agentuser-4242-1f-0.tmp"),
    ] {
        assert!(
            reported.iter().any(|r| r == name),
            "{name} not in {reported:?}"
        );
    }

    // The next change of coder (a record write, a credential sync) removes them; a create
    // (the next tombstone write) removes the tombstone's.
    sb.as_user("alice", &["share", "coder", "/home/alice/small"])
        .ok();
    sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
    sb.as_user("bob", &["create", "helper"]).ok();
    assert_eq!(
        temp_files(&sb, "/var/lib/agentuser/agents"),
        Vec::<String>::new()
    );
    assert_eq!(temp_files(&sb, "/var/lib/agentuser"), Vec::<String>::new());
    assert_eq!(temp_files(&sb, home), Vec::<String>::new());
    let doctor = sb.as_user("alice", &["doctor", "--json"]).json();
    assert!(!doctor.to_string().contains("stale-temp-file"), "{doctor}");
    assert!(Path::new(&sb.host_path(home)).is_dir());
}

/// Damage kinds, each applied to the record of a fresh agent by a shell line as root
/// (`R` is the record's path).
const DAMAGE: [(&str, &str); 6] = [
    ("garbage", "printf 'not [[ toml' > $R"),
    ("unknown-field", "sed -i '1i planted = 1' $R"),
    ("not-root", "chown alice $R"),
    ("symlink", "rm $R && ln -s /etc/passwd $R"),
    ("directory", "rm $R && mkdir $R"),
    (
        "oversized",
        "head -c 17000000 /dev/zero | tr '\\0' '#' >> $R",
    ),
];

#[test]
fn a_damaged_record_affects_only_its_agent_and_root_can_remove_it() {
    let sb = Sandbox::new("state-damage");
    two_users(&sb);
    sb.sh_as(
        "alice",
        "mkdir /home/alice/proj && touch /home/alice/proj/f",
    )
    .ok();
    for (kind, damage) in DAMAGE {
        let name = format!("bad-{kind}");
        sb.as_user("alice", &["create", &name]).ok();
        sb.as_user("alice", &["share", &name, "/home/alice/proj", "--rw"])
            .ok();
        let uid = sb.show(&name)["uid"].as_u64().unwrap();
        let record = format!("/var/lib/agentuser/agents/{name}.toml");
        sb.sh(&format!("R={record}; {damage}")).ok();

        // Every other agent keeps working, for every user, with one warning naming it.
        let list = sb.as_user("alice", &["list", "--json"]).ok();
        assert!(
            list.stderr.contains(&format!("agent '{name}' skipped")),
            "{kind}: {list:#?}"
        );
        assert!(list.stdout.contains("\"coder\""), "{kind}: {list:#?}");
        sb.as_user("alice", &["show", "coder"]).ok();
        sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
        sb.as_user("bob", &["create", "helper"]).ok();
        sb.as_user("bob", &["delete", "helper"]).ok();
        // The damaged agent itself: named errors, never a half-made action.
        let exec = sb.as_user("alice", &["exec", &name, "--", "true"]);
        fails_after_warnings(exec, 125, &format!("{name}.toml"));
        let delete = sb.as_user("alice", &["delete", &name]);
        fails_after_warnings(delete, 1, "only root can delete it");
        let doctor = sb.as_user("alice", &["doctor", "--json"]).json();
        assert!(
            doctor["findings"].as_array().unwrap().iter().any(|f| {
                f["category"] == "damaged-record" && f["subject"] == format!("agent '{name}'")
            }),
            "{kind}: {doctor}"
        );

        // Root removes it: account, group, home, and (when the record is readable enough
        // to name them) its ACL entries.
        let out = sb.root(&["delete", &name]).ok();
        assert!(!sb.user_exists(&format!("agent-{name}")), "{kind}");
        assert!(
            !sb.host_path(&format!("/var/lib/agentuser/homes/agent-{name}"))
                .exists(),
            "{kind}"
        );
        assert!(
            sb.sh(&format!("test -e {record} || test -L {record}")).code != 0,
            "{kind}"
        );
        let acl = sb.sh("getfacl -n -p /home/alice/proj/f").ok().stdout;
        let salvageable = matches!(kind, "unknown-field" | "not-root" | "oversized");
        if salvageable {
            assert!(!acl.contains(&format!("user:{uid}:")), "{kind}: {acl}");
        } else {
            assert!(out.stderr.contains("cannot be removed"), "{kind}: {out:#?}");
            sb.sh(&format!("setfacl -R -x u:{uid} /home/alice/proj"))
                .ok();
        }
        sb.as_user("alice", &["list"]).ok();
    }
}

#[test]
fn damaged_tombstones_never_let_an_agent_in_nor_reuse_its_uid() {
    let sb = Sandbox::new("state-tombstones");
    two_users(&sb);
    sb.as_user("alice", &["create", "ghost"]).ok();
    let uid = sb.show("ghost")["uid"].as_u64().unwrap();
    let garble = format!("sed -i 's/^{uid}$/{uid}?x/' /var/lib/agentuser/uids-used");
    // The record goes bad with nothing readable, the ghost's tombstone line is garbled, and
    // the configured range moves away from its uid: nothing clean names the uid any more.
    sb.sh(&format!(
        "printf garbage > /var/lib/agentuser/agents/ghost.toml && {garble}"
    ))
    .ok();
    let config = std::fs::read_to_string(sb.config_path()).unwrap();
    let moved = config.replace(
        &format!("uid_min = {}", sb.uid_base),
        &format!("uid_min = {}", sb.uid_base + 400),
    );
    std::fs::write(sb.config_path(), &moved).unwrap();
    // Other users keep working, with a warning naming the bad line; the agent is refused.
    let out = sb.as_user("alice", &["list"]).ok();
    assert!(out.stderr.contains("uids-used: line"), "{out:#?}");
    let refused = sb.as_user("agent-ghost", &["list"]);
    fails_after_warnings(refused, 1, "agent accounts may not use agentuser");
    // Positive control: with the record and the line gone, nothing refuses it any more.
    sb.sh(&format!(
        "rm /var/lib/agentuser/agents/ghost.toml && sed -i '/^{uid}?x$/d' /var/lib/agentuser/uids-used"
    ))
    .ok();
    sb.as_user("agent-ghost", &["list"]).ok();

    // A half-removed agent (no record, no account) whose tombstone line is garbled: its
    // uid is never handed out again (the next one would be it otherwise).
    std::fs::write(sb.config_path(), &config).unwrap();
    sb.sh(&format!("echo '{uid}?x' >> /var/lib/agentuser/uids-used && userdel agent-ghost && groupdel agent-ghost; true"))
        .ok();
    sb.as_user("bob", &["create", "helper"]).ok();
    assert!(sb.show("helper")["uid"].as_u64().unwrap() > uid);

    // An unreadable tombstone file: allocation fails closed, everything else goes on.
    sb.sh("chown alice /var/lib/agentuser/uids-used").ok();
    let create = sb.as_user("bob", &["create", "helper2"]);
    fails_after_warnings(create, 1, "uid tombstones are unreadable");
    sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
    let doctor = sb.as_user("alice", &["doctor", "--json"]).json();
    assert!(
        doctor.to_string().contains("damaged-tombstones"),
        "{doctor}"
    );
}
