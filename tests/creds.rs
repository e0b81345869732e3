//! Credentials (`cred add|env|list|rm|sync`): the attacks of docs/threat-model.md rows 10, 11, 17,
//! 21 and 22 performed for real by the agent uid or a non-root owner; each test fails if the
//! attack works.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use common::{Out, Sandbox};

const HOME: &str = "/var/lib/agentuser/homes/agent-coder";
const AUTH: &str = "/home/alice/.config/opencode/auth.json";
const AUTH_COPY: &str = "/var/lib/agentuser/homes/agent-coder/.config/opencode/auth.json";

/// A sandbox where alice (group agentuser) owns agent `coder` and has an OpenCode login.
fn setup(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.alice_and_coder();
    sb.sh_as(
        "alice",
        &format!("umask 077; mkdir -p /home/alice/.config/opencode && printf token-v1 > {AUTH}"),
    )
    .ok();
    sb
}

/// `agentuser cred ARGS` as alice, through the setuid bit.
fn alice_cred(sb: &Sandbox, args: &[&str]) -> Out {
    let mut argv = vec!["cred"];
    argv.extend_from_slice(args);
    sb.as_user("alice", &argv)
}

/// One way of running the helper (as the owner, as root).
type Run<'a> = &'a dyn Fn(&[&str]) -> Out;

fn read(sb: &Sandbox, inside: &str) -> String {
    std::fs::read_to_string(sb.host_path(inside)).unwrap_or_else(|e| panic!("{inside}: {e}"))
}

fn sha256(sb: &Sandbox, inside: &str) -> String {
    let out = sb.sh(&format!("sha256sum {inside}")).ok();
    out.stdout.split_whitespace().next().unwrap().to_string()
}

fn cred_list(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out = sb
        .as_user("alice", &["cred", "list", "coder", "--json"])
        .ok();
    out.json().as_array().unwrap().clone()
}

fn states(sb: &Sandbox) -> Vec<String> {
    cred_list(sb)
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_string())
        .collect()
}

/// No temp file of ours is left anywhere in the agent's home.
fn assert_no_leftovers(sb: &Sandbox) {
    let out = sb.sh(&format!("find {HOME} -name '.agentuser-*'")).ok();
    assert_eq!(out.stdout.trim(), "", "temp files left behind");
}

#[test]
fn copy_is_private_to_the_agent_and_tracked() {
    let sb = setup("creds-copy");
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    let agent_uid = sb.show("coder")["uid"].as_u64().unwrap() as u32;
    assert_eq!(read(&sb, AUTH_COPY), "token-v1");
    let meta = std::fs::symlink_metadata(sb.host_path(AUTH_COPY)).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(
        (meta.uid(), meta.gid(), meta.nlink()),
        (agent_uid, agent_uid, 1)
    );
    for dir in [".config", ".config/opencode"] {
        let meta = std::fs::symlink_metadata(sb.host_path(&format!("{HOME}/{dir}"))).unwrap();
        assert_eq!(meta.uid(), agent_uid, "{dir} not created as the agent");
        assert_eq!(meta.mode() & 0o7777, 0o700, "{dir}");
    }
    // The agent reads its copy; the source stays the owner's alone.
    let out = sb.sh_as("agent-coder", &format!("cat {AUTH_COPY}")).ok();
    assert_eq!(out.stdout, "token-v1");
    assert_ne!(sb.sh_as("agent-coder", &format!("cat {AUTH}")).code, 0);

    let list = cred_list(&sb);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "copy");
    assert_eq!(list[0]["source"], AUTH);
    assert_eq!(list[0]["dest"], AUTH_COPY);
    assert_eq!(list[0]["state"], "ok");
    assert_eq!(list[0]["sha256"], sha256(&sb, AUTH));
    assert_eq!(sb.show("coder")["credentials"][0]["state"], "ok");
    let text = alice_cred(&sb, &["list", "coder"]).ok().stdout;
    assert!(text.contains("copy") && text.contains(AUTH_COPY), "{text}");

    // --to: relative to the home, or absolute inside it.
    alice_cred(&sb, &["add", "coder", AUTH, "--to", "keys/a.json"]).ok();
    alice_cred(
        &sb,
        &["add", "coder", AUTH, "--to", &format!("{HOME}/keys/b.json")],
    )
    .ok();
    assert_eq!(read(&sb, &format!("{HOME}/keys/a.json")), "token-v1");
    assert_eq!(read(&sb, &format!("{HOME}/keys/b.json")), "token-v1");
    assert_eq!(cred_list(&sb).len(), 3);
    // Adding the same credential again (here by a relative path) refreshes it instead of
    // duplicating it.
    let bin = sb.bin.display().to_string();
    sb.sh_as(
        "alice",
        &format!("cd /home/alice/.config && {bin} cred add coder ./opencode/auth.json"),
    )
    .ok();
    assert_eq!(cred_list(&sb).len(), 3);
    assert_eq!(cred_list(&sb)[0]["source"], AUTH);
    assert_no_leftovers(&sb);

    // rm by source removes every copy of it and its records, and what an interrupted write
    // may have left next to a copy.
    let stale = format!("{HOME}/.config/opencode/.agentuser-1-2-0.tmp");
    sb.sh(&format!(
        "printf token-v1 > {stale} && chown agent-coder: {stale}"
    ))
    .ok();
    alice_cred(&sb, &["rm", "coder", AUTH]).ok();
    assert!(
        !sb.host_path(&stale).exists(),
        "temp copy left after cred rm"
    );
    assert!(cred_list(&sb).is_empty());
    for gone in [AUTH_COPY, &format!("{HOME}/keys/a.json")] {
        assert!(!sb.host_path(gone).exists(), "{gone} survived cred rm");
    }
    assert_eq!(read(&sb, AUTH), "token-v1", "the source must stay");
    alice_cred(&sb, &["rm", "coder", AUTH]).fails(1, "no credential");
}

#[test]
fn planted_links_and_fifos_in_the_agents_home_are_refused() {
    let sb = setup("creds-planted");
    let passwd = read(&sb, "/etc/passwd");
    // Root writing through a followed link would hit these: run the helper as root too.
    let callers: [Run; 2] = [&|args| sb.as_user("alice", args), &|args| sb.root(args)];

    // The final component is a symlink to /etc/passwd.
    sb.sh_as(
        "agent-coder",
        &format!("mkdir -p {HOME}/.config/opencode && ln -s /etc/passwd {AUTH_COPY}"),
    )
    .ok();
    for run in callers {
        run(&["cred", "add", "coder", AUTH]).fails(1, "symbolic link");
        run(&["cred", "add", "coder", AUTH, "--live"]).fails(1, "symbolic link");
    }
    assert_eq!(read(&sb, "/etc/passwd"), passwd);
    let acl = sb.sh(&format!("getfacl -p {AUTH}")).ok().stdout;
    assert!(!acl.contains("agent-coder"), "{acl}");

    // A parent directory is a symlink to /etc.
    sb.sh_as(
        "agent-coder",
        &format!("rm -rf {HOME}/.config && ln -s /etc {HOME}/.config"),
    )
    .ok();
    for run in callers {
        run(&["cred", "add", "coder", AUTH]).fails(1, "symbolic link");
        run(&["cred", "add", "coder", AUTH, "--to", ".config/passwd"]).fails(1, "symbolic link");
    }
    assert_eq!(read(&sb, "/etc/passwd"), passwd);
    assert!(
        !sb.host_path("/etc/opencode").exists(),
        "wrote through the link"
    );

    // A hardlink to a root file (protected_hardlinks stops the agent making one here, so
    // root plants it, as on a host without that protection).
    sb.sh(&format!(
        "printf root-secret > /var/lib/agentuser/root-file && rm {HOME}/.config && \
         mkdir -p {HOME}/.config/opencode && chown -R agent-coder: {HOME}/.config && \
         ln /var/lib/agentuser/root-file {AUTH_COPY}"
    ))
    .ok();
    for run in callers {
        run(&["cred", "add", "coder", AUTH]).fails(1, "hard links");
    }
    assert_eq!(read(&sb, "/var/lib/agentuser/root-file"), "root-secret");

    // A FIFO: refused, and nothing blocks on it.
    sb.sh(&format!("rm {AUTH_COPY}")).ok();
    sb.sh_as("agent-coder", &format!("mkfifo {AUTH_COPY}")).ok();
    for run in callers {
        run(&["cred", "add", "coder", AUTH]).fails(1, "FIFO");
    }
    assert!(cred_list(&sb).is_empty(), "a refused add left a record");
    assert_no_leftovers(&sb);

    // sync: a legitimate copy later swapped for a link is never written through, --force or not.
    sb.sh_as("agent-coder", &format!("rm {AUTH_COPY}")).ok();
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    sb.sh_as(
        "agent-coder",
        &format!("rm {AUTH_COPY} && ln -s /etc/passwd {AUTH_COPY}"),
    )
    .ok();
    sb.sh_as("alice", &format!("printf token-v2 > {AUTH}")).ok();
    assert_eq!(states(&sb), ["agent-modified"]);
    for run in callers {
        let out = run(&["cred", "sync", "coder", "--force"]).fails(1, "could not be synced");
        assert!(out.stdout.contains("symbolic link"), "{out:#?}");
        run(&["cred", "sync", "coder"]).ok();
    }
    assert_eq!(read(&sb, "/etc/passwd"), passwd);
    // The same with the parent directory swapped for a link.
    sb.sh_as(
        "agent-coder",
        &format!("rm -rf {HOME}/.config && ln -s /etc {HOME}/.config"),
    )
    .ok();
    for run in callers {
        let out = run(&["cred", "sync", "coder", "--force"]).fails(1, "could not be synced");
        assert!(out.stdout.contains("symbolic link"), "{out:#?}");
    }
    assert_eq!(read(&sb, "/etc/passwd"), passwd);
    assert!(!sb.host_path("/etc/opencode").exists());
    // And rm still takes the record away.
    alice_cred(&sb, &["rm", "coder", AUTH]).ok();
    assert!(cred_list(&sb).is_empty());
}

#[test]
fn owners_cannot_obtain_files_they_cannot_read() {
    let sb = setup("creds-deputy");
    sb.add_user("bob", &[]);
    sb.sh_as("bob", "umask 077; printf bob-secret > /home/bob/secret")
        .ok();
    for (file, live) in [
        ("/etc/shadow", false),
        ("/etc/shadow", true),
        ("/home/bob/secret", false),
        ("/home/bob/secret", true),
    ] {
        let mut args = vec!["cred", "add", "coder", file, "--to", "stolen"];
        if live {
            args.push("--live");
        }
        let out = sb.as_user("alice", &args).fails(1, "ermission denied");
        assert!(!out.stderr.contains("bob-secret") && !out.stderr.contains("root:"));
        assert!(
            !sb.host_path(&format!("{HOME}/stolen")).exists(),
            "{file} copied"
        );
    }
    // The agent's own attempt: agents may not use the helper at all.
    sb.as_user("agent-coder", &["cred", "add", "coder", "/etc/shadow"])
        .fails(1, "agent accounts may not use agentuser");
    // A readable file alice does not own cannot be made live (that would change its ACL).
    alice_cred(&sb, &["add", "coder", "/etc/passwd", "--to", "h", "--live"])
        .fails(1, "file you own");
    // Another owner's agent is out of reach.
    sb.add_user("carol", &["agentuser"]);
    sb.sh_as("carol", "printf c > /home/carol/c").ok();
    sb.as_user(
        "carol",
        &["cred", "add", "coder", "/home/carol/c", "--to", "c"],
    )
    .fails(1, "no such agent");
    sb.as_user("carol", &["cred", "list", "coder"])
        .fails(1, "no such agent");
    assert!(cred_list(&sb).is_empty());
}

#[test]
fn bad_sources_and_destinations_are_refused_cleanly() {
    let sb = setup("creds-bad-input");
    sb.sh_as(
        "alice",
        "mkfifo /home/alice/fifo; printf 12345678901234567 > /home/alice/big; \
         printf x > '/home/alice/evil
name'",
    )
    .ok();
    for (args, code, needle) in [
        (vec![AUTH, "--to", "../escape"], 2, "'..'"),
        (vec![AUTH, "--to", "a/../../escape"], 2, "'..'"),
        (
            vec![AUTH, "--to", "/etc/escape"],
            2,
            "outside the agent's home",
        ),
        (
            vec![AUTH, "--to", "/var/lib/agentuser/homes/agent-other/x"],
            2,
            "outside",
        ),
        (vec![AUTH, "--to", HOME], 2, "names no file"),
        (vec!["/etc/passwd"], 2, "--to"),
        (vec!["/home/alice/.config", "--to", "d"], 1, "directory"),
        (vec!["/home/alice/fifo", "--to", "f"], 1, "FIFO"),
        (vec!["/dev/null", "--to", "n"], 1, "device"),
        // (Unreadable already: the helper is not dumpable, so its /proc entries are root's.)
        (
            vec!["/proc/self/environ", "--to", "p"],
            1,
            "/proc/self/environ",
        ),
        (
            vec!["/proc/self/status", "--to", "p"],
            1,
            "pseudo file system",
        ),
        (
            vec!["/sys/kernel/uevent_seqnum", "--to", "p"],
            1,
            "pseudo file system",
        ),
        (vec!["/home/alice/missing", "--to", "m"], 1, "No such file"),
        (
            vec!["/home/alice/evil\nname", "--to", "e"],
            2,
            "control characters",
        ),
        (vec![AUTH, "--to", "a\tb"], 2, "control characters"),
    ] {
        let mut argv = vec!["cred", "add", "coder"];
        argv.extend(args);
        sb.as_user("alice", &argv).fails(code, needle);
    }
    sb.write_config("cred_max_bytes = 16");
    alice_cred(&sb, &["add", "coder", "/home/alice/big", "--to", "big"])
        .fails(1, "larger than 16 bytes");
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    assert!(!sb.host_path("/etc/escape").exists());
    let listing = sb
        .sh(&format!("cd {HOME} && find . -type f | sort"))
        .ok()
        .stdout;
    for never in ["escape", "./d", "./f", "./n", "./m", "./p", "./big"] {
        assert!(!listing.contains(never), "{never} written: {listing}");
    }
    assert_eq!(cred_list(&sb).len(), 1);
    assert_no_leftovers(&sb);
}

#[test]
fn rotation_is_synced_and_agent_changes_are_kept() {
    let sb = setup("creds-sync");
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    let agent_cat = || {
        sb.sh_as("agent-coder", &format!("cat {AUTH_COPY}"))
            .ok()
            .stdout
    };

    // The owner rotates the token: reported, then copied by sync.
    sb.sh_as("alice", &format!("printf token-v2 > {AUTH}")).ok();
    assert_eq!(states(&sb), ["source-changed"]);
    let out = alice_cred(&sb, &["sync", "coder"]).ok();
    assert!(out.stdout.contains("source changed"), "{out:#?}");
    assert_eq!(agent_cat(), "token-v2");
    assert_eq!(states(&sb), ["ok"]);
    assert_eq!(cred_list(&sb)[0]["sha256"], sha256(&sb, AUTH));
    // Nothing changed: sync is quiet.
    assert_eq!(alice_cred(&sb, &["sync", "coder"]).ok().stdout, "");

    // The agent refreshes its token: reported, kept, never copied back to the owner.
    sb.sh_as(
        "agent-coder",
        &format!("printf agent-refreshed > {AUTH_COPY}"),
    )
    .ok();
    sb.sh_as("alice", &format!("printf token-v3 > {AUTH}")).ok();
    assert_eq!(states(&sb), ["agent-modified"]);
    let out = alice_cred(&sb, &["sync", "coder"]).ok();
    assert!(out.stdout.contains("modified by the agent"), "{out:#?}");
    assert_eq!(agent_cat(), "agent-refreshed");
    assert_eq!(read(&sb, AUTH), "token-v3");
    // --force overwrites it.
    alice_cred(&sb, &["sync", "coder", "--force"]).ok();
    assert_eq!(agent_cat(), "token-v3");
    assert_eq!(states(&sb), ["ok"]);

    // The agent deletes its copy: reported, restored by sync.
    sb.sh_as("agent-coder", &format!("rm {AUTH_COPY}")).ok();
    assert_eq!(states(&sb), ["missing-copy"]);
    alice_cred(&sb, &["sync", "coder"]).ok();
    assert_eq!(agent_cat(), "token-v3");

    // The source goes away: reported, the copy stays, sync fails with one line.
    sb.sh_as("alice", &format!("rm {AUTH}")).ok();
    assert_eq!(states(&sb), ["missing-source"]);
    alice_cred(&sb, &["sync", "coder"]).fails(1, "could not be synced");
    assert_eq!(agent_cat(), "token-v3");

    // sync reads as the owner, not as root: a source the owner lost access to is not read.
    sb.sh(&format!(
        "printf root-only > {AUTH} && chown root: {AUTH} && chmod 600 {AUTH}"
    ))
    .ok();
    assert_eq!(states(&sb), ["unreadable-source"]);
    sb.root(&["cred", "sync", "coder", "--force"])
        .fails(1, "could not be synced");
    assert_eq!(agent_cat(), "token-v3");

    // Neither side left: reported, not a crash.
    sb.sh(&format!("rm {AUTH}")).ok();
    sb.sh_as("agent-coder", &format!("rm {AUTH_COPY}")).ok();
    assert_eq!(states(&sb), ["missing-copy"]);
    let out = sb
        .as_user("alice", &["cred", "sync", "coder", "--force"])
        .fails(1, "could not be synced");
    assert!(out.stdout.contains("No such file"), "{out:#?}");
}

#[test]
fn env_credentials_stay_secret() {
    let sb = setup("creds-env");
    const SECRET: &str = "sk-test-0123456789-secret";
    let cmd = sb.user_command("alice", &["cred", "env", "coder", "ANTHROPIC_API_KEY"]);
    let out = sb
        .run_with_stdin(cmd, format!("{SECRET}\n").as_bytes())
        .ok();
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));

    let dir = "/var/lib/agentuser/secrets/coder";
    let file = format!("{dir}/ANTHROPIC_API_KEY");
    assert_eq!(read(&sb, &file), SECRET);
    for (path, mode) in [(dir, 0o700), (file.as_str(), 0o600)] {
        let meta = std::fs::symlink_metadata(sb.host_path(path)).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, mode), "{path}");
    }
    assert_ne!(sb.sh_as("agent-coder", &format!("cat {file}")).code, 0);

    let list = cred_list(&sb);
    assert_eq!(list[0]["kind"], "env");
    assert_eq!(list[0]["source"], "ANTHROPIC_API_KEY");
    assert_eq!(list[0]["state"], "ok");
    for out in [
        sb.root(&["show", "coder", "--json"]).ok(),
        sb.root(&["show", "coder"]).ok(),
        sb.root(&["list", "--json"]).ok(),
        alice_cred(&sb, &["list", "coder"]).ok(),
        alice_cred(&sb, &["list", "coder", "--json"]).ok(),
    ] {
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "{out:#?}"
        );
    }
    // Bad input with the secret on stdin: errors never quote it.
    for (var, input) in [
        ("1BAD", format!("{SECRET}\n")),
        ("PATH", format!("{SECRET}\n")),
        ("GOOD", format!("{SECRET}\0x\n")),
        ("GOOD", String::new()),
    ] {
        let cmd = sb.user_command("alice", &["cred", "env", "coder", var]);
        let out = sb.run_with_stdin(cmd, input.as_bytes());
        assert_ne!(out.code, 0, "{var}: {out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(!out.stderr.contains(SECRET), "{out:#?}");
    }
    assert!(!sb.host_path(&format!("{dir}/GOOD")).exists());
    // Setting it again replaces the value, not the record.
    let cmd = sb.user_command("alice", &["cred", "env", "coder", "ANTHROPIC_API_KEY"]);
    sb.run_with_stdin(cmd, b"rotated").ok();
    assert_eq!(read(&sb, &file), "rotated");
    assert_eq!(cred_list(&sb).len(), 1);

    alice_cred(&sb, &["rm", "coder", "ANTHROPIC_API_KEY"]).ok();
    assert!(!sb.host_path(&file).exists());
    assert!(cred_list(&sb).is_empty());
}

#[test]
fn live_credentials_get_a_read_acl_on_the_file_only() {
    let sb = setup("creds-live");
    const GH: &str = "/home/alice/.config/gh/hosts.yml";
    const GH_DEST: &str = "/var/lib/agentuser/homes/agent-coder/.config/gh/hosts.yml";
    sb.sh_as(
        "alice",
        &format!(
            "umask 077; mkdir -p /home/alice/.config/gh && printf gh-v1 > {GH} && \
             chmod 711 /home/alice/.config /home/alice/.config/gh"
        ),
    )
    .ok();
    // (Traversable ancestors let this test read through the host's paths; in the agent's
    // view the runner's bind mount is the only way to the file.)
    alice_cred(&sb, &["add", "coder", GH, "--live"]).ok();
    let agent_uid = sb.show("coder")["uid"].as_u64().unwrap() as u32;

    let acl = sb.sh(&format!("getfacl -pn {GH}")).ok().stdout;
    assert!(acl.contains(&format!("user:{agent_uid}:r--")), "{acl}");
    for ancestor in [
        "/home/alice",
        "/home/alice/.config",
        "/home/alice/.config/gh",
    ] {
        let acl = sb.sh(&format!("getfacl -pn {ancestor}")).ok().stdout;
        assert!(
            !acl.contains(&agent_uid.to_string()),
            "ACL on {ancestor}: {acl}"
        );
    }
    // The placeholder: empty, 0600, the agent's (the runner mounts onto it).
    let meta = std::fs::symlink_metadata(sb.host_path(GH_DEST)).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        (meta.len(), meta.mode() & 0o7777, meta.uid()),
        (0, 0o600, agent_uid)
    );
    // Readable by the agent, not writable.
    assert_eq!(
        sb.sh_as("agent-coder", &format!("cat {GH}")).ok().stdout,
        "gh-v1"
    );
    assert_ne!(
        sb.sh_as("agent-coder", &format!("printf x >> {GH}")).code,
        0
    );
    assert_eq!(read(&sb, GH), "gh-v1");

    let list = cred_list(&sb);
    assert_eq!(list[0]["kind"], "live");
    assert_eq!(list[0]["dest"], GH_DEST);
    assert_eq!(list[0]["state"], "ok");
    // A live credential is pinned to the inode added: a file renamed over it is another
    // file, which gets no ACL entry from sync or exec until the owner adds it again.
    sb.sh_as(
        "alice",
        &format!("umask 077; printf gh-v2 > {GH}.new && mv {GH}.new {GH}"),
    )
    .ok();
    assert_eq!(states(&sb), ["source-replaced"]);
    let out = alice_cred(&sb, &["sync", "coder"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.contains("now another file"), "{out:#?}");
    assert_ne!(sb.sh_as("agent-coder", &format!("cat {GH}")).code, 0);
    alice_cred(&sb, &["add", "coder", GH, "--live"]).ok();
    assert_eq!(
        sb.sh_as("agent-coder", &format!("cat {GH}")).ok().stdout,
        "gh-v2"
    );
    assert_eq!(states(&sb), ["ok"]);

    let views: Vec<_> = sb.show("coder")["credentials"].as_array().unwrap().clone();
    assert_eq!(views[0]["kind"], "live");

    alice_cred(&sb, &["rm", "coder", GH]).ok();
    let acl = sb.sh(&format!("getfacl -pn {GH}")).ok().stdout;
    assert!(!acl.contains(&agent_uid.to_string()), "{acl}");
    assert_ne!(sb.sh_as("agent-coder", &format!("cat {GH}")).code, 0);
    assert!(!sb.host_path(GH_DEST).exists(), "placeholder left");
    assert_eq!(read(&sb, GH), "gh-v2");

    // Named through a symlinked directory, a live file is recorded by its real path (the
    // runner binds it without following links) and can be removed by either name.
    sb.sh_as("alice", "ln -s .config/gh /home/alice/gh-link")
        .ok();
    alice_cred(
        &sb,
        &[
            "add",
            "coder",
            "/home/alice/gh-link/hosts.yml",
            "--live",
            "--to",
            "gh2",
        ],
    )
    .ok();
    assert_eq!(cred_list(&sb)[0]["source"], GH);
    alice_cred(&sb, &["rm", "coder", "/home/alice/gh-link/hosts.yml"]).ok();
    assert!(!sb.host_path(&format!("{HOME}/gh2")).exists());
    assert!(cred_list(&sb).is_empty());
    let acl = sb.sh(&format!("getfacl -pn {GH}")).ok().stdout;
    assert!(!acl.contains(&agent_uid.to_string()), "{acl}");
}

#[test]
fn delete_removes_every_credential() {
    let sb = setup("creds-delete");
    alice_cred(&sb, &["add", "coder", AUTH, "--live", "--to", "live.json"]).ok();
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    let cmd = sb.user_command("alice", &["cred", "env", "coder", "GH_TOKEN"]);
    sb.run_with_stdin(cmd, b"ghp-secret").ok();
    let agent_uid = sb.show("coder")["uid"].as_u64().unwrap() as u32;
    assert!(
        sb.sh(&format!("getfacl -pn {AUTH}"))
            .ok()
            .stdout
            .contains(&agent_uid.to_string())
    );
    sb.as_user("alice", &["delete", "coder", "--keep-home"])
        .ok();
    let acl = sb.sh(&format!("getfacl -pn {AUTH}")).ok().stdout;
    assert!(!acl.contains(&agent_uid.to_string()), "{acl}");
    assert!(!sb.host_path("/var/lib/agentuser/secrets/coder").exists());
    assert!(!sb.host_path(AUTH_COPY).exists(), "copy kept with the home");
    assert!(!sb.host_path(&format!("{HOME}/live.json")).exists());
    assert_eq!(read(&sb, AUTH), "token-v1");
}

/// An exec that the test talks to: lines from its stdout, a newline to its stdin to finish.
struct Interactive {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Interactive {
    fn start(sb: &Sandbox, script: &str) -> Interactive {
        let mut cmd = sb.exec_sh_command("alice", "coder", script);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Interactive { child, stdout }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Lets the script go on and returns the rest of its output.
    fn finish(mut self) -> String {
        use std::io::Read;
        self.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success());
        rest
    }
}

#[test]
fn exec_sees_rotated_copies_env_values_and_live_files() {
    let sb = setup("creds-exec");
    const GH: &str = "/home/alice/gh.yml";
    sb.sh_as("alice", &format!("umask 077; printf gh-v1 > {GH}"))
        .ok();
    alice_cred(&sb, &["add", "coder", AUTH]).ok();
    alice_cred(&sb, &["add", "coder", GH, "--live", "--to", "gh.yml"]).ok();
    let cmd = sb.user_command("alice", &["cred", "env", "coder", "GH_TOKEN"]);
    sb.run_with_stdin(cmd, b"ghp-secret-value").ok();
    let exec = |script: &str| sb.exec_sh("alice", "coder", script);

    // Rotation: the next exec copies the new source first.
    sb.sh_as("alice", &format!("printf token-v2 > {AUTH}")).ok();
    assert_eq!(exec(&format!("cat {AUTH_COPY}")).ok().stdout, "token-v2");
    // Agent-modified copies are kept.
    exec(&format!("printf mine > {AUTH_COPY}")).ok();
    sb.sh_as("alice", &format!("printf token-v3 > {AUTH}")).ok();
    assert_eq!(exec(&format!("cat {AUTH_COPY}")).ok().stdout, "mine");

    // The env value reaches the agent, and no process's argv on the host while it runs.
    let mut run = Interactive::start(&sb, "printf '%s\\n' \"$GH_TOKEN\"; read x");
    assert_eq!(run.line(), "ghp-secret-value");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let argv = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&argv).contains("ghp-secret-value"),
            "the value is in the argv of {:?}",
            entry.path()
        );
    }
    run.finish();

    // Live: the owner's change is seen at once, within the same run.
    let dest = format!("{HOME}/gh.yml");
    let mut run = Interactive::start(&sb, &format!("cat {dest}; echo; read x; cat {dest}"));
    assert_eq!(run.line(), "gh-v1");
    sb.sh_as("alice", &format!("printf gh-v2 > {GH}")).ok();
    assert_eq!(run.finish(), "gh-v2");
    // Read-only for the agent; gone after rm.
    assert_ne!(exec(&format!("printf x > {dest}")).code, 0);
    assert_eq!(read(&sb, GH), "gh-v2");
    alice_cred(&sb, &["rm", "coder", GH]).ok();
    assert_ne!(exec(&format!("cat {GH} || cat {dest}")).stdout, "gh-v2");

    // A live source named through a symlinked directory (dotfile managers do this).
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/dotfiles && ln -s dotfiles /home/alice/.dot && \
         printf dot-v1 > /home/alice/dotfiles/tok",
    )
    .ok();
    alice_cred(
        &sb,
        &[
            "add",
            "coder",
            "/home/alice/.dot/tok",
            "--live",
            "--to",
            "tok",
        ],
    )
    .ok();
    assert_eq!(exec(&format!("cat {HOME}/tok")).ok().stdout, "dot-v1");

    // docs/threat-model.md row 21: the agent swaps the mount target for a symlink to a system file.
    // Neither sync nor the runner follows it: /etc/hostname keeps its content in the view.
    let hostname = read(&sb, "/etc/hostname");
    sb.sh_as(
        "agent-coder",
        &format!("rm {HOME}/tok && ln -s /etc/hostname {HOME}/tok"),
    )
    .ok();
    let out = exec("cat /etc/hostname");
    assert!(
        !out.stdout.contains("dot-v1"),
        "mounted through the link: {out:#?}"
    );
    if out.code == 0 {
        assert_eq!(out.stdout, hostname);
    }
    assert_eq!(read(&sb, "/etc/hostname"), hostname);
}

#[test]
fn a_value_typed_on_a_terminal_is_not_echoed() {
    let sb = setup("creds-tty");
    const SECRET: &str = "typed-secret-42";
    // A real pty: wait for the prompt, type the value, collect everything the terminal shows.
    let driver = format!(
        r#"import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv("{bin}", ["agentuser", "cred", "env", "coder", "TYPED"])
out = b""
while b"(not echoed): " not in out:
    out += os.read(fd, 1024)
os.write(fd, b"{SECRET}\r")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#,
        bin = sb.bin.display()
    );
    std::fs::write(sb.host_path("/tmp/type-secret.py"), driver).unwrap();
    let out = sb.sh_as("alice", "python3 /tmp/type-secret.py").ok();
    assert!(out.stdout.contains("value for TYPED"), "{out:#?}");
    assert!(!out.stdout.contains(SECRET), "echoed: {out:#?}");
    assert_eq!(read(&sb, "/var/lib/agentuser/secrets/coder/TYPED"), SECRET);
}

#[test]
fn cred_changes_are_logged_without_values() {
    let sb = setup("creds-syslog");
    const SECRET: &str = "sk-logged-never-0042";
    let bin = sb.bin.display().to_string();
    let alice = format!("setpriv --reuid alice --regid alice --init-groups -- {bin}");
    let log = sb.syslog_during(&format!(
        "{alice} cred add coder {AUTH}
printf '{SECRET}' | {alice} cred env coder API_KEY
printf token-v2 > {AUTH}
{alice} cred sync coder
{alice} cred rm coder API_KEY"
    ));
    for action in [
        "action=cred-add kind=copy",
        "action=cred-env var=API_KEY",
        "action=cred-sync",
        "action=cred-rm kind=env",
    ] {
        assert!(log.contains(action), "no {action:?} in {log:?}");
    }
    assert!(!log.contains(SECRET), "the value reached syslog: {log:?}");
}

#[test]
fn a_source_the_agent_can_change_is_never_read() {
    let sb = setup("creds-source-in-share");
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/proj /home/alice/.ssh && echo OWNER-SSH-KEY > /home/alice/.ssh/id \
         && chmod 600 /home/alice/.ssh/id && echo token > /home/alice/proj/.env",
    )
    .ok();
    // Added while the tree is private, then the tree is shared read-write.
    alice_cred(
        &sb,
        &["add", "coder", "/home/alice/proj/.env", "--to", "proj.env"],
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/proj", "--rw"])
        .ok();
    // The agent swaps the source for a link to the owner's key.
    sb.sh_as(
        "agent-coder",
        "rm /home/alice/proj/.env && ln -s /home/alice/.ssh/id /home/alice/proj/.env",
    )
    .ok();
    let out = alice_cred(&sb, &["sync", "coder"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stdout.contains("which the agent can change"),
        "{out:#?}"
    );
    let copy = read(&sb, "/var/lib/agentuser/homes/agent-coder/proj.env");
    assert!(
        !copy.contains("OWNER-SSH-KEY"),
        "the key was copied to the agent"
    );
    // Adding a source inside a share, or through a directory the agent swapped, is refused.
    for src in ["/home/alice/proj/.env", "/home/alice/proj/x/../.env"] {
        alice_cred(&sb, &["add", "coder", src, "--to", "other.env"])
            .fails(1, "which the agent can change");
    }
    assert!(
        !sb.host_path("/var/lib/agentuser/homes/agent-coder/other.env")
            .exists()
    );
}

/// docs/threat-model.md row 25: a source that any uid but the owner and root could change, another
/// agent through its share above all, is refused at add and never read at sync; a live
/// source is pinned to its inode, so no ACL entry ever lands on another file.
#[test]
fn a_source_another_agent_or_user_can_change_is_refused() {
    let sb = setup("creds-cross-agent");
    sb.as_user("alice", &["create", "b"]).ok();
    let coder_uid = sb.show("coder")["uid"].as_u64().unwrap();
    sb.sh_as(
        "alice",
        "umask 077; mkdir -p /home/alice/.ssh /home/alice/projB /home/alice/projC \
         && echo OWNER-SSH-KEY > /home/alice/.ssh/id_rsa && echo OWNER-NETRC > /home/alice/.netrc \
         && echo tokB > /home/alice/projB/token && echo tokC > /home/alice/projC/token \
         && echo liveC > /home/alice/projC/live",
    )
    .ok();
    // In agent b's read-write share: refused for agent coder, copy and live alike.
    sb.as_user("alice", &["share", "b", "/home/alice/projB", "--rw"])
        .ok();
    for extra in [&[][..], &["--live"][..]] {
        let mut args = vec!["add", "coder", "/home/alice/projB/token", "--to", "t"];
        args.extend_from_slice(extra);
        alice_cred(&sb, &args).fails(1, "not a credential source");
    }
    // Added while private, then shared read-write with b, which swaps both for links.
    alice_cred(
        &sb,
        &["add", "coder", "/home/alice/projC/token", "--to", "c"],
    )
    .ok();
    alice_cred(
        &sb,
        &[
            "add",
            "coder",
            "/home/alice/projC/live",
            "--to",
            "l",
            "--live",
        ],
    )
    .ok();
    sb.as_user("alice", &["share", "b", "/home/alice/projC", "--rw"])
        .ok();
    sb.sh_as(
        "agent-b",
        "cd /home/alice/projC && rm token live && ln -s /home/alice/.ssh/id_rsa token \
         && ln -s /home/alice/.netrc live",
    )
    .ok();
    // Positive control: the swap worked; a plain read by the owner now yields the key.
    assert!(
        sb.sh_as("alice", "cat /home/alice/projC/token")
            .ok()
            .stdout
            .contains("OWNER-SSH-KEY")
    );
    let out = alice_cred(&sb, &["sync", "coder"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.contains("not a credential source"), "{out:#?}");
    sb.as_user("alice", &["exec", "coder", "--", "true"]);
    let copy = read(&sb, &format!("{HOME}/c"));
    assert!(!copy.contains("OWNER-SSH-KEY"), "the key reached coder");
    for secret in ["/home/alice/.netrc", "/home/alice/.ssh/id_rsa"] {
        let acl = sb.sh(&format!("getfacl -pn {secret}")).ok().stdout;
        assert!(
            !acl.contains(&format!("user:{coder_uid}")),
            "{secret}: {acl}"
        );
    }
    assert_ne!(
        sb.sh_as("agent-coder", "cat /home/alice/.netrc").code,
        0,
        "coder reads the owner's .netrc"
    );
}

/// The same rule for every other way a uid could change a source: a world-writable
/// directory (/tmp), a link through one, a directory another user owns.
#[test]
fn sources_behind_places_others_can_write_are_refused() {
    let sb = setup("creds-strict-modes");
    sb.add_user("bob", &[]);
    sb.sh_as(
        "alice",
        "umask 077; echo tok > /tmp/tok && ln -s /tmp/tok /home/alice/tok-link",
    )
    .ok();
    sb.sh("mkdir -m 0755 /home/bob/drop && chown bob: /home/bob/drop \
           && echo tok > /home/bob/drop/tok && chown alice: /home/bob/drop/tok && chmod 600 /home/bob/drop/tok")
        .ok();
    for (src, needle) in [
        ("/tmp/tok", "writable by group or others"),
        ("/home/alice/tok-link", "writable by group or others"),
        ("/home/bob/drop/tok", "owned by uid"),
    ] {
        alice_cred(&sb, &["add", "coder", src, "--to", "x"]).fails(1, needle);
        assert!(!sb.host_path(&format!("{HOME}/x")).exists(), "{src} copied");
    }
    // Positive control: bob can indeed swap the file in his directory.
    sb.sh_as(
        "bob",
        "mv /home/bob/drop/tok /home/bob/drop/old && ln -s /etc/hostname /home/bob/drop/tok",
    )
    .ok();
}

/// A run refused because a live credential's path became a symlink says so.
#[test]
fn a_live_source_turned_symlink_refuses_the_run_with_a_clear_error() {
    let sb = setup("creds-live-symlink");
    sb.sh_as(
        "alice",
        "umask 077; echo tok > /home/alice/live && echo other > /home/alice/other",
    )
    .ok();
    alice_cred(
        &sb,
        &["add", "coder", "/home/alice/live", "--to", "l", "--live"],
    )
    .ok();
    sb.sh_as(
        "alice",
        "rm /home/alice/live && ln -s /home/alice/other /home/alice/live",
    )
    .ok();
    let out = sb.as_user(
        "alice",
        &["exec", "coder", "--", "cat", &format!("{HOME}/l")],
    );
    assert_eq!(out.code, 125, "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("/home/alice/live") && last.contains("symbolic link"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("Broken pipe"), "{out:#?}");
    assert!(!out.stdout.contains("other"), "{out:#?}");
}

/// Issue 15 items 4 and 5: a live grant is journaled before it is made, so a kill at any
/// point of `cred add --live` leaves nothing `cred rm` cannot take away; and taking the last
/// named entry away leaves the owner's file exactly as it was (no mask, no `+`, same mode).
#[test]
fn a_killed_live_add_leaves_nothing_behind_and_rm_restores_the_file() {
    let sb = setup("creds-live-journal");
    let uid = sb.show("coder")["uid"].as_u64().unwrap();
    sb.sh_as("alice", "umask 077; echo tok > /home/alice/tok")
        .ok();
    let before = sb.sh("stat -c %A /home/alice/tok").ok().stdout;
    assert_eq!(before.trim(), "-rw-------");
    let src = "/home/alice/tok";
    // Kill at each rename (record saves, placeholder) in turn, then remove the credential.
    for n in 1..=4 {
        let bin = sb.bin.to_str().unwrap().to_string();
        let inject = format!("inject=rename,renameat,renameat2:signal=KILL:when={n}");
        sb.run(sb.command(&[
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-u",
            "alice",
            "-e",
            "trace=rename,renameat,renameat2",
            "-e",
            &inject,
            &bin,
            "cred",
            "add",
            "coder",
            src,
            "--to",
            "l",
            "--live",
        ]));
        let _ = alice_cred(&sb, &["rm", "coder", src]);
        let acl = sb.sh(&format!("getfacl -pn {src}")).ok().stdout;
        assert!(
            !acl.contains(&format!("user:{uid}:")),
            "kill at rename {n}: {acl}"
        );
        assert!(!acl.contains("mask::"), "kill at rename {n}: {acl}");
        let mode = sb.sh(&format!("stat -c %A {src}")).ok().stdout;
        assert_eq!(mode, before, "kill at rename {n}");
    }
    // Uninterrupted: granted, then taken back without a trace.
    alice_cred(&sb, &["add", "coder", src, "--to", "l", "--live"]).ok();
    assert!(sb.sh("ls -l /home/alice/tok").ok().stdout.contains("+ "));
    alice_cred(&sb, &["rm", "coder", src]).ok();
    let listing = sb.sh("ls -l /home/alice/tok").ok().stdout;
    assert!(listing.starts_with("-rw------- "), "{listing}");
}
