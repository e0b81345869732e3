//! The audit trail (docs/threat-model.md row 26): refused requests and the end of every run reach
//! authpriv like sudo's records, and a host without a syslog socket is told, not silent.

mod common;

use common::{NO_SYSLOG_WARNING, Sandbox};

#[test]
fn refused_requests_and_run_ends_are_logged_with_caller_and_reason() {
    let sb = Sandbox::new("trail-refused");
    sb.add_user("alice", &["agentuser"]);
    sb.add_user("bob", &["agentuser"]);
    sb.as_user("alice", &["create", "coder"]).ok();
    let bin = sb.bin.display().to_string();
    let as_user =
        |user: &str| format!("setpriv --reuid {user} --regid {user} --init-groups -- {bin}");
    let (alice, bob, agent) = (as_user("alice"), as_user("bob"), as_user("agent-coder"));
    let log = sb.syslog_during(&format!(
        "{bob} exec coder -- true 2>>/tmp/err || true
{agent} list 2>>/tmp/err || true
{alice} share coder /etc 2>>/tmp/err || true
{alice} exec coder -- sh -c 'exit 3' 2>>/tmp/err || true
echo STDERR; cat /tmp/err; echo END"
    ));
    // agentuser's own records (PAM's modules log under the same ident).
    let records: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" agentuser[") && l.contains(" caller="))
        .collect();
    let has = |needles: &[&str]| {
        records
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        has(&[
            "caller=bob",
            "agent=coder",
            "action=exec",
            "result=refused",
            "no such agent"
        ]),
        "no record of bob's refused exec in {log}"
    );
    assert!(
        has(&[
            "caller=agent-coder",
            "action=list",
            "result=refused",
            "agent accounts"
        ]),
        "no record of the agent's refused call in {log}"
    );
    assert!(
        has(&[
            "caller=alice",
            "agent=coder",
            "action=share",
            "result=refused",
            "system directory"
        ]),
        "no record of the refused path in {log}"
    );
    assert!(
        has(&[
            "caller=alice",
            "agent=coder",
            "action=exec-end",
            "status=3",
            "duration="
        ]),
        "no record of the run's end in {log}"
    );
    // authpriv (10) * 8 + notice (5) = 85
    assert!(records.iter().all(|l| l.starts_with("<85>")), "{log}");
    // With a listener there is nothing to warn about.
    let stderr = log
        .split("STDERR")
        .nth(1)
        .unwrap()
        .split("END")
        .next()
        .unwrap();
    assert!(!stderr.contains("syslog"), "{stderr}");
}

#[test]
fn a_missing_syslog_socket_is_said_once_per_command_and_reported_by_doctor() {
    let sb = Sandbox::new("trail-nosocket");
    sb.add_user("alice", &["agentuser"]);
    // Raw output: Out::stderr leaves this warning out.
    let raw = |args: &[&str]| sb.user_command("alice", args).output().unwrap();
    let create = raw(&["create", "coder"]);
    assert!(create.status.success());
    // exec logs its start and its end: still one warning.
    let exec = raw(&["exec", "coder", "--", "true"]);
    assert!(exec.status.success());
    let refused = raw(&["share", "coder", "/etc"]);
    assert!(!refused.status.success());
    for output in [create, exec, refused] {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr.matches(NO_SYSLOG_WARNING).count(), 1, "{stderr:?}");
    }
    // A command that logs nothing says nothing.
    let list = raw(&["list"]);
    assert!(!String::from_utf8_lossy(&list.stderr).contains("syslog"));
    let doctor = sb.as_user("alice", &["doctor", "--json"]).json();
    assert!(
        doctor["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["category"] == "audit-trail" && f["subject"] == "/dev/log"),
        "{doctor}"
    );
}
