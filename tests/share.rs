//! share / unshare against real accounts and real ACLs. Attacks are performed for real as the
//! agent's uid; each test fails if the attack works.

mod common;

use common::{Background, Sandbox};

/// Every ACL entry naming `uid` under `path` (access and default, symlinks not followed),
/// one `PATH access|default PERM` line each. Read through the raw extended attributes with
/// python, because getfacl -R silently skips some odd names.
fn acl_lines_naming(sb: &Sandbox, path: &str, uid: u32) -> Vec<String> {
    let script = format!(
        r#"
import os, struct, sys
def acl(p, name):
    try:
        raw = os.getxattr(p, name, follow_symlinks=False)
    except OSError:
        return []
    return [struct.unpack_from('<HHI', raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]
def check(p):
    for kind, name in (('access', 'system.posix_acl_access'), ('default', 'system.posix_acl_default')):
        for tag, perm, qid in acl(p, name):
            if tag == 2 and qid == {uid}:
                print(repr(p), kind, perm)
root = {path:?}.encode()
check(root)
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        check(os.path.join(d, n))
"#
    );
    let out = sb.run(sb.command(&["python3", "-c", &script])).ok();
    out.stdout.lines().map(str::to_owned).collect()
}

/// How many entries under `path` (the root included) grant `uid` exactly `perm` (a bit set
/// of r=4 w=2 x=1) in their access ACL, and how many entries there are.
fn granted(sb: &Sandbox, path: &str, uid: u32, perms: &[u32]) -> (usize, usize) {
    let lines = acl_lines_naming(sb, path, uid);
    let hits = lines
        .iter()
        .filter(|l| {
            let mut f = l.rsplitn(3, ' ');
            let perm: u32 = f.next().unwrap().parse().unwrap();
            f.next() == Some("access") && perms.contains(&perm)
        })
        .count();
    let total = sb
        .run(sb.command(&[
            "python3",
            "-c",
            &format!(
                "import os\nr={path:?}.encode()\nprint(1+sum(len(d)+len(f) for _, d, f in os.walk(r)))"
            ),
        ]))
        .ok()
        .stdout
        .trim()
        .parse()
        .unwrap();
    (hits, total)
}

fn getfacl(sb: &Sandbox, path: &str) -> String {
    sb.sh(&format!("getfacl -n -p -- {path}")).ok().stdout
}

#[test]
fn agent_reads_and_writes_rw_share_and_only_reads_ro_share() {
    let sb = Sandbox::new("share-basic");
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "umask 077; mkdir -p /home/alice/rw/sub /home/alice/ro/sub && echo one > /home/alice/rw/sub/f && echo two > /home/alice/ro/sub/g \
         && echo secret > /home/alice/notes && chmod 644 /home/alice/notes && chmod 700 /home/alice/rw /home/alice/ro",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/rw", "--rw"])
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/ro"])
        .ok();
    let shares = sb.show("coder")["shares"].clone();
    assert_eq!(shares[0]["path"], "/home/alice/rw");
    assert_eq!(shares[0]["access"], "rw");
    assert_eq!(shares[1]["path"], "/home/alice/ro");
    assert_eq!(shares[1]["access"], "ro");

    sb.sh_as(
        "agent-coder",
        "cat /home/alice/rw/sub/f && echo more >> /home/alice/rw/sub/f \
         && echo new > /home/alice/rw/new && mkdir /home/alice/rw/d && cat /home/alice/ro/sub/g",
    )
    .ok();
    for attack in [
        "echo x >> /home/alice/ro/sub/g",
        "echo x > /home/alice/ro/new",
        "rm -f /home/alice/ro/sub/g",
        "mkdir /home/alice/ro/d",
    ] {
        assert_ne!(sb.sh_as("agent-coder", attack).code, 0, "{attack} worked");
    }
    assert_eq!(sb.sh("cat /home/alice/rw/sub/f").ok().stdout, "one\nmore\n");
    // No ACL on the home or any ancestor of a share.
    for dir in ["/home/alice", "/home", "/"] {
        let acl = getfacl(&sb, dir);
        assert!(!acl.contains(&uid.to_string()), "ACL on {dir}: {acl}");
    }
}

#[test]
fn share_inside_a_0700_home_is_reachable_only_through_the_view() {
    let sb = Sandbox::new("share-view-home");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "chmod 700 /home/alice && mkdir /home/alice/rw /home/alice/ro && echo a > /home/alice/rw/f && echo b > /home/alice/ro/g \
         && echo secret > /home/alice/notes && chmod 644 /home/alice/notes",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/rw", "--rw"])
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/ro"])
        .ok();
    // The home itself stays closed under a plain uid switch: no traversal ACL was added.
    assert_ne!(sb.sh_as("agent-coder", "ls /home/alice/rw").code, 0);
    let exec = |script: &str| sb.exec_sh("alice", "coder", script);
    exec("cat /home/alice/rw/f && echo c > /home/alice/rw/h && cat /home/alice/ro/g").ok();
    assert_ne!(
        exec("echo x > /home/alice/ro/g").code,
        0,
        "ro share written"
    );
    assert_ne!(
        exec("cat /home/alice/notes").code,
        0,
        "file next to a share read"
    );
    assert!(!exec("ls /home/alice").stdout.contains("notes"));
}

#[test]
fn owner_and_agent_edit_and_delete_each_others_files() {
    let sb = Sandbox::new("share-both-sides");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/proj && echo base > /home/alice/proj/base",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    // Each side creates with its normal umask.
    sb.sh_as(
        "alice",
        "umask 022; cd /home/alice/proj && echo o > owner-file && mkdir owner-dir && echo o > owner-dir/x",
    )
    .ok();
    sb.sh_as(
        "agent-coder",
        "umask 022; cd /home/alice/proj && echo a > agent-file && mkdir agent-dir \
         && echo a > agent-dir/y",
    )
    .ok();
    sb.sh_as(
        "agent-coder",
        "cd /home/alice/proj && echo edit >> owner-file && echo edit >> owner-dir/x \
         && echo edit >> base && rm owner-dir/x && rmdir owner-dir && rm owner-file",
    )
    .ok();
    sb.sh_as(
        "alice",
        "cd /home/alice/proj && echo edit >> agent-file && echo edit >> agent-dir/y \
         && rm agent-dir/y && rmdir agent-dir && rm agent-file",
    )
    .ok();
    assert_eq!(sb.sh("ls -A /home/alice/proj").ok().stdout.trim(), "base");
}

#[test]
fn planted_symlinks_are_never_followed() {
    let sb = Sandbox::new("share-symlink");
    let uid = sb.alice_and_coder();
    sb.sh("mkdir -m 700 /tmp/rootonly && echo s > /tmp/rootonly/secret && chmod 600 /tmp/rootonly/secret")
        .ok();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/proj && echo x > /home/alice/proj/f",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    let before = getfacl(&sb, "/tmp/rootonly") + &getfacl(&sb, "/tmp/rootonly/secret");
    sb.sh_as(
        "agent-coder",
        "cd /home/alice/proj && ln -s /tmp/rootonly dirlink && ln -s /tmp/rootonly/secret filelink \
         && mkdir -p deep/er && ln -s / deep/er/rootlink",
    )
    .ok();
    for args in [
        &["share", "coder", "/home/alice/proj", "--rw"][..],
        &["unshare", "coder", "/home/alice/proj"],
        &["share", "coder", "/home/alice/proj", "--rw"],
        &["share", "coder", "/home/alice/proj", "--ro"],
    ] {
        sb.as_user("alice", args).ok();
        let after = getfacl(&sb, "/tmp/rootonly") + &getfacl(&sb, "/tmp/rootonly/secret");
        assert_eq!(before, after, "target ACL changed by {args:?}");
        assert!(acl_lines_naming(&sb, "/tmp/rootonly", uid).is_empty());
        assert!(acl_lines_naming(&sb, "/etc", uid).is_empty());
    }
    assert_ne!(
        sb.sh_as("agent-coder", "cat /home/alice/proj/filelink")
            .code,
        0
    );
}

#[test]
fn foreign_and_outside_hard_links_get_no_acl() {
    let sb = Sandbox::new("share-hardlink");
    let uid = sb.alice_and_coder();
    // Same file system as the tree (the sandbox's /tmp is another mount).
    sb.sh("mkdir -m 700 /home/rootstuff && echo root-secret > /home/rootstuff/file && chmod 600 /home/rootstuff/file")
        .ok();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/proj && echo x > /home/alice/proj/f && echo netrc > /home/alice/.netrc && chmod 600 /home/alice/.netrc \
         && ln /home/alice/.netrc /home/alice/proj/netrc-link && echo y > /home/alice/proj/inside && chmod 600 /home/alice/proj/inside && ln /home/alice/proj/inside /home/alice/proj/inside2",
    )
    .ok();
    // A root file linked into the tree (what the agent could do where protected_hardlinks
    // is off; root plants it here because this host has it on).
    sb.sh("ln /home/rootstuff/file /home/alice/proj/rootlink")
        .ok();
    let out = sb
        .as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    assert!(out.stderr.contains("rootlink"), "{out:#?}");
    assert!(out.stderr.contains("netrc-link"), "{out:#?}");
    assert!(acl_lines_naming(&sb, "/home/rootstuff", uid).is_empty());
    assert!(acl_lines_naming(&sb, "/home/alice/.netrc", uid).is_empty());
    assert_ne!(
        sb.sh_as("agent-coder", "cat /home/alice/proj/rootlink")
            .code,
        0
    );
    assert_ne!(
        sb.sh_as("agent-coder", "cat /home/alice/proj/netrc-link")
            .code,
        0
    );
    // Even links that all lie inside the tree are not shared: the agent could move one
    // between directories mid-walk to have it counted twice (seen in review). The agent's
    // own multiply-linked files are (it can read them anyway).
    assert!(out.stderr.contains("inside"), "{out:#?}");
    assert_ne!(
        sb.sh_as("agent-coder", "cat /home/alice/proj/inside").code,
        0
    );
}

#[test]
fn git_metadata_is_read_only_for_the_agent_unless_allowed() {
    let sb = Sandbox::new("share-git");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/repo/.git/hooks /home/alice/other/.git/hooks && echo '[core]' > /home/alice/repo/.git/config \
         && echo '#!/bin/sh' > /home/alice/repo/.git/hooks/pre-commit && echo src > /home/alice/repo/src \
         && echo '[core]' > /home/alice/other/.git/config",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/repo", "--rw"])
        .ok();
    for attack in [
        "echo '\tfsmonitor = evil' >> /home/alice/repo/.git/config",
        "echo evil >> /home/alice/repo/.git/hooks/pre-commit",
        "echo evil > /home/alice/repo/.git/hooks/post-checkout",
    ] {
        assert_ne!(sb.sh_as("agent-coder", attack).code, 0, "{attack} worked");
    }
    sb.sh_as(
        "agent-coder",
        "cat /home/alice/repo/.git/config && echo ok >> /home/alice/repo/src",
    )
    .ok();
    sb.as_user(
        "alice",
        &[
            "share",
            "coder",
            "/home/alice/other",
            "--rw",
            "--allow-git-writes",
        ],
    )
    .ok();
    sb.sh_as(
        "agent-coder",
        "echo x >> /home/alice/other/.git/config && echo x > /home/alice/other/.git/hooks/h",
    )
    .ok();
    sb.as_user(
        "alice",
        &[
            "share",
            "coder",
            "/home/alice/repo",
            "--ro",
            "--allow-git-writes",
        ],
    )
    .fails(2, "--rw");
}

#[test]
fn git_metadata_is_read_only_in_the_view() {
    let sb = Sandbox::new("share-git-view");
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "chmod 700 /home/alice && mkdir /home/alice/repo && cd /home/alice/repo && git init -q && echo a > a && git add a \
         && git -c user.name=a -c user.email=a@b commit -qm a",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/repo", "--rw"])
        .ok();
    let exec = |script: &str| sb.exec_sh("alice", "coder", script);
    let owner_config = || {
        sb.sh("cat /home/alice/repo/.git/config /home/alice/repo/sub/.git/config 2>/dev/null; ls /home/alice/repo/.git/hooks").ok().stdout
    };
    // The agent's git works in the owner's work tree (no "dubious ownership"); what it
    // writes under .git goes to its own git directory (tests/git.rs), never the owner's.
    exec("cd /home/alice/repo && git status --short && echo b >> a").ok();
    let before = owner_config();
    exec("echo '[core]fsmonitor=evil' >> /home/alice/repo/.git/config && mkdir -p /home/alice/repo/.git/hooks && echo evil > /home/alice/repo/.git/hooks/pre-commit").ok();
    assert_eq!(owner_config(), before);
    assert_ne!(
        exec("mv /home/alice/repo/.git /home/alice/repo/old").code,
        0
    );
    // A repository the owner makes after the share inherits the agent's rwx default entry;
    // the view still covers its .git with the agent's own.
    sb.sh_as(
        "alice",
        "cd /home/alice/repo && mkdir sub && cd sub && git init -q",
    )
    .ok();
    assert!(
        sb.sh("getfacl -n -p /home/alice/repo/sub/.git/config")
            .ok()
            .stdout
            .contains(&format!("user:{uid}:rw")),
        "the new repository did not inherit the default ACL"
    );
    let before = owner_config();
    exec("echo '[core]fsmonitor=evil' >> /home/alice/repo/sub/.git/config").ok();
    assert_eq!(
        owner_config(),
        before,
        "a .git made after the share was writable in the view"
    );
    exec("cd /home/alice/repo/sub && git status >/dev/null").ok();
    sb.as_user(
        "alice",
        &[
            "share",
            "coder",
            "/home/alice/repo",
            "--rw",
            "--allow-git-writes",
        ],
    )
    .ok();
    exec("echo '# ok' >> /home/alice/repo/.git/config").ok();
    assert!(owner_config().contains("# ok"));
}

/// The owner makes a repository (`config` is its `.git/config`) between runs; the agent's
/// next run writes to it. Returns the config, which must be unchanged.
fn repository_made_between_runs(sb: &Sandbox, config: &str) -> String {
    let repo = config.trim_end_matches("/.git/config");
    sb.sh_as("alice", &format!("umask 002 && cd {repo} && git init -q"))
        .ok();
    // Control: outside the view the agent can write it (the new .git inherited the
    // share's default entry), so only the view stands in the way.
    sb.sh_as("agent-coder", &format!("test -w {config}")).ok();
    let before = sb.sh(&format!("cat {config}")).ok().stdout;
    // In the view the agent's own git directory covers it: what it writes goes there.
    sb.exec_sh(
        "alice",
        "coder",
        &format!("echo '[core]fsmonitor=evil' >> {config}"),
    );
    assert_eq!(
        sb.sh(&format!("cat {config}")).ok().stdout,
        before,
        "a .git made between runs was writable in the view"
    );
    before
}

/// The runner does not walk the share at each run: it checks the index `share` made and the
/// last run updated (src/share/index.rs), here without a share tracker. A repository the
/// owner makes between runs, deep in a tree whose index has settled (no directory changed
/// for a while), must still be found and covered at the next run.
#[test]
fn a_repository_made_between_runs_in_a_settled_tree_is_covered_at_the_next_run() {
    let sb = Sandbox::new("share-git-index");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "chmod 711 /home/alice && mkdir -p /home/alice/proj/a/b/c /home/alice/proj/d && cd /home/alice/proj/d && git init -q",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    let exec = |script: &str| sb.exec_sh("alice", "coder", script);
    exec("true").ok();
    // A tree this small is checked without a tracker (the_share_tracker_... tests that one).
    assert_eq!(tracker_pid(&sb), None);
    // Older than the index's racy window (2 s): from now on unchanged directories are
    // trusted without being listed.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    exec("true").ok();
    let config = "/home/alice/proj/a/b/c/.git/config";
    let before = repository_made_between_runs(&sb, config);
    // Still covered once the index has learnt it and settled again.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    exec("true").ok();
    exec(&format!("echo x >> {config}"));
    assert_eq!(sb.sh(&format!("cat {config}")).ok().stdout, before);
}

/// The pid of this sandbox's share tracker (src/share/track.rs): a process of
/// agentuser-track forked from this sandbox's own copy of agentuser; None when there is
/// none. A tracker that was just replaced may take a moment to exit.
fn tracker_pid(sb: &Sandbox) -> Option<u32> {
    let mut pids = tracker_pids(sb);
    common::eventually(|| {
        pids = tracker_pids(sb);
        pids.len() <= 1
    });
    assert!(pids.len() <= 1, "more than one tracker: {pids:?}");
    pids.first().copied()
}

fn tracker_pids(sb: &Sandbox) -> Vec<u32> {
    let uid: u32 = sb
        .sh("id -u agentuser-track")
        .ok()
        .stdout
        .trim()
        .parse()
        .unwrap();
    let bin = sb.bin.to_str().unwrap().as_bytes().to_vec();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if status.contains(&format!("Uid:\t{uid}\t")) && cmdline.starts_with(&bin) {
            pids.push(pid);
        }
    }
    pids
}

/// The inode of the agent's only share index.
fn index_inode(sb: &Sandbox, agent: &str) -> String {
    sb.sh(&format!(
        "stat -c %i /var/lib/agentuser/index/{agent}/*.index"
    ))
    .ok()
    .stdout
}

/// Between runs the agent's share tracker notes which directories changed, so a run lists
/// only those (issue 15 item 9). It must never let a repository the owner made between
/// runs go uncovered, and it is no way in: its own account, no capability, no-new-privs,
/// not dumpable, out of the agent's reach.
#[test]
fn the_share_tracker_spares_the_walk_but_never_a_new_repository() {
    let sb = Sandbox::new("share-tracker");
    sb.alice_and_coder();
    // 1,000 more directories: a small tree is checked without a tracker.
    sb.sh_as(
        "alice",
        "chmod 711 /home/alice && mkdir -p /home/alice/proj/a/b/c /home/alice/proj/d /home/alice/proj/many \
         && cd /home/alice/proj/d && git init -q && cd ../many && seq 1000 | xargs mkdir",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    let exec = |script: &str| sb.exec_sh("alice", "coder", script);
    exec("true").ok();
    let pid = tracker_pid(&sb).expect("no tracker after a run");
    let status = sb.sh(&format!("cat /proc/{pid}/status")).ok().stdout;
    let uid = sb
        .sh("id -u agentuser-track")
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(
        status.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")),
        "{status}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
    // Not dumpable: another process of its own account cannot read its memory map.
    // Control: that account can read a dumpable process of its own.
    let peek = "sleep 5 & p=$!; cat /proc/$p/maps >/dev/null && echo control-ok; kill $p";
    let control = sb.sh(&format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups sh -c '{peek}'"
    ));
    assert!(control.ok().stdout.contains("control-ok"));
    let peek_tracker =
        format!("setpriv --reuid={uid} --regid={uid} --clear-groups cat /proc/{pid}/maps");
    assert_ne!(sb.sh(&peek_tracker).code, 0, "the tracker is dumpable");
    // The agent can neither signal it nor read it (the tracker is the same process
    // throughout: no run happens in between).
    assert_ne!(sb.sh_as("agent-coder", &format!("kill -9 {pid}")).code, 0);
    let read = sb.sh_as("agent-coder", &format!("cat /proc/{pid}/maps"));
    assert_ne!(read.code, 0, "{read:?}");
    assert_eq!(tracker_pid(&sb), Some(pid));

    // A file made where the tracker looks: the next run lists that directory only and
    // keeps the index as it was (same file), and the same tracker goes on.
    let index = index_inode(&sb, "coder");
    sb.sh_as("alice", "touch /home/alice/proj/a/b/new-file")
        .ok();
    exec("true").ok();
    assert_eq!(
        index_inode(&sb, "coder"),
        index,
        "the tracker's report was not used"
    );
    assert_eq!(tracker_pid(&sb), Some(pid));

    // A directory removed and made again under the same name (no event inside the old
    // one): a new inode the tracker did not follow, so that run checks everything, and a
    // repository made in it afterwards is covered.
    sb.sh_as(
        "alice",
        "rmdir /home/alice/proj/many/500 && mkdir /home/alice/proj/many/500",
    )
    .ok();
    exec("true").ok();
    repository_made_between_runs(&sb, "/home/alice/proj/many/500/.git/config");

    // A repository the owner makes between runs, deep in the tree and at once (no settling
    // needed): the next run sees the directory changed shape and covers it.
    let config = "/home/alice/proj/a/b/c/.git/config";
    repository_made_between_runs(&sb, config);
    // That run checked everything and handed over to a new tracker.
    let second = tracker_pid(&sb).expect("no tracker after the check");
    assert_ne!(second, pid);
    // And in a directory made since, moved into place with its repository.
    sb.sh_as(
        "alice",
        "umask 002 && mkdir -p /home/alice/x/y && cd /home/alice/x/y && git init -q && mv /home/alice/x /home/alice/proj/a/x",
    )
    .ok();
    let moved = "/home/alice/proj/a/x/y/.git/config";
    let before = sb.sh(&format!("cat {moved}")).ok().stdout;
    exec(&format!("echo '[core]fsmonitor=evil' >> {moved}"));
    assert_eq!(sb.sh(&format!("cat {moved}")).ok().stdout, before);

    // Without a tracker every directory is checked again: a change rewrites the index.
    // (Control for the first part: the same change with the tracker kept the file.)
    let pid = tracker_pid(&sb).expect("no tracker");
    sb.sh(&format!("kill -9 {pid}")).ok();
    assert!(common::eventually(|| tracker_pid(&sb).is_none()));
    let index = index_inode(&sb, "coder");
    sb.sh_as("alice", "touch /home/alice/proj/a/b/other-file")
        .ok();
    // A socket name a killed run left half-placed: doctor reports it, and the run that
    // places the next tracker's socket removes it.
    let stale = "/var/lib/agentuser/index/coder/.tracker.sock.tmp.999999999";
    sb.sh(&format!("touch {stale}")).ok();
    let doctor = sb.root(&["doctor", "--json"]).json().to_string();
    assert!(doctor.contains(stale), "{doctor}");
    exec("true").ok();
    assert_ne!(index_inode(&sb, "coder"), index);
    sb.sh(&format!("! test -e {stale}")).ok();

    // Its socket removed behind its back (its directory removed: nobody could reach it any
    // more): it ends. Control: it was there.
    assert!(tracker_pid(&sb).is_some());
    sb.sh("rm -rf /var/lib/agentuser/index/coder").ok();
    assert!(common::eventually(|| tracker_pid(&sb).is_none()));
    // The next run rebuilds the index; the one after finds it large and starts a tracker.
    exec("true").ok();
    exec("true").ok();
    // Deleting the agent ends its tracker.
    assert!(tracker_pid(&sb).is_some());
    sb.root(&["delete", "coder"]).ok();
    assert!(common::eventually(|| tracker_pid(&sb).is_none()));
}

#[test]
fn unshare_and_delete_leave_no_entry_for_the_agent() {
    let sb = Sandbox::new("share-revoke");
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/a/x/y /home/alice/b && chmod 750 /home/alice/a && echo 1 > /home/alice/a/x/y/f && chmod 640 /home/alice/a/x/y/f \
         && echo 2 > /home/alice/b/g && mkdir /home/alice/c && echo 3 > /home/alice/c/h",
    )
    .ok();
    let modes_before = sb
        .sh("cd /home/alice/a && find . -printf '%m %p\\n' | sort")
        .ok()
        .stdout;
    sb.as_user("alice", &["share", "coder", "/home/alice/a", "--rw"])
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/b"])
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/c/h", "--rw"])
        .ok();
    assert!(!acl_lines_naming(&sb, "/home/alice/a", uid).is_empty());
    // Files added since the share are revoked too (they inherited the default ACL).
    sb.sh_as(
        "agent-coder",
        "mkdir /home/alice/a/new && echo n > /home/alice/a/new/n",
    )
    .ok();
    sb.sh_as("alice", "echo m > /home/alice/a/x/mine").ok();
    sb.as_user("alice", &["unshare", "coder", "/home/alice/a"])
        .ok();
    assert!(acl_lines_naming(&sb, "/home/alice/a", uid).is_empty());
    sb.sh("rm -rf /home/alice/a/new /home/alice/a/x/mine").ok();
    // The tree is back to its plain modes: no ACL left at all.
    assert_eq!(
        sb.sh("cd /home/alice/a && find . -printf '%m %p\\n' | sort")
            .ok()
            .stdout,
        modes_before
    );
    assert!(
        !sb.sh("getfacl -R -s -p /home/alice/a")
            .stdout
            .contains("file:")
    );
    assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 2);
    sb.as_user("alice", &["unshare", "coder", "/home/alice/a"])
        .fails(1, "not shared");

    sb.as_user("alice", &["delete", "coder"]).ok();
    assert!(
        acl_lines_naming(&sb, "/home/alice", uid).is_empty(),
        "{}",
        sb.sh("getfacl -R -n -p /home/alice").stdout
    );
    assert!(
        !sb.sh("getfacl -R -s -p /home/alice")
            .stdout
            .contains("file:")
    );
}

#[test]
fn share_changes_access_in_place_and_refuses_nesting() {
    let sb = Sandbox::new("share-reshare");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/p/inner && echo x > /home/alice/p/f",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/p"])
        .ok();
    assert_ne!(sb.sh_as("agent-coder", "echo y >> /home/alice/p/f").code, 0);
    sb.as_user("alice", &["share", "coder", "/home/alice/p", "--rw"])
        .ok();
    sb.sh_as("agent-coder", "echo y >> /home/alice/p/f").ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/p/", "--ro"])
        .ok();
    assert_ne!(sb.sh_as("agent-coder", "echo z >> /home/alice/p/f").code, 0);
    assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 1);
    sb.as_user("alice", &["share", "coder", "/home/alice/p/inner"])
        .fails(1, "lies inside");
    sb.sh_as("alice", "mkdir /home/alice/q && mkdir /home/alice/q/sub")
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/q/sub"])
        .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/q"])
        .fails(1, "contains");
}

#[test]
fn odd_names_deep_trees_and_relative_paths() {
    let sb = Sandbox::new("share-odd");
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/odd && cd /home/alice/odd && printf x > \"$(printf 'new\\nline')\" \
         && printf x > \"$(printf 'bad\\377byte')\" && mkdir ' sp ace ' && printf x > ' sp ace /-f' \
         && d=deep; for i in $(seq 1 300); do d=$d/d; done; mkdir -p $d && printf x > $d/leaf",
    )
    .ok();
    // A relative path with `..`, resolved from the caller's directory.
    sb.sh_as(
        "alice",
        &format!(
            "cd /home/alice && {} share coder ./odd/../odd --rw",
            sb.bin.display()
        ),
    )
    .ok();
    assert_eq!(sb.show("coder")["shares"][0]["path"], "/home/alice/odd");
    // Every file and directory carries the grant (rw-, or rwx on directories).
    let (hits, total) = granted(&sb, "/home/alice/odd", uid, &[6, 7]);
    assert_eq!(hits, total);
    assert!(total > 300);
    sb.sh_as("agent-coder", "cat /home/alice/odd/deep/d/d/d/d/d/d/d/d/d/d/d/* >/dev/null 2>&1; find /home/alice/odd -name leaf -exec cat {} +")
        .ok();
    sb.as_user("alice", &["unshare", "coder", "/home/alice/odd"])
        .ok();
    assert!(acl_lines_naming(&sb, "/home/alice/odd", uid).is_empty());
}

#[test]
fn every_refusal_changes_nothing() {
    let sb = Sandbox::new("share-refusals");
    let uid = sb.alice_and_coder();
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("bob", &["create", "bobs"]).ok();
    sb.sh("mkdir -m 700 /tmp/rootdir && mkdir /tmp/rootdir/x && chown alice /tmp/rootdir/x")
        .ok();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/p && mkfifo /home/alice/fifo && ln -s /etc /home/alice/etclink && ln -s /tmp/rootdir/x /home/alice/hidden \
         && mkdir \"$(printf '/home/alice/bad\\377')\"",
    )
    .ok();
    sb.sh_as("bob", "mkdir /home/bob/bobdir").ok();
    let refusals: &[(&str, &str)] = &[
        ("/home/alice/missing", "No such file"),
        ("/home/alice/fifo", "not a directory or regular file"),
        ("/home/bob/bobdir", "you do not own it"),
        ("/tmp/rootdir", "you do not own it"),
        ("/home/alice/hidden", "Permission denied"),
        ("/", "root directory"),
        ("/home/alice/etclink", "system directory"),
        ("/home/alice", "whole home directory"),
        ("/home", "/home itself"),
        ("/tmp", "/tmp itself"),
        ("/var/lib/agentuser/homes/agent-coder", "agent"),
        ("/var/lib/agentuser/homes/agent-bobs", "agent"),
    ];
    for (path, needle) in refusals {
        sb.as_user("alice", &["share", "coder", path])
            .fails(1, needle);
    }
    // Root may share what it likes, except what is refused for everyone.
    for (path, needle) in [
        ("/etc", "system directory"),
        ("/usr/share", "system directory"),
        ("/var", "system directory"),
        ("/root", "system directory"),
        ("/boot", "system directory"),
        ("/proc/self", "system directory"),
        ("/home/bob", "whole home directory"),
        ("/var/lib/agentuser/homes/agent-bobs/x", "No such file"),
        ("/var/lib/agentuser/homes/agent-bobs", "agent"),
    ] {
        sb.root(&["share", "coder", path]).fails(1, needle);
    }
    sb.root(&["share", "coder", "/home/alice/bad\u{fffd}"])
        .fails(1, "No such file");
    let mut cmd = sb.command(&[sb.bin.to_str().unwrap(), "share", "coder"]);
    cmd.arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/home/alice/bad\xff"));
    sb.run(cmd).fails(1, "UTF-8");
    // A file system without ACL support (ramfs).
    sb.sh(&format!(
        "mkdir /tmp/ram && mount -t ramfs ram /tmp/ram && chown alice /tmp/ram && mkdir /tmp/ram/x \
         && chown alice /tmp/ram/x && setpriv --reuid alice --regid alice --init-groups {} share coder /tmp/ram/x",
        sb.bin.display()
    ))
    .fails(1, "does not support POSIX ACLs");
    sb.as_user("bob", &["share", "coder", "/home/bob/bobdir"])
        .fails(1, "no such agent");
    sb.as_user("agent-coder", &["share", "coder", "/home/alice/p"])
        .fails(1, "agent accounts");
    assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 0);
    assert!(acl_lines_naming(&sb, "/home", uid).is_empty());
    assert!(acl_lines_naming(&sb, "/tmp", uid).is_empty());
}

#[test]
fn interrupted_share_and_unshare_are_completed_by_running_them_again() {
    let sb = Sandbox::new("share-interrupted");
    let uid = sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/big && cd /home/alice/big && for d in $(seq 1 40); do mkdir d$d; \
         (cd d$d && touch $(seq 1 500)); done",
    )
    .ok();
    for delay_ms in [20u64, 80, 200] {
        let mut child =
            sb.spawn(sb.user_command("alice", &["share", "coder", "/home/alice/big", "--rw"]));
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        sb.as_user("alice", &["share", "coder", "/home/alice/big", "--rw"])
            .ok();
        let (hits, total) = granted(&sb, "/home/alice/big", uid, &[6, 7]);
        assert_eq!(hits, total, "after a share killed at {delay_ms} ms");

        let mut child =
            sb.spawn(sb.user_command("alice", &["unshare", "coder", "/home/alice/big"]));
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let again = sb.as_user("alice", &["unshare", "coder", "/home/alice/big"]);
        assert!(
            again.code == 0 || again.stderr.contains("not shared"),
            "{again:#?}"
        );
        assert!(
            acl_lines_naming(&sb, "/home/alice/big", uid).is_empty(),
            "after an unshare killed at {delay_ms} ms"
        );
        assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 0);
    }
}

#[test]
fn symlinks_swapped_in_during_the_walk_do_not_redirect_it() {
    let sb = Sandbox::new("share-swap-race");
    let uid = sb.alice_and_coder();
    sb.sh("mkdir -m 700 /home/rootstuff && echo s > /home/rootstuff/secret")
        .ok();
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/proj && cd /home/alice/proj && for d in $(seq 1 20); do mkdir d$d; \
         (cd d$d && touch $(seq 1 200)); done",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    // The agent keeps swapping a directory and a symlink to the root-only one under the
    // same names while the tree is walked again and again.
    let racer = r#"
import os
os.chdir('/home/alice/proj')
for n in range(20):
    os.makedirs(f'd{n+1}/swap', exist_ok=True)
    if not os.path.lexists(f'd{n+1}/link'):
        os.symlink('/home/rootstuff', f'd{n+1}/link')
print('racing', flush=True)
while True:
    for n in range(1, 21):
        d = f'd{n}'
        try:
            os.rename(f'{d}/swap', f'{d}/real')
            os.rename(f'{d}/link', f'{d}/swap')
            os.rename(f'{d}/swap', f'{d}/link')
            os.rename(f'{d}/real', f'{d}/swap')
        except OSError:
            pass
"#;
    let (racing, _) = Background::start(sb.command_as("agent-coder", &["python3", "-c", racer]));
    let before = getfacl(&sb, "/home/rootstuff") + &getfacl(&sb, "/home/rootstuff/secret");
    for round in 0..4 {
        let args: &[&str] = if round % 2 == 0 {
            &["unshare", "coder", "/home/alice/proj"]
        } else {
            &["share", "coder", "/home/alice/proj", "--rw"]
        };
        sb.as_user("alice", args).ok();
        let after = getfacl(&sb, "/home/rootstuff") + &getfacl(&sb, "/home/rootstuff/secret");
        assert_eq!(
            before, after,
            "round {round}: the root-only tree got an ACL"
        );
    }
    drop(racing);
    assert!(acl_lines_naming(&sb, "/home/rootstuff", uid).is_empty());
}

/// Issue: re-sharing widened `-rw-rw-r--+` files to `-rw-rwxr--+` (the mask recalculated
/// over entries inherited wider than it). Every mode and ACL stays exactly as it was when
/// a share is made again, whoever created the file and whatever the access.
#[test]
fn resharing_never_widens_modes_or_masks() {
    let sb = Sandbox::new("share-reshare-widen");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/proj/sub && echo a > /home/alice/proj/old",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    // Made after sharing, with the usual modes: the owner's data file, the agent's data
    // file and script, a directory of each.
    sb.sh_as(
        "alice",
        "cd /home/alice/proj && echo o > owner.txt && mkdir owner-dir && echo s > sub/o.txt",
    )
    .ok();
    sb.sh_as(
        "agent-coder",
        "cd /home/alice/proj && echo g > agent.txt && printf '#!/bin/sh\\n' > run.sh \
         && chmod 755 run.sh && mkdir agent-dir",
    )
    .ok();
    // Mode and effective rights of every entry (what each uid and group may do).
    let snapshot = || {
        let out = sb
            .sh(
                "cd /home/alice/proj && for f in $(find . | sort); do stat -c '%n %A' $f; \
                 getfacl -pn --all-effective $f | grep -v '^#'; done",
            )
            .ok()
            .stdout;
        out.lines()
            .map(|line| match line.split_once("\t#effective:") {
                Some((entry, effective)) => {
                    format!("{}:{effective}", entry.rsplit_once(':').unwrap().0)
                }
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = snapshot();
    assert!(before.contains("./owner.txt -rw-rw-r--"), "{before}");
    for access in ["--rw", "--rw", "--ro", "--rw"] {
        sb.as_user("alice", &["share", "coder", "/home/alice/proj", access])
            .ok();
    }
    let after = snapshot();
    // One deliberate difference: the owner gets back full access to the agent's script,
    // which the agent's creation mode 0755 had masked (the grant of a read-write share).
    let alice = sb.sh("id -u alice").ok().stdout.trim().to_string();
    let expected = before.replace(
        &format!(
            "./run.sh -rwxr-xr-x\nuser::rwx\nuser:{}:r-x\nuser:{alice}:r-x\ngroup::r-x\nmask::r-x",
            sb.show("coder")["uid"]
        ),
        &format!(
            "./run.sh -rwxrwxr-x\nuser::rwx\nuser:{}:rwx\nuser:{alice}:rwx\ngroup::r-x\nmask::rwx",
            sb.show("coder")["uid"]
        ),
    );
    assert_ne!(
        expected, before,
        "the script's entries were not found:\n{before}"
    );
    assert_eq!(expected, after, "a re-share widened modes or ACLs");
}

/// Issue 15 item 7: no silent run on a half-made share; the refusal says how to complete it.
#[test]
fn exec_refuses_a_half_made_share_and_says_how_to_complete_it() {
    let sb = Sandbox::new("share-half-made");
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        "mkdir /home/alice/proj && touch /home/alice/proj/f",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    let record = sb.host_path("/var/lib/agentuser/agents/coder.toml");
    let text = std::fs::read_to_string(&record).unwrap();
    for (state, needle) in [
        ("granting", "agentuser share coder /home/alice/proj --rw"),
        ("revoking", "agentuser unshare coder /home/alice/proj"),
    ] {
        // The share's own state line is the one after [[shares]].
        let at = text.find("[[shares]]").expect("a share in the record");
        let (head, tail) = text.split_at(at);
        assert!(tail.contains("state = \"ready\""), "{text}");
        let edited = format!("{head}{}", tail.replacen("\"ready\"", "\"STATE\"", 1));
        std::fs::write(&record, edited.replace("STATE", state)).unwrap();
        // Positive control: the record now says the share is half-made.
        assert_eq!(
            sb.show("coder")["shares"][0]["state"],
            state,
            "{}",
            sb.show("coder")
        );
        sb.as_user("alice", &["exec", "coder", "--", "true"])
            .fails(125, needle);
    }
    std::fs::write(&record, &text).unwrap();
    sb.as_user("alice", &["exec", "coder", "--", "true"]).ok();
}

/// An interrupted `unshare --keep-owner` is completed as it was asked: the journal keeps the
/// flag with the `revoking` state, so a plain rerun leaves the agent's files its own, and
/// exec's refusal names the command with it.
#[test]
fn an_interrupted_keep_owner_unshare_is_completed_keeping() {
    let sb = Sandbox::new("share-keep-journal");
    sb.alice_and_coder();
    let record = sb.host_path("/var/lib/agentuser/agents/coder.toml");
    let made = "/home/alice/proj/made-by-agent";
    for keep in [false, true] {
        sb.sh_as("alice", "rm -rf /home/alice/proj && mkdir /home/alice/proj")
            .ok();
        sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
            .ok();
        sb.exec_sh("alice", "coder", &format!("touch {made}")).ok();
        // The state an unshare leaves when it is killed during its walk.
        let text = std::fs::read_to_string(&record).unwrap();
        let journal = if keep {
            "state = \"revoking\"\nkeep_owner = true"
        } else {
            "state = \"revoking\""
        };
        // The share's own state line is the one after [[shares]].
        let (head, tail) = text.split_at(text.find("[[shares]]").expect("a share"));
        let edited = format!("{head}{}", tail.replacen("state = \"ready\"", journal, 1));
        std::fs::write(&record, edited).unwrap();
        let needle = if keep {
            "agentuser unshare coder /home/alice/proj --keep-owner'"
        } else {
            "agentuser unshare coder /home/alice/proj'"
        };
        sb.as_user("alice", &["exec", "coder", "--", "true"])
            .fails(125, needle);
        // The plain rerun completes it.
        sb.as_user("alice", &["unshare", "coder", "/home/alice/proj"])
            .ok();
        let owner = sb.sh(&format!("stat -c %U {made}")).ok().stdout;
        // Control (keep = false): without the journaled flag the file is handed back.
        let expected = if keep { "agent-coder" } else { "alice" };
        assert_eq!(owner.trim(), expected, "keep_owner journaled: {keep}");
    }
}
