//! Git in read-write shares (issue 11; docs/threat-model.md rows 15, 23, 24): the agent commits
//! into a git directory of its own, the owner fetches its commits through the remote
//! helper, and nothing the agent writes runs as the owner. Every attack is made by the
//! agent's real uid; the owner's git runs as the owner. Each vector has a positive control
//! in a plain `setfacl -R` share, where the same write makes the owner's git run it.
//! Payloads only create marker files.

mod common;

use common::{Background, Out, Sandbox};

const PROJ: &str = "/home/alice/proj";

/// alice (0700 home), her agent `coder`, and her repository `proj` with one commit on
/// `main`. Returns the agent's uid.
fn setup(sb: &Sandbox) -> u32 {
    sb.alice_and_coder();
    owner(
        sb,
        &format!(
            "chmod 700 /home/alice && git config --global user.name Alice && git config --global user.email alice@example.org \
             && git config --global init.defaultBranch main \
             && mkdir {PROJ} && cd {PROJ} && git init -q && echo one > a.txt && mkdir src && echo code > src/lib.rs \
             && git add . && git commit -qm first"
        ),
    )
    .ok();
    sb.show("coder")["uid"].as_u64().unwrap() as u32
}

/// A shell script as the agent inside its view (through `exec`, as alice).
fn agent(sb: &Sandbox, script: &str) -> Out {
    sb.exec_sh("alice", "coder", script)
}

/// Installs the remote helper script into the sandbox (as install.sh does beside the
/// binary) and returns the PATH prefix to find it.
fn helper_path(sb: &Sandbox) -> String {
    let dir = sb.dir.join("helper");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("git-remote-agentuser");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} git-remote-helper \"$@\"\n",
            sb.bin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.display().to_string()
}

/// A shell script as alice with the remote helper on her PATH.
fn owner(sb: &Sandbox, script: &str) -> Out {
    let path = helper_path(sb);
    sb.sh_as(
        "alice",
        &format!("export HOME=/home/alice PATH={path}:$PATH; {script}"),
    )
}

fn owner_git_dir_digest(sb: &Sandbox) -> String {
    sb.sh(&format!(
        "cd {PROJ}/.git && find . -path ./objects -prune -o -type f -print0 | sort -z | xargs -0 sha256sum; \
         find . -printf '%p %m %U\\n' | sort"
    ))
    .ok()
    .stdout
}

#[test]
fn the_agent_commits_branches_and_stashes_with_its_own_identity() {
    let sb = Sandbox::new("git-commit");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let before = owner_git_dir_digest(&sb);
    let out = agent(
        &sb,
        &format!(
            "set -e; cd {PROJ}; git status --short; git log --oneline | wc -l
             git switch -q -c feature; echo two >> a.txt; git diff --stat; git commit -qam 'agent change'
             git branch topic; git tag v-agent
             echo wip >> src/lib.rs; git stash -q; git stash list | wc -l; git stash pop -q; git reset -q --hard
             git log -1 --format='%an <%ae>|%cn'; git status --porcelain; git rev-parse --git-dir"
        ),
    )
    .ok();
    let host = sb.sh("hostname").ok().stdout.trim().to_string();
    assert!(
        out.stdout
            .contains(&format!("agent-coder <agent-coder@{host}>|agent-coder")),
        "{out:#?}"
    );
    // The work tree has the agent's change; the owner's .git is untouched.
    assert_eq!(
        sb.sh(&format!("cat {PROJ}/a.txt")).ok().stdout,
        "one\ntwo\n"
    );
    assert_eq!(owner_git_dir_digest(&sb), before);
    // Rebase works too, and the next run finds the same repository.
    agent(
        &sb,
        &format!(
            "set -e; cd {PROJ}; git switch -q main; git switch -q feature; git rebase -q main; \
             test \"$(git log -1 --format=%s)\" = 'agent change'; git branch --list topic | grep -q topic"
        ),
    )
    .ok();
    assert_eq!(owner_git_dir_digest(&sb), before);
}

#[test]
fn the_owner_fetches_and_merges_the_agents_commit() {
    let sb = Sandbox::new("git-fetch");
    setup(&sb);
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    agent(
        &sb,
        &format!(
            "set -e; cd {PROJ}; git switch -q -c feature; echo agent > agent.txt; git add agent.txt; git commit -qm 'from the agent'"
        ),
    )
    .ok();
    // The agent's file is in the shared work tree; the owner cleans it before merging.
    owner(&sb, &format!("rm {PROJ}/agent.txt")).ok();
    let out = owner(
        &sb,
        &format!(
            "set -e; cd {PROJ}; git remote add --no-tags agent-coder agentuser::coder:{PROJ}; git fetch -q agent-coder; \
             git log -1 --format=%s agent-coder/feature; git merge -q --ff-only agent-coder/feature; cat agent.txt"
        ),
    )
    .ok();
    assert_eq!(out.stdout, "from the agent\nagent\n", "{out:#?}");
    // Pushing is refused.
    let push = owner(&sb, &format!("cd {PROJ}; git push agent-coder main 2>&1"));
    assert_ne!(push.code, 0);
    assert!(push.stdout.contains("not supported"), "{push:#?}");
}

/// Every vector of issue 11 item 3, each in a repository of its own under `proj/` so that
/// no two payloads share a config key.
const VECTORS: &[&str] = &[
    "fsmonitor",
    "hookspath",
    "sshcommand",
    "pager",
    "editor",
    "alias",
    "diffexternal",
    "filter",
    "credential",
    "include",
    "includeif",
    "hooks",
    "commondir",
    "gitfile",
    "worktrees",
    "modules",
];

/// The owner's repositories for the vectors (plus a linked worktree outside the share and
/// a submodule), shared or not by the caller.
fn vector_setup(sb: &Sandbox) -> u32 {
    let uid = setup(sb);
    let mut script = String::from("set -e\n");
    for v in VECTORS {
        script.push_str(&format!(
            "mkdir {PROJ}/{v} && cd {PROJ}/{v} && git init -q && echo base > f.txt && git add f.txt && git commit -qm base\n"
        ));
    }
    script.push_str(&format!(
        "mkdir {PROJ}/gitfile/docs && echo d > {PROJ}/gitfile/docs/readme\n\
         cd {PROJ}/worktrees && git worktree add -q /home/alice/wt-worktrees\n\
         mkdir /home/alice/subsrc && cd /home/alice/subsrc && git init -q && echo s > s.txt && git add s.txt && git commit -qm s\n\
         cd {PROJ}/modules && git -c protocol.file.allow=always submodule add -q /home/alice/subsrc sub && git commit -qm sub\n"
    ));
    owner(sb, &script).ok();
    uid
}

/// The attack, as the agent: each vector written where the owner's git would read it
/// (`$W/.git/...`, which in the agent's view is the agent's own git directory).
fn vector_attack(port: u16) -> String {
    format!(
        r#"P={PROJ}
cfg() {{ git config -f "$P/$1/.git/config" "$2" "$3" || echo "cfg $1 failed"; }}
pw() {{ printf 'touch /home/alice/PWNED-%s' "$1"; }}
hook() {{ mkdir -p "$1" && printf '#!/bin/sh\n%s\n' "$(pw $2)" > "$1/$3" && chmod +x "$1/$3"; }}
fsm() {{ printf '[core]\n\tfsmonitor = "%s; false"\n' "$(pw $1)"; }}
cfg fsmonitor core.fsmonitor "$(pw fsmonitor); false"
for h in pre-commit post-checkout reference-transaction; do hook $P/hookspath/.h hookspath $h; done
cfg hookspath core.hooksPath $P/hookspath/.h
cfg sshcommand core.sshCommand "$(pw sshcommand); false"
cfg sshcommand remote.origin.url ssh://127.0.0.1:1/x
cfg pager core.pager "$(pw pager); cat"
cfg editor core.editor "$(pw editor); true"
cfg alias alias.st "!$(pw alias); true"
cfg diffexternal diff.external "$(pw diffexternal); true"
mkdir -p $P/filter/.git/info && echo '* filter=evil' > $P/filter/.git/info/attributes
cfg filter filter.evil.clean "$(pw filter); cat"
cfg filter filter.evil.smudge "$(pw filter); cat"
cfg credential credential.helper "!$(pw credential); true"
cfg credential remote.web.url http://127.0.0.1:{port}/x
fsm include > $P/include/evil.inc && cfg include include.path $P/include/evil.inc
fsm includeif > $P/includeif/evil.inc && cfg includeif includeIf.gitdir:/.path $P/includeif/evil.inc
for h in pre-commit post-commit post-checkout reference-transaction post-merge pre-auto-gc post-index-change; do hook $P/hooks/.git/hooks hooks $h; done
mkdir -p $P/commondir/evil/objects $P/commondir/evil/refs && fsm commondir > $P/commondir/evil/config
echo $P/commondir/evil > $P/commondir/.git/commondir
W=$P/gitfile; mkdir -p $W/docs/objects $W/docs/refs/heads && echo 'ref: refs/heads/main' > $W/docs/HEAD && fsm gitfile > $W/docs/config
mv $W/.git $W/.git-orig && echo "gitdir: $W/docs" > $W/f.txt && mv $W/f.txt $W/.git || echo "gitfile rename failed"
mkdir -p $P/worktrees/evil/objects $P/worktrees/evil/refs && fsm worktrees > $P/worktrees/evil/config
mkdir -p $P/worktrees/.git/worktrees/wt-worktrees && echo $P/worktrees/evil > $P/worktrees/.git/worktrees/wt-worktrees/commondir
mkdir -p $P/modules/.git/modules/sub && fsm modules >> $P/modules/.git/modules/sub/config
true
"#
    )
}

/// The owner's everyday git commands in every repository (and the linked worktree), as the
/// owner. Returns the vectors whose payload ran.
fn owner_commands(sb: &Sandbox) -> Vec<String> {
    let mut dirs: Vec<String> = VECTORS.iter().map(|v| format!("{PROJ}/{v}")).collect();
    dirs.push("/home/alice/wt-worktrees".into());
    let script = format!(
        r#"export GIT_TERMINAL_PROMPT=0
run() {{ timeout 20 "$@" </dev/null >/dev/null 2>&1; true; }}
for d in {dirs}; do
  cd $d || continue
  echo owner >> f.txt
  run git status; run git diff; run script -qec 'git log' /dev/null; run git st
  run git commit --allow-empty; run git commit -qam owner
  run git checkout -q -b owner-branch; run git checkout -q -
  run git fetch --all; run git pull; run git gc -q; run git worktree list
done
ls /home/alice"#,
        dirs = dirs.join(" ")
    );
    let listing = owner(sb, &script).ok().stdout;
    VECTORS
        .iter()
        .filter(|v| listing.lines().any(|l| l == format!("PWNED-{v}")))
        .map(|v| v.to_string())
        .collect()
}

/// A loopback HTTP server that asks for credentials (so git consults credential.helper).
struct AuthServer {
    _server: Background,
    port: u16,
}

/// Answers every GET with 401 and a Basic challenge; prints its port first.
const AUTH_SERVER: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(401); s.send_header("WWW-Authenticate", 'Basic realm="x"'); s.end_headers()
    def log_message(*a): pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_port, flush=True)
srv.serve_forever()
"#;

impl AuthServer {
    fn start() -> AuthServer {
        let mut python = std::process::Command::new("/usr/bin/python3");
        python.args(["-c", AUTH_SERVER]);
        let (server, port) = Background::start(python);
        AuthServer {
            _server: server,
            port: port.trim().parse().unwrap(),
        }
    }
}

#[test]
fn control_every_vector_runs_as_the_owner_in_a_plain_acl_share() {
    let sb = Sandbox::new("git-vectors-control");
    let uid = vector_setup(&sb);
    let server = AuthServer::start();
    sb.sh(&format!(
        "setfacl -m u:{uid}:x /home/alice && setfacl -R -m u:{uid}:rwX,d:u:{uid}:rwX {PROJ}"
    ))
    .ok();
    sb.sh_as(
        "agent-coder",
        &format!("export HOME=/tmp; {}", vector_attack(server.port)),
    )
    .ok();
    assert_eq!(
        owner_commands(&sb),
        VECTORS,
        "every vector must run as the owner without agentuser, or the protected test proves nothing"
    );
}

#[test]
fn no_vector_runs_as_the_owner_after_the_agent_wrote_it_in_its_view() {
    let sb = Sandbox::new("git-vectors");
    vector_setup(&sb);
    let server = AuthServer::start();
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let digest = |sb: &Sandbox| {
        sb.sh(&format!(
            "cd {PROJ} && find . -path '*/.git/*' -not -path '*/objects/*' -type f -print0 | sort -z | xargs -0 sha256sum"
        ))
        .ok()
        .stdout
    };
    let before = digest(&sb);
    // The owner fetches from the agent too, so the agent's upload-pack config is in play.
    owner(
        &sb,
        &format!("cd {PROJ}/fsmonitor && git remote add --no-tags agent-coder agentuser::coder:{PROJ}/fsmonitor"),
    )
    .ok();
    let before = (before, digest(&sb));
    let out = agent(
        &sb,
        &format!(
            "{}\ngit config -f {PROJ}/fsmonitor/.git/config uploadpack.packObjectsHook \"touch /home/alice/PWNED-uploadpack; false\"\n\
             for d in /var/lib/agentuser/view/owner-git/*; do echo x >> $d/config && echo 'owner-git writable'; done; true",
            vector_attack(server.port)
        ),
    )
    .ok();
    let after = digest(&sb);
    assert_eq!(owner_commands(&sb), Vec::<String>::new(), "{out:#?}");
    assert!(!out.stdout.contains("owner-git writable"), "{out:#?}");
    assert!(out.stdout.contains("gitfile rename failed"), "{out:#?}");
    assert_eq!(after, before.1, "the agent changed the owner's .git");
    assert!(
        sb.sh("ls /home/alice")
            .ok()
            .stdout
            .lines()
            .all(|l| !l.starts_with("PWNED")),
        "a payload ran as the owner"
    );
    // The fetch from the agent worked (its upload-pack ran, as the agent).
    owner(
        &sb,
        &format!("cd {PROJ}/fsmonitor && git rev-parse -q --verify refs/remotes/agent-coder/main"),
    )
    .ok();
    let _ = before.0;
}

#[test]
fn alternates_written_by_the_agent_never_reach_the_owners_repository() {
    let sb = Sandbox::new("git-alternates");
    let uid = setup(&sb);
    let attack = format!(
        "git init -q --bare /tmp/e.git && sha=$(echo 'agent data' | git --git-dir=/tmp/e.git hash-object -w --stdin) \
         && cp -r /tmp/e.git/objects {PROJ}/evilobj && echo {PROJ}/evilobj >> {PROJ}/.git/objects/info/alternates && echo $sha"
    );
    let owner_sees = |sb: &Sandbox, sha: &str| {
        owner(sb, &format!("cd {PROJ} && git cat-file -e {sha}")).code == 0
    };
    // Control: in a plain ACL share the owner's git takes the agent's objects as its own.
    let control = Sandbox::new("git-alternates-control");
    let cuid = setup(&control);
    control
        .sh(&format!(
            "setfacl -m u:{cuid}:x /home/alice && setfacl -R -m u:{cuid}:rwX,d:u:{cuid}:rwX {PROJ}"
        ))
        .ok();
    let sha = control
        .sh_as("agent-coder", &format!("export HOME=/tmp; {attack}"))
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(
        owner_sees(&control, &sha),
        "the control must see the agent's object"
    );
    let _ = uid;
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let sha = agent(&sb, &attack).ok().stdout.trim().to_string();
    assert_eq!(sha.len(), 40);
    assert!(!owner_sees(&sb, &sha));
}

#[test]
fn a_linked_worktree_is_shared_and_the_agent_commits_there() {
    let sb = Sandbox::new("git-worktree");
    setup(&sb);
    owner(
        &sb,
        &format!("cd {PROJ} && git worktree add -q -b wt-branch /home/alice/wt"),
    )
    .ok();
    sb.as_user("alice", &["share", "coder", "/home/alice/wt", "--rw"])
        .ok();
    let out = agent(
        &sb,
        "set -e; cd /home/alice/wt; git status --porcelain; git rev-parse --abbrev-ref HEAD; \
         echo wt >> a.txt; git commit -qam 'in the worktree'; git log --format=%s -2",
    )
    .ok();
    assert_eq!(
        out.stdout, "wt-branch\nin the worktree\nfirst\n",
        "{out:#?}"
    );
    let fetched = owner(
        &sb,
        "set -e; cd /home/alice/proj; git remote add --no-tags agent-coder agentuser::coder:/home/alice/wt; \
         git fetch -q agent-coder; git log -1 --format=%s agent-coder/wt-branch; git -C /home/alice/wt status --porcelain",
    )
    .ok();
    assert_eq!(
        fetched.stdout, "in the worktree\n M a.txt\n",
        "{fetched:#?}"
    );
}

#[test]
fn a_gitfile_the_owner_did_not_make_is_not_followed() {
    let sb = Sandbox::new("git-gitfile");
    setup(&sb);
    // A repository of alice's that is not shared, and a gitfile in the share pointing at
    // it that is no worktree of it (no back-pointer): the agent must not get to read it.
    owner(
        &sb,
        &format!(
            "mkdir /home/alice/secret && cd /home/alice/secret && git init -q && echo s > s && git add s && git commit -qm hidden-commit \
             && mkdir {PROJ}/fake && echo 'gitdir: /home/alice/secret/.git' > {PROJ}/fake/.git"
        ),
    )
    .ok();
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let out = agent(
        &sb,
        &format!(
            "cd {PROJ}/fake && git log --format=%s 2>&1; ls /var/lib/agentuser/view/owner-git/"
        ),
    );
    assert!(!out.stdout.contains("hidden-commit"), "{out:#?}");
    assert!(out.stderr.contains("not given a git directory"), "{out:#?}");
}

#[test]
fn submodules_are_readable_and_their_status_works() {
    let sb = Sandbox::new("git-submodule");
    setup(&sb);
    owner(
        &sb,
        &format!(
            "set -e; mkdir /home/alice/lib && cd /home/alice/lib && git init -q && echo l > l.txt && git add l.txt && git commit -qm lib \
             && cd {PROJ} && git -c protocol.file.allow=always submodule add -q /home/alice/lib lib && git commit -qm 'add lib'"
        ),
    )
    .ok();
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let out = agent(
        &sb,
        &format!(
            "set -e; cd {PROJ}; git status --porcelain; git submodule status | cut -c43-; cat lib/l.txt; \
             cd lib; git status --porcelain; git log --format=%s; echo more >> l.txt; git commit -qam 'agent in lib'; \
             cd ..; git status --porcelain"
        ),
    )
    .ok();
    assert_eq!(out.stdout, "lib\nl\nlib\n M lib\n", "{out:#?}");
}

#[test]
fn share_show_and_audit_say_how_git_is_protected() {
    let sb = Sandbox::new("git-audit");
    setup(&sb);
    owner(
        &sb,
        "mkdir /home/alice/other && cd /home/alice/other && git init -q",
    )
    .ok();
    sb.as_user("alice", &["share", "coder", PROJ, "--rw"]).ok();
    let escape = sb
        .as_user(
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
    assert!(
        escape
            .stderr
            .contains("--allow-git-writes gives the agent your .git"),
        "{escape:#?}"
    );
    let shown = sb.as_user("alice", &["show", "coder"]).ok().stdout;
    assert!(
        shown.contains("/home/alice/other (--allow-git-writes"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{PROJ} (git: the agent commits")),
        "{shown}"
    );
    let json = sb.show("coder");
    let git: Vec<&str> = json["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["git"].as_str().unwrap())
        .collect();
    assert_eq!(git, ["agent-repository", "owner-git-writable"]);
    let audit = sb.as_user("alice", &["audit", "coder", "--json"]);
    assert_eq!(audit.code, 1, "{audit:#?}");
    let findings = audit.json()["findings"].as_array().unwrap().clone();
    let git = |path: &str| {
        findings
            .iter()
            .find(|f| f["category"] == "git" && f["subject"] == path)
            .unwrap_or_else(|| panic!("no git finding for {path}: {findings:#?}"))
            .clone()
    };
    assert_eq!(git("/home/alice/other")["severity"], "high");
    let protected = git(PROJ);
    assert_eq!(protected["severity"], "info");
    assert!(
        protected["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("agentuser::coder:{PROJ}")),
        "{protected:#?}"
    );
}
