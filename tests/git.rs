//! Git in read-write shares (issue 11; THREAT-MODEL rows 15, 23, 24): the agent commits
//! into a git directory of its own, the owner fetches its commits through the remote
//! helper, and nothing the agent writes runs as the owner. Every attack is made by the
//! agent's real uid; the owner's git runs as the owner. Each vector has a positive control
//! in a plain `setfacl -R` share, where the same write makes the owner's git run it.
//! Payloads only create marker files.

mod common;

use common::{Out, Sandbox};

const PROJ: &str = "/home/alice/proj";

/// alice (0700 home), her agent `coder`, and her repository `proj` with one commit on
/// `main`. Returns the agent's uid.
fn setup(sb: &Sandbox) -> u32 {
    sb.add_user("alice", &["agentuser"]);
    sb.as_user("alice", &["create", "coder"]).ok();
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
    sb.as_user("alice", &["exec", "coder", "--", "/bin/sh", "-c", script])
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
