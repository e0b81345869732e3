//! doctor: the installed binary, PAM file, config, state directories and agent homes.
#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::audit::findings::{Finding, Severity};
use crate::config::CONFIG_PATH;
use crate::context::Context;
use crate::registry::STATE_DIR;

const PAM_FILE: &str = "/etc/pam.d/agentuser";

pub fn check(ctx: &Context, out: &mut Vec<Finding>) {
    binary(out);
    pam_service(out);
    network(out);
    share_tracker(out);
    config_and_state(ctx, out);
    agent_homes(ctx, out);
}

/// The helper itself: setuid-root, and only root can replace it or a directory above it.
fn binary(out: &mut Vec<Finding>) {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("agentuser"));
    let shown = exe.display().to_string();
    match std::fs::metadata("/proc/self/exe") {
        Ok(meta) => {
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                out.push(
                    Finding::new(
                        Severity::High,
                        "binary",
                        &shown,
                        format!(
                            "owned by uid {} with mode {:04o}: someone other than root can \
                             replace a setuid-root program",
                            meta.uid(),
                            meta.mode() & 0o7777
                        ),
                    )
                    .fix(format!("chown root:root {shown} && chmod 4755 {shown}")),
                );
            } else if meta.mode() & 0o4000 == 0 {
                out.push(
                    Finding::new(
                        Severity::Medium,
                        "binary",
                        &shown,
                        "not setuid-root: only root (or sudo) can use agentuser",
                    )
                    .fix(format!("chmod 4755 {shown}")),
                );
            } else {
                out.push(Finding::new(
                    Severity::Info,
                    "binary",
                    &shown,
                    "setuid-root, root-owned",
                ));
            }
            for dir in exe.ancestors().skip(1) {
                if let Some(f) = untrusted_dir(dir) {
                    out.push(f.fix(format!("chmod go-w {} (and make it root's)", dir.display())));
                }
            }
        }
        Err(e) => out.push(Finding::new(
            Severity::Medium,
            "binary",
            &shown,
            format!("cannot stat: {e}"),
        )),
    }
}

/// The PAM service: root's, and without pam_systemd (a user manager outside the view).
fn pam_service(out: &mut Vec<Finding>) {
    match std::fs::symlink_metadata(PAM_FILE) {
        Ok(meta) if meta.is_file() && meta.uid() == 0 && meta.mode() & 0o022 == 0 => {
            let text = std::fs::read_to_string(PAM_FILE).unwrap_or_default();
            out.push(pam_service_text(&text));
        }
        Ok(_) => out.push(
            Finding::new(
                Severity::High,
                "pam",
                PAM_FILE,
                "not a root-owned file writable only by root",
            )
            .fix(format!(
                "install -o root -g root -m 0644 pam/agentuser {PAM_FILE}"
            )),
        ),
        Err(_) => out.push(
            Finding::new(
                Severity::High,
                "pam",
                PAM_FILE,
                "missing: exec and shell cannot open a PAM session",
            )
            .fix(format!(
                "install -o root -g root -m 0644 pam/agentuser {PAM_FILE}"
            )),
        ),
    }
}

/// What the PAM service's lines say: pam_systemd is refused; a file without an auth stack
/// (as installed before 2026-12-02) sends every pam_setcred through /etc/pam.d/other.
fn pam_service_text(text: &str) -> Finding {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .collect();
    if lines.iter().any(|l| l.contains("pam_systemd")) {
        return Finding::new(
            Severity::High,
            "pam",
            PAM_FILE,
            "loads pam_systemd: logind would start a user manager for the agent outside \
             its namespaces, running units from its writable home",
        )
        .fix(format!("remove the pam_systemd line from {PAM_FILE}"));
    }
    if !lines.iter().any(|l| l.starts_with("auth")) {
        return Finding::new(
            Severity::Medium,
            "pam",
            PAM_FILE,
            "no auth lines: every run's pam_setcred goes through /etc/pam.d/other's auth \
             stack (slow on Debian, a refused run where it is pam_deny)",
        )
        .fix(format!(
            "install -o root -g root -m 0644 pam/agentuser {PAM_FILE}"
        ));
    }
    Finding::new(Severity::Info, "pam", PAM_FILE, "present, root-owned")
}

/// The config (already validated by `Config::load`) and the root-owned state directories.
fn config_and_state(ctx: &Context, out: &mut Vec<Finding>) {
    // Config::load refused an untrusted or invalid file before we got here.
    let config = if Path::new(CONFIG_PATH).exists() {
        "valid, root-owned, not writable by others"
    } else {
        "absent: built-in defaults apply"
    };
    out.push(Finding::new(Severity::Info, "config", CONFIG_PATH, config));
    for (path, mode) in [
        (PathBuf::from(STATE_DIR), 0o711),
        (Path::new(STATE_DIR).join("agents"), 0o700),
        (Path::new(STATE_DIR).join("secrets"), 0o700),
    ] {
        root_dir(&path, mode, out);
    }
    if ctx.config.home_base.exists() {
        if let Some(f) = untrusted_dir(&ctx.config.home_base) {
            out.push(f.fix(format!(
                "chown root:root {0} && chmod 0755 {0}",
                ctx.config.home_base.display()
            )));
        }
    }
}

/// Every agent's home: a 0700 directory of the agent's own.
fn agent_homes(ctx: &Context, out: &mut Vec<Finding>) {
    for record in ctx.registry.all().unwrap_or_default() {
        let home = record.home.display().to_string();
        match std::fs::symlink_metadata(&record.home) {
            Ok(meta) if meta.is_dir() && meta.uid() == record.uid && meta.mode() & 0o077 == 0 => {}
            Ok(meta) => out.push(
                Finding::new(
                    Severity::High,
                    "agent-home",
                    &home,
                    format!(
                        "home of agent '{}' is owned by uid {} with mode {:04o} (want uid {} and 0700)",
                        record.name,
                        meta.uid(),
                        meta.mode() & 0o7777,
                        record.uid
                    ),
                )
                .fix(format!("chmod 0700 {home}")),
            ),
            Err(_) => out.push(Finding::new(
                Severity::Medium,
                "agent-home",
                &home,
                format!("home of agent '{}' is missing", record.name),
            )),
        }
    }
}

/// A directory someone other than root could change (rename a root file inside it).
fn untrusted_dir(dir: &Path) -> Option<Finding> {
    let meta = std::fs::metadata(dir).ok()?;
    let writable = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    (meta.uid() != 0 || writable).then(|| {
        Finding::new(
            Severity::High,
            "install-dir",
            dir.display().to_string(),
            format!(
                "owned by uid {} with mode {:04o}: someone other than root can replace what is inside",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        )
    })
}

/// A state directory: root's and not writable by others (high), and no wider than `mode`
/// (medium: names become listable, nothing more, since the files inside are 0600).
fn root_dir(path: &Path, mode: u32, out: &mut Vec<Finding>) {
    let shown = path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            out.push(Finding::new(
                Severity::High,
                "state-dir",
                &shown,
                format!("cannot stat: {e}"),
            ));
            return;
        }
    };
    let actual = meta.mode() & 0o7777;
    let severity = if !meta.is_dir() || meta.uid() != 0 || actual & 0o022 != 0 {
        Severity::High
    } else if actual & !mode != 0 {
        Severity::Medium
    } else {
        return;
    };
    out.push(
        Finding::new(
            severity,
            "state-dir",
            &shown,
            format!(
                "owned by uid {} with mode {actual:04o} (want root and {mode:04o})",
                meta.uid()
            ),
        )
        .fix(format!(
            "chown root:root {shown} && chmod {mode:04o} {shown}"
        )),
    );
}

/// The share tracker's account: without it nothing is tracked between runs and every run
/// checks every directory of the agent's shares (slower start-up, same protection). The
/// tracker refuses uid or gid 0 itself.
fn share_tracker(out: &mut Vec<Finding>) {
    out.push(system_account(
        crate::share::TRACKER_ACCOUNT,
        "share",
        "share tracker account",
        Severity::Medium,
        Severity::Info,
        "nothing is tracked between runs, every run checks every shared directory (slower start-up)",
    ));
}

/// What the allowlist network mode needs: the policy point's account (its netfilter rules
/// go to the kernel over netlink, no nft(8) needed).
fn network(out: &mut Vec<Finding>) {
    out.push(system_account(
        crate::network::ACCOUNT,
        "network",
        "policy point account",
        Severity::High,
        Severity::Medium,
        "exec in the allowlist network mode fails",
    ));
}

/// A system account install.sh creates for a process beside the runs: fine (info), root
/// (`as_root`), or missing (`missing`, saying `without` and how to make it).
fn system_account(
    account: &str,
    category: &str,
    role: &str,
    as_root: Severity,
    missing: Severity,
    without: &str,
) -> Finding {
    match nix::unistd::User::from_name(account) {
        Ok(Some(user)) if user.uid.as_raw() != 0 && user.gid.as_raw() != 0 => {
            Finding::new(Severity::Info, category, account, format!("{role}, uid {}", user.uid))
        }
        Ok(Some(_)) => Finding::new(
            as_root,
            category,
            account,
            format!("the {role} has uid or gid 0"),
        ),
        _ => Finding::new(missing, category, account, format!("missing: {without}")).fix(format!(
            "useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {account}"
        )),
    }
}
