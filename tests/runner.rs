//! exec and shell: every test performs an attack for real, as a second uid, and fails if
//! the attack works.

mod common;

use common::{Out, Sandbox};

fn exec(sb: &Sandbox, agent: &str, script: &str) -> Out {
    sb.root(&["exec", agent, "--", "/bin/sh", "-c", script])
}

/// A sandbox with alice (an owner in group agentuser, 0755 home with secrets) and her agent.
fn setup(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.add_user("alice", &["agentuser"]);
    sb.sh(
        "echo topsecret > /home/alice/secret600 && chmod 600 /home/alice/secret600 && \
         echo readable > /home/alice/secret644 && chmod 644 /home/alice/secret644 && \
         chown alice: /home/alice/secret*",
    )
    .ok();
    sb.as_user("alice", &["create", "coder"]).ok();
    sb
}

#[test]
fn runs_as_the_agent_with_exit_codes() {
    let sb = setup("runner-basic");
    let uid = sb.show("coder")["uid"].as_u64().unwrap();
    let out = exec(&sb, "coder", "id -u; id -g; id -G; pwd").ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], uid.to_string(), "{out:#?}");
    assert_eq!(lines[1], uid.to_string());
    assert_eq!(lines[2], uid.to_string(), "supplementary groups: {out:#?}");
    assert_eq!(lines[3], "/var/lib/agentuser/homes/agent-coder");
    assert_eq!(exec(&sb, "coder", "exit 7").code, 7);
    assert_eq!(exec(&sb, "coder", "kill -TERM $$").code, 128 + 15);
    sb.root(&["exec", "coder", "--", "no-such-command"])
        .fails(127, "not found");
    sb.root(&["exec", "coder", "--", "/etc/passwd"])
        .fails(126, "ermission denied");
    sb.root(&["exec", "ghost", "--", "true"])
        .fails(125, "no such agent");
    sb.root(&["exec", "coder", "--cwd", "/home/alice", "--", "true"])
        .fails(125, "--cwd");
}
