//! Daily use (issue 10): errors that help, hidden agents of other owners, change notes on a
//! terminal, dry runs, per-agent settings, files handed back on unshare and delete, shell
//! completions. Attacks are made for real by a second uid, each with a control showing what
//! happens without the protection.

mod common;

use common::{Out, Sandbox};

/// `agentuser ARGS` as `user`, on a terminal (script(1)): stdout and stderr both on it.
fn on_terminal(sb: &Sandbox, user: &str, args: &str) -> Out {
    sb.sh(&format!(
        "script -qec 'setpriv --reuid {user} --regid {user} --init-groups -- {} {args}' /dev/null",
        sb.bin.display()
    ))
}

fn stat(sb: &Sandbox, format: &str, path: &str) -> String {
    sb.sh(&format!("stat -c '{format}' {path}"))
        .ok()
        .stdout
        .trim()
        .to_owned()
}

#[test]
fn usage_errors_name_the_missing_argument_and_suggest_dashes() {
    let sb = Sandbox::new("daily-usage");
    sb.alice_and_coder();
    sb.as_user("alice", &["exec", "coder"])
        .fails(2, "missing <COMMAND>...: usage: agentuser exec");
    sb.as_user("alice", &["exec", "coder", "ls", "-la"]).fails(
        2,
        "unexpected argument 'ls': put the command after '--': agentuser exec coder -- ls -la",
    );
    sb.as_user("alice", &["share", "coder"])
        .fails(2, "missing <PATH>");
}

#[test]
fn other_owners_agents_do_not_exist_for_non_root_callers() {
    let sb = Sandbox::new("daily-hidden");
    sb.alice_and_coder();
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("alice", &["create", "broken"]).ok();
    sb.sh("printf 'garbage = [\\n' >> /var/lib/agentuser/agents/broken.toml")
        .ok();
    let commands: [&[&str]; 11] = [
        &["show", "NAME"],
        &["delete", "NAME"],
        &["delete", "NAME", "--dry-run"],
        &["unshare", "NAME", "/home/bob"],
        &["share", "NAME", "/home/bob"],
        &["exec", "NAME", "--", "id"],
        &["audit", "NAME"],
        &["cred", "list", "NAME"],
        &["net", "NAME", "list"],
        &["set", "NAME", "network=none"],
        &["unset", "NAME", "network"],
    ];
    for argv in commands {
        let with =
            |name: &str| -> Vec<String> { argv.iter().map(|a| a.replace("NAME", name)).collect() };
        let run = |name: &str| {
            let args = with(name);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sb.as_user("bob", &args)
        };
        // Alice's agent, her damaged one, and a name no agent has read the same to bob.
        let ghost = run("ghost");
        assert!(
            ghost.stderr.contains("agent 'ghost': no such agent"),
            "{ghost:#?}"
        );
        for name in ["coder", "broken"] {
            let out = run(name);
            assert_eq!(out.code, ghost.code, "{argv:?} {name}: {out:#?}");
            assert_eq!(
                out.stderr.replace(name, "ghost"),
                ghost.stderr,
                "{argv:?} {name}"
            );
        }
    }
    let taken = sb.as_user("bob", &["create", "coder"]);
    let taken = taken.fails(1, "agent 'coder': the name is unavailable");
    assert!(!taken.stderr.contains("alice"));
    // Controls: the owner and root see them.
    sb.as_user("alice", &["show", "coder"]).ok();
    sb.root(&["show", "coder"]).ok();
    let damaged = sb.as_user("alice", &["show", "broken"]);
    assert!(
        damaged.code == 1 && damaged.stderr.contains("broken.toml: unclosed array"),
        "{damaged:#?}"
    );
    let again = sb.as_user("alice", &["create", "coder"]);
    assert!(
        again.code == 1 && again.stderr.contains("agent 'coder' already exists"),
        "{again:#?}"
    );
}

#[test]
fn changes_are_told_on_a_terminal_and_not_to_scripts() {
    let sb = Sandbox::new("daily-notes");
    sb.add_user("alice", &["agentuser"]);
    sb.sh_as("alice", "mkdir /home/alice/p").ok();
    for (args, told) in [
        (
            "create coder",
            "agentuser: created agent coder (user agent-coder, uid ",
        ),
        (
            "share coder /home/alice/p --rw",
            "agentuser: shared /home/alice/p with coder (rw)",
        ),
        (
            "set coder env.EDITOR=vim",
            "agentuser: agent coder: set env.EDITOR=vim",
        ),
    ] {
        let out = on_terminal(&sb, "alice", args).ok();
        assert!(out.stdout.contains(told), "{args}: {out:#?}");
    }
    // Not a terminal: nothing.
    let quiet = sb
        .as_user("alice", &["share", "coder", "/home/alice/p", "--ro"])
        .ok();
    assert_eq!(quiet.stderr, "", "{quiet:#?}");
    let quiet = sb
        .as_user("alice", &["unshare", "coder", "/home/alice/p"])
        .ok();
    assert_eq!(quiet.stderr, "", "{quiet:#?}");
    let deleted = on_terminal(&sb, "alice", "delete coder").ok();
    assert!(
        deleted
            .stdout
            .contains("agentuser: deleted agent coder (user agent-coder, uid "),
        "{deleted:#?}"
    );
}

/// alice's rw share /home/alice/p where coder made: `made` (0644), `venv/lib/mod.py`,
/// `setgid` (02644), `hl` with a second link `hl2`, and `sym`, a symlink to `~/own` in its
/// home.
fn agent_made_files(sb: &Sandbox) {
    sb.sh_as(
        "alice",
        "mkdir /home/alice/p && echo mine > /home/alice/p/alices",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/p", "--rw"])
        .ok();
    sb.as_user(
        "alice",
        &[
            "exec",
            "coder",
            "--cwd",
            "/home/alice/p",
            "--",
            "/bin/sh",
            "-c",
            "set -e; umask 022; echo x > made; mkdir -p venv/lib; echo y > venv/lib/mod.py; \
             echo z > setgid; chmod 2644 setgid; echo h > hl; ln hl hl2; \
             echo o > ~/own; ln -s ~/own sym",
        ],
    )
    .ok();
}

#[test]
fn delete_hands_the_agents_files_back_to_the_owner() {
    let sb = Sandbox::new("daily-handback");
    let uid = sb.alice_and_coder();
    let alice = stat(&sb, "%u %g", "/home/alice");
    agent_made_files(&sb);
    assert_eq!(stat(&sb, "%u", "/home/alice/p/made"), uid.to_string());

    // A dry run says what would happen and changes nothing.
    let plan = sb
        .as_user("alice", &["delete", "coder", "--dry-run"])
        .ok()
        .stdout;
    for needle in [
        "would delete agent coder",
        "remove account agent-coder",
        "would unshare /home/alice/p (rw) from coder",
        "give the files it owns there to alice",
    ] {
        assert!(plan.contains(needle), "{needle}: {plan}");
    }
    assert!(sb.user_exists("agent-coder"));
    assert_eq!(stat(&sb, "%u", "/home/alice/p/made"), uid.to_string());

    let out = sb.as_user("alice", &["delete", "coder"]).ok();
    assert!(
        out.stderr
            .contains("hl: has 2 hard links: left owned by the agent"),
        "{out:#?}"
    );
    for path in ["made", "venv", "venv/lib", "venv/lib/mod.py", "setgid"] {
        assert_eq!(
            stat(&sb, "%u %g", &format!("/home/alice/p/{path}")),
            alice,
            "{path}"
        );
    }
    // The owner's chmod works on what the agent made (it failed before: see the control).
    sb.sh_as(
        "alice",
        "chmod 600 /home/alice/p/made /home/alice/p/venv/lib/mod.py",
    )
    .ok();
    // No set-id file of the agent's becomes the owner's.
    let mode = u32::from_str_radix(&stat(&sb, "%a", "/home/alice/p/setgid"), 8).unwrap();
    assert_eq!(mode & 0o6000, 0, "{mode:o}");
    // The hard-linked file and the symlink were not touched.
    assert_eq!(stat(&sb, "%u", "/home/alice/p/hl"), uid.to_string());
    let link_owner = sb.sh("find /home/alice/p/sym -printf %U").ok().stdout;
    assert_eq!(link_owner, uid.to_string());
}

#[test]
fn keep_owner_leaves_files_with_the_dead_uid_the_control() {
    let sb = Sandbox::new("daily-keepowner");
    let uid = sb.alice_and_coder();
    agent_made_files(&sb);
    sb.as_user("alice", &["delete", "coder", "--keep-owner"])
        .ok();
    assert_eq!(stat(&sb, "%u", "/home/alice/p/made"), uid.to_string());
    let chmod = sb.sh_as("alice", "chmod 600 /home/alice/p/made");
    assert_ne!(chmod.code, 0, "{chmod:#?}");
    let mode = u32::from_str_radix(&stat(&sb, "%a", "/home/alice/p/setgid"), 8).unwrap();
    assert_ne!(mode & 0o2000, 0, "{mode:o}");
}

#[test]
fn unshare_hands_back_without_following_a_symlink() {
    let sb = Sandbox::new("daily-unshare");
    let uid = sb.alice_and_coder();
    let alice = stat(&sb, "%u", "/home/alice");
    agent_made_files(&sb);
    let home = sb.show("coder")["home"].as_str().unwrap().to_owned();
    let plan = sb
        .as_user("alice", &["unshare", "coder", "/home/alice/p", "--dry-run"])
        .ok()
        .stdout;
    assert!(
        plan.contains("give the files it owns there to alice"),
        "{plan}"
    );
    assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 1);

    sb.as_user("alice", &["unshare", "coder", "/home/alice/p"])
        .ok();
    assert_eq!(sb.show("coder")["shares"].as_array().unwrap().len(), 0);
    assert_eq!(stat(&sb, "%u", "/home/alice/p/made"), alice);
    // The symlink itself and the agent's file it points to are still the agent's.
    let link_owner = sb.sh("find /home/alice/p/sym -printf %U").ok().stdout;
    assert_eq!(link_owner, uid.to_string());
    assert_eq!(stat(&sb, "%u", &format!("{home}/own")), uid.to_string());
    // Control: a chown that follows the link would have given alice the agent's file.
    sb.sh("chown alice /home/alice/p/sym").ok();
    assert_eq!(stat(&sb, "%u", &format!("{home}/own")), alice);
}

#[test]
fn settings_persist_and_shape_every_run() {
    let sb = Sandbox::new("daily-settings");
    sb.alice_and_coder();
    sb.sh_as("alice", "mkdir /home/alice/p").ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/p", "--rw"])
        .ok();
    sb.as_user(
        "alice",
        &[
            "set",
            "coder",
            "env.EDITOR=vim -n",
            "network=none",
            "cwd=/home/alice/p",
        ],
    )
    .ok();
    let json = sb.show("coder");
    assert_eq!(json["env"]["EDITOR"], "vim -n");
    assert_eq!(json["network"], "none");
    assert_eq!(json["network_from"], "agent");
    assert_eq!(json["cwd"], "/home/alice/p");
    let text = sb.as_user("alice", &["show", "coder"]).ok().stdout;
    assert!(text.contains("network: none (from the agent)"), "{text}");
    assert!(text.contains("  EDITOR=vim -n"), "{text}");

    let home = json["home"].as_str().unwrap().to_owned();
    let mut cmd = sb.exec_sh_command(
        "alice",
        "coder",
        "echo \"$EDITOR|$(pwd)|$PATH|$NPM_CONFIG_PREFIX|$COLORTERM|$TERM_PROGRAM\"; \
         awk -F: 'NR > 2 { gsub(/ /, \"\", $1); print $1 }' /proc/net/dev",
    );
    cmd.env("COLORTERM", "truecolor")
        .env("TERM_PROGRAM", "WezTerm");
    let out = sb.run(cmd).ok().stdout;
    let mut lines = out.lines();
    let first: Vec<&str> = lines.next().unwrap().split('|').collect();
    assert_eq!(first[0], "vim -n");
    assert_eq!(first[1], "/home/alice/p");
    assert!(
        first[2].starts_with(&format!("{home}/.local/bin:{home}/bin:{home}/.cargo/bin:")),
        "{out}"
    );
    assert_eq!(first[3], format!("{home}/.local"));
    assert_eq!(&first[4..], ["truecolor", "WezTerm"]);
    let interfaces: Vec<&str> = lines.collect();
    assert_eq!(interfaces, ["lo"], "network=none: {out}");
    // --network and --cwd still win; the control shows the host has more than lo.
    let host = sb
        .as_user(
            "alice",
            &[
                "exec",
                "coder",
                "--network",
                "host",
                "--cwd",
                "/tmp",
                "--",
                "/bin/sh",
                "-c",
                "pwd; cat /proc/net/dev",
            ],
        )
        .ok()
        .stdout;
    assert!(
        host.starts_with("/tmp\n") && host.lines().count() > 4,
        "{host}"
    );

    // A user-level install lands on the agent's PATH.
    sb.as_user(
        "alice",
        &["exec", "coder", "--", "/bin/sh", "-c", "mkdir -p ~/.local/bin && printf '#!/bin/sh\\necho mine\\n' > ~/.local/bin/mytool && chmod +x ~/.local/bin/mytool"],
    )
    .ok();
    let mine = sb.as_user("alice", &["exec", "coder", "--", "mytool"]).ok();
    assert_eq!(mine.stdout, "mine\n");

    // Secrets and agentuser's own variables are refused; nothing changes.
    sb.as_user("alice", &["set", "coder", "env.A=1", "env.GITHUB_TOKEN=x"])
        .fails(2, "cred env");
    sb.as_user("alice", &["set", "coder", "env.PATH=/tmp"])
        .fails(2, "set by agentuser itself");
    sb.as_user("alice", &["set", "coder", "network=internet"])
        .fails(2, "allowlist, none or host");
    assert!(sb.show("coder")["env"].get("A").is_none());

    sb.as_user("alice", &["unset", "coder", "network", "cwd", "env.EDITOR"])
        .ok();
    let json = sb.show("coder");
    assert_eq!(json["network_from"], "config");
    assert!(json["cwd"].is_null());
    assert!(json["env"].as_object().unwrap().is_empty());
    sb.as_user("alice", &["unset", "coder", "cwd"])
        .fails(2, "no setting 'cwd'");
    // A cwd that is not in the agent's view fails the run, naming the setting.
    sb.as_user("alice", &["set", "coder", "cwd=/home/alice/nope"])
        .ok();
    sb.as_user("alice", &["exec", "coder", "--", "true"]).fails(
        125,
        "the agent's cwd setting /home/alice/nope: not accessible",
    );
}

#[test]
fn sharing_again_keeps_allow_git_writes_until_taken_away() {
    let sb = Sandbox::new("daily-gitwrites");
    sb.alice_and_coder();
    sb.sh_as("alice", "mkdir /home/alice/p").ok();
    let git = |sb: &Sandbox| sb.show("coder")["shares"][0]["git"].clone();
    let share_rw = |flag: Option<&str>| {
        let mut args = vec!["share", "coder", "/home/alice/p", "--rw"];
        args.extend(flag);
        sb.as_user("alice", &args).ok()
    };
    share_rw(Some("--allow-git-writes"));
    assert_eq!(git(&sb), "owner-git-writable");
    let again = share_rw(None);
    assert!(
        again.stderr.contains("keeps --allow-git-writes"),
        "{again:#?}"
    );
    assert_eq!(git(&sb), "owner-git-writable");
    let show = sb.as_user("alice", &["show", "coder"]).ok().stdout;
    assert!(show.contains("--allow-git-writes"), "{show}");
    share_rw(Some("--no-allow-git-writes"));
    assert_eq!(git(&sb), "agent-repository");
}

#[test]
fn a_command_in_the_callers_home_is_explained_with_the_callers_rights() {
    let sb = Sandbox::new("daily-notfound");
    sb.alice_and_coder();
    sb.add_user("bob", &[]);
    sb.sh_as(
        "alice",
        "mkdir -p /home/alice/.opencode/bin && printf '#!/bin/sh\\necho hi\\n' > \
         /home/alice/.opencode/bin/opencode && chmod 755 /home/alice/.opencode/bin/opencode",
    )
    .ok();
    sb.sh_as(
        "bob",
        "mkdir -m 700 /home/bob/private && printf '#!/bin/sh\\n' > /home/bob/private/tool && \
         chmod 755 /home/bob/private/tool",
    )
    .ok();
    let by_path = sb.as_user(
        "alice",
        &["exec", "coder", "--", "/home/alice/.opencode/bin/opencode"],
    );
    assert_eq!(by_path.code, 127, "{by_path:#?}");
    assert!(
        by_path.stderr.contains(
            "/home/alice/.opencode/bin/opencode exists for you, but it is in your home \
             (/home/alice), which the agent cannot see: share its directory read-only \
             ('agentuser share coder /home/alice/.opencode/bin --ro')"
        ),
        "{by_path:#?}"
    );
    let mut cmd = sb.user_command("alice", &["exec", "coder", "--", "opencode"]);
    cmd.env("PATH", "/home/alice/.opencode/bin:/usr/bin:/bin");
    let by_name = sb.run(cmd);
    assert_eq!(by_name.code, 127, "{by_name:#?}");
    assert!(
        by_name
            .stderr
            .contains("opencode: found on your PATH at /home/alice/.opencode/bin/opencode"),
        "{by_name:#?}"
    );
    // Bob's file, which alice cannot see: plain "not found", nothing about it.
    let hidden = sb.as_user("alice", &["exec", "coder", "--", "/home/bob/private/tool"]);
    hidden.fails(127, "No such file");
    // Control: checked with root's rights, the same path gets a hint (so a check made as
    // root would tell alice that bob's file exists).
    let as_root = sb.root(&["exec", "coder", "--", "/home/bob/private/tool"]);
    assert!(
        as_root
            .stderr
            .contains("/home/bob/private/tool exists for you"),
        "{as_root:#?}"
    );
    // Installed for the agent, it runs.
    sb.as_user(
        "alice",
        &["share", "coder", "/home/alice/.opencode", "--ro"],
    )
    .ok();
    let works = sb
        .as_user(
            "alice",
            &["exec", "coder", "--", "/home/alice/.opencode/bin/opencode"],
        )
        .ok();
    assert_eq!(works.stdout, "hi\n");
}

#[test]
fn completions_offer_only_the_callers_agents() {
    let sb = Sandbox::new("daily-completions");
    sb.alice_and_coder();
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("bob", &["create", "bobs"]).ok();
    assert_eq!(
        sb.as_user("alice", &["list", "--names"]).ok().stdout,
        "coder\n"
    );
    assert_eq!(
        sb.as_user("bob", &["list", "--names"]).ok().stdout,
        "bobs\n"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = sb.as_user("alice", &["completions", shell]).ok().stdout;
        assert!(script.contains("agentuser list --names"), "{shell}");
    }
    let dir = sb.bin.parent().unwrap().display().to_string();
    let complete = |words: &str, cword: usize| {
        sb.sh_as(
            "alice",
            &format!(
                "PATH={dir}:$PATH; export PATH; bash -c 'source <(agentuser completions bash) && \
                 COMP_WORDS=({words}) && COMP_CWORD={cword} && \
                 _agentuser_names agentuser \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && echo \"${{COMPREPLY[*]}}\"'"
            ),
        )
        .ok()
        .stdout
    };
    assert_eq!(complete("agentuser exec \"\"", 2), "coder\n");
    assert_eq!(complete("agentuser exec --cwd /tmp \"\"", 4), "coder\n");
    assert_eq!(complete("agentuser cred add \"\"", 3), "coder\n");
    assert_eq!(complete("agentuser show c", 2), "coder\n");
    // Not where a name goes: the subcommands and options of clap's script.
    let subs = complete("agentuser \"\"", 1);
    assert!(subs.contains("exec") && !subs.contains("coder"), "{subs}");
}
