//! Host facts both `audit` and `doctor` need: whether an account can schedule jobs that run
//! outside agentuser (cron, at, lingering user services), and kernel settings.
#![forbid(unsafe_code)]

use std::path::Path;

/// Whether `user` may use a scheduler, per its allow/deny files. None when the tool is not
/// installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    NotInstalled,
    Allowed,
    Denied,
}

/// crontab(1): cron.allow lists who may; else cron.deny who may not; with neither file,
/// Debian's cron lets every user in.
pub fn cron_access(user: &str) -> Access {
    scheduler_access(
        &["/usr/bin/crontab"],
        Path::new("/etc/cron.allow"),
        Path::new("/etc/cron.deny"),
        true,
        user,
    )
}

/// at(1): at.allow lists who may; else at.deny who may not; with neither, only root.
pub fn at_access(user: &str) -> Access {
    scheduler_access(
        &["/usr/bin/at", "/usr/bin/batch"],
        Path::new("/etc/at.allow"),
        Path::new("/etc/at.deny"),
        false,
        user,
    )
}

fn scheduler_access(
    binaries: &[&str],
    allow: &Path,
    deny: &Path,
    default_allowed: bool,
    user: &str,
) -> Access {
    if !binaries.iter().any(|b| Path::new(b).exists()) {
        return Access::NotInstalled;
    }
    let listed = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.lines().any(|l| l.trim() == user))
    };
    let allowed = match (listed(allow), listed(deny)) {
        (Some(in_allow), _) => in_allow,
        (None, Some(in_deny)) => !in_deny,
        (None, None) => default_allowed,
    };
    if allowed {
        Access::Allowed
    } else {
        Access::Denied
    }
}

/// systemd keeps the user's services running without a session.
pub fn lingers(user: &str) -> bool {
    Path::new("/var/lib/systemd/linger").join(user).exists()
}

/// A sysctl value from /proc/sys (`dev.tty.legacy_tiocsti` → /proc/sys/dev/tty/...).
pub fn sysctl(name: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}
