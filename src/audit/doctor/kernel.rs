//! doctor: kernel settings that weaken isolation (sysctls, /proc hidepid) and the features
//! the agent's view relies on (Landlock, namespaces).
#![forbid(unsafe_code)]

use std::path::Path;

use crate::audit::findings::{Finding, Severity};
use crate::audit::host;

const SYSCTL_FILE: &str = "/etc/sysctl.d/90-agentuser.conf";

pub fn check(out: &mut Vec<Finding>) {
    sysctls(out);
    proc_hidepid(out);
    kernel_features(out);
}

/// (sysctl, weak value test, severity, why, good value).
type SysctlRule = (
    &'static str,
    fn(&str) -> bool,
    Severity,
    &'static str,
    &'static str,
);

const SYSCTLS: &[SysctlRule] = &[
    (
        "dev.tty.legacy_tiocsti",
        |v| v != "0",
        Severity::High,
        "a process can push input into its terminal (TIOCSTI): an agent run without a pty can type commands into the owner's shell",
        "0",
    ),
    (
        "fs.protected_symlinks",
        |v| v == "0",
        Severity::High,
        "symlinks in sticky world-writable directories are followed across owners (/tmp symlink attacks)",
        "1",
    ),
    (
        "fs.protected_hardlinks",
        |v| v == "0",
        Severity::High,
        "anyone can hardlink files they do not own (e.g. into an agent's home, then have them rewritten)",
        "1",
    ),
    (
        "fs.protected_regular",
        |v| v == "0",
        Severity::Medium,
        "O_CREAT opens of files pre-created by another user in sticky directories succeed (/tmp squatting)",
        "2",
    ),
    (
        "fs.protected_fifos",
        |v| v == "0",
        Severity::Medium,
        "FIFOs pre-created by another user in sticky directories are opened (/tmp squatting)",
        "1",
    ),
];

fn sysctls(out: &mut Vec<Finding>) {
    for (name, weak, severity, why, good) in SYSCTLS {
        match host::sysctl(name) {
            Some(value) if weak(&value) => out.push(
                Finding::new(*severity, "sysctl", format!("{name}={value}"), *why).fix(format!(
                    "sysctl -w {name}={good} and add `{name} = {good}` to {SYSCTL_FILE}"
                )),
            ),
            Some(value) => out.push(Finding::new(Severity::Info, "sysctl", format!("{name}={value}"), "ok")),
            None if *name == "dev.tty.legacy_tiocsti" => out.push(Finding::new(
                Severity::Medium,
                "sysctl",
                *name,
                "absent (kernel before 6.2): TIOCSTI cannot be disabled; agentuser's pty relay is the only protection",
            )),
            None => out.push(Finding::new(Severity::Medium, "sysctl", *name, "absent on this kernel")),
        }
    }
    match host::sysctl("kernel.yama.ptrace_scope") {
        None => out.push(Finding::new(
            Severity::Info,
            "sysctl",
            "kernel.yama.ptrace_scope",
            "no Yama: processes may trace others of the same uid (agents are separate uids, so this only matters within one agent)",
        )),
        Some(v) => out.push(Finding::new(Severity::Info, "sysctl", format!("kernel.yama.ptrace_scope={v}"), "ok")),
    }
}

/// hidepid from the super options of the /proc mount (after " - proc SOURCE ").
fn proc_hidepid(out: &mut Vec<Finding>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hidden = hidepid_of(&mountinfo);
    match hidden {
        Some(mode) => out.push(Finding::new(
            Severity::Info,
            "proc",
            format!("/proc hidepid={mode}"),
            "other users' processes are hidden",
        )),
        None => out.push(
            Finding::new(
                Severity::Medium,
                "proc",
                "/proc",
                "mounted without hidepid: outside agentuser's view, any account, an agent outside agentuser's view included, reads every process's command line (docs/threat-model.md row 8)",
            )
            .fix("mount -o remount,hidepid=invisible /proc and add hidepid=invisible to /proc in /etc/fstab"),
        ),
    }
}

fn hidepid_of(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4) != Some(&"/proc") {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        if fields.get(sep + 1) != Some(&"proc") {
            return None;
        }
        let options = fields.get(sep + 3)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("hidepid="))
            .filter(|v| !matches!(*v, "0" | "off"))
            .map(str::to_string)
    })
}

fn kernel_features(out: &mut Vec<Finding>) {
    match crate::sys::landlock::landlock_abi() {
        Some(abi) if abi >= 6 => out.push(Finding::new(
            Severity::Info,
            "landlock",
            format!("ABI {abi}"),
            "available, with abstract unix socket scoping",
        )),
        Some(abi) => out.push(Finding::new(
            Severity::Info,
            "landlock",
            format!("ABI {abi}"),
            "available, but abstract socket scoping needs ABI 6 (kernel 6.12): use --network none",
        )),
        None => out.push(
            Finding::new(
                Severity::Medium,
                "landlock",
                "unavailable",
                "Landlock is not enabled: abstract unix sockets are reachable unless --network none",
            )
            .fix("boot with lsm=...,landlock (CONFIG_SECURITY_LANDLOCK)"),
        ),
    }
    let missing: Vec<&str> = ["mnt", "pid", "net"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        out.push(Finding::new(
            Severity::Info,
            "namespaces",
            "mnt, pid, net",
            "available for the agent's view",
        ));
    } else {
        out.push(Finding::new(
            Severity::High,
            "namespaces",
            missing.join(", "),
            "missing: exec cannot build the agent's view",
        ));
    }
    let max = host::sysctl("user.max_user_namespaces");
    let clone = host::sysctl("kernel.unprivileged_userns_clone");
    let unprivileged = max.as_deref() != Some("0") && clone.as_deref() != Some("0");
    let mut userns = Finding::new(
        Severity::Info,
        "namespaces",
        "user namespaces",
        if unprivileged {
            "unprivileged user namespaces are enabled: agents can create them (kernel attack surface; agentuser does not need them)"
        } else {
            "unprivileged user namespaces are disabled"
        },
    );
    if unprivileged {
        userns = userns.fix(
            "if nothing on the host needs them: sysctl -w kernel.unprivileged_userns_clone=0 (Debian) or user.max_user_namespaces=0",
        );
    }
    out.push(userns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidepid_is_read_from_super_options() {
        let plain = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n";
        assert_eq!(hidepid_of(plain), None);
        let hidden = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw,hidepid=invisible\n";
        assert_eq!(hidepid_of(hidden).as_deref(), Some("invisible"));
        let other = "30 22 0:40 / /proc/sys/fs/binfmt_misc rw - binfmt_misc x rw\n";
        assert_eq!(hidepid_of(other), None);
    }
}
