//! What looks like a secret, from a file's path relative to a home directory and, for a few
//! candidates only, the first bytes of its content. Nothing here ever returns or prints a
//! secret value: the answer is a kind ("SSH private key"), never the key.
#![forbid(unsafe_code)]

use std::path::Path;

/// How many bytes of a candidate file classification may read.
pub const HEAD_BYTES: usize = 4096;

/// What has to be in the head of a candidate for it to count as a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The name alone says it (e.g. `.aws/credentials`): no read needed.
    Any,
    /// A PEM private key block (`-----BEGIN ... PRIVATE KEY-----`).
    PrivateKey,
    /// Any of these (ASCII, case-insensitive) substrings.
    Contains(&'static [&'static str]),
    /// A shell assignment or export of a variable whose name says token/key/secret/password.
    ShellSecret,
}

/// A rule that matched a file's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub kind: &'static str,
    pub content: Content,
}

const SHELL_FILES: &[&str] = &[
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".kshrc",
    ".config/fish/config.fish",
    ".env",
    ".envrc",
];

const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".histfile",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".local/share/fish/fish_history",
];

/// Files of browser profiles that hold cookies, saved passwords or their keys.
const BROWSER_FILES: &[&str] = &[
    "cookies.sqlite",
    "logins.json",
    "key4.db",
    "key3.db",
    "Cookies",
    "Login Data",
    "Web Data",
];

const BROWSER_DIRS: &[&str] = &[
    ".mozilla/",
    "snap/firefox/",
    ".config/google-chrome/",
    ".config/chromium/",
    ".config/BraveSoftware/",
    ".config/microsoft-edge/",
    ".var/app/org.mozilla.firefox/",
];

/// The rule matching `rel` (a path relative to a home directory), if its name makes it a
/// candidate. Cheap: looks at the name only.
pub fn candidate(rel: &Path) -> Option<Candidate> {
    let rel = rel.to_str()?;
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let c = |kind, content| Some(Candidate { kind, content });
    match rel {
        ".netrc" | "_netrc" => return c("netrc credentials", Content::Any),
        ".git-credentials" | ".config/git/credentials" => {
            return c("git credentials", Content::Any);
        }
        ".aws/credentials" => return c("AWS credentials", Content::Any),
        ".docker/config.json" => return c("docker registry auth", Content::Contains(&["\"auth"])),
        ".kube/config" => return c("Kubernetes config", Content::Any),
        ".config/gh/hosts.yml" => return c("GitHub CLI token", Content::Contains(&["token"])),
        ".config/hub" => return c("hub token", Content::Contains(&["token"])),
        ".npmrc" => {
            return c(
                "npm token",
                Content::Contains(&["_authtoken", "_auth", "_password"]),
            );
        }
        ".pypirc" => return c("PyPI password", Content::Contains(&["password"])),
        ".cargo/credentials" | ".cargo/credentials.toml" => {
            return c("cargo registry token", Content::Contains(&["token"]));
        }
        ".vault-token" => return c("Vault token", Content::Any),
        ".terraform.d/credentials.tfrc.json" => return c("Terraform token", Content::Any),
        ".config/gcloud/credentials.db"
        | ".config/gcloud/access_tokens.db"
        | ".config/gcloud/application_default_credentials.json" => {
            return c("Google Cloud credentials", Content::Any);
        }
        ".azure/accessTokens.json" | ".azure/msal_token_cache.json" => {
            return c("Azure tokens", Content::Any);
        }
        ".pgpass" => return c("PostgreSQL passwords", Content::Any),
        ".my.cnf" => return c("MySQL password", Content::Contains(&["password"])),
        ".gnupg/secring.gpg" => return c("GnuPG secret keyring", Content::Any),
        _ => {}
    }
    if SHELL_FILES.contains(&rel) || name == ".env" || name.starts_with(".env.") {
        return c("secret in a shell/env file", Content::ShellSecret);
    }
    if HISTORY_FILES.contains(&rel) {
        return c("shell history", Content::Any);
    }
    if rel.starts_with(".gnupg/private-keys-v1.d/") {
        return c("GnuPG private key", Content::Any);
    }
    if let Some(key) = rel.strip_prefix(".ssh/") {
        if key.ends_with(".pub") || matches!(key, "known_hosts" | "config" | "authorized_keys") {
            return None;
        }
        if key.starts_with("id_") {
            return c("SSH private key", Content::Any);
        }
        return c("SSH private key", Content::PrivateKey);
    }
    if BROWSER_DIRS.iter().any(|d| rel.starts_with(d)) && BROWSER_FILES.contains(&name) {
        return c("browser profile (cookies/passwords)", Content::Any);
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".pem") || lower.ends_with(".key") {
        return c("private key file", Content::PrivateKey);
    }
    if lower.ends_with(".p12") || lower.ends_with(".pfx") || lower.ends_with(".jks") {
        return c("key store", Content::Any);
    }
    None
}

/// Cheap pre-check on the hot path of a home walk: whether a file named `name` in a
/// directory `dir` (relative to the home) can match any rule. Rules either live under a
/// dot-directory of the home (or snap/), or look at the file name alone.
pub fn may_match(dir: &Path, name: &[u8]) -> bool {
    let in_dot_dir = dir.as_os_str().is_empty()
        || dir.components().next().is_some_and(|c| {
            c.as_os_str().as_encoded_bytes().starts_with(b".") || c.as_os_str() == "snap"
        });
    if in_dot_dir || name.starts_with(b".env") || name == b".my.cnf" {
        return true;
    }
    let lower_ends = |suffix: &[u8]| {
        name.len() >= suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    [b".pem".as_slice(), b".key", b".p12", b".pfx", b".jks"]
        .iter()
        .any(|s| lower_ends(s))
}

/// Whether the head of a candidate's content confirms the rule.
pub fn confirms(content: Content, head: &[u8]) -> bool {
    match content {
        Content::Any => true,
        Content::PrivateKey => contains_ci(head, b"private key-----"),
        Content::Contains(needles) => needles.iter().any(|n| contains_ci(head, n.as_bytes())),
        Content::ShellSecret => shell_secret(head),
    }
}

/// `export GITHUB_TOKEN=...`, `AWS_SECRET_ACCESS_KEY=...`, `set -x API_KEY ...` (fish).
fn shell_secret(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    text.lines().any(|line| {
        let line = line.trim_start();
        if line.starts_with('#') {
            return false;
        }
        let rest = line
            .strip_prefix("export ")
            .or_else(|| line.strip_prefix("declare -x "))
            .or_else(|| line.strip_prefix("set -x "))
            .or_else(|| line.strip_prefix("set -gx "))
            .unwrap_or(line)
            .trim_start();
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_end);
        let assigns =
            after.starts_with('=') || (line.starts_with("set ") && after.starts_with(' '));
        let value_present = after.len() > 1;
        assigns && value_present && secret_variable(name)
    })
}

fn secret_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "API_KEY",
        "APIKEY",
        "ACCESS_KEY",
        "_KEY",
        "AUTH",
    ]
    .iter()
    .any(|w| upper.contains(w))
        || upper.ends_with("KEY")
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(rel: &str, head: &str) -> Option<&'static str> {
        let c = candidate(Path::new(rel))?;
        confirms(c.content, head.as_bytes()).then_some(c.kind)
    }

    #[test]
    fn named_secrets() {
        assert_eq!(kind(".netrc", ""), Some("netrc credentials"));
        assert_eq!(kind(".ssh/id_ed25519", ""), Some("SSH private key"));
        assert_eq!(kind(".ssh/id_ed25519.pub", ""), None);
        assert_eq!(kind(".ssh/known_hosts", ""), None);
        assert_eq!(
            kind(".ssh/deploy", "-----BEGIN OPENSSH PRIVATE KEY-----"),
            Some("SSH private key")
        );
        assert_eq!(kind(".ssh/notes", "hello"), None);
        assert_eq!(kind(".aws/credentials", ""), Some("AWS credentials"));
        assert_eq!(kind(".git-credentials", ""), Some("git credentials"));
        assert_eq!(kind(".kube/config", ""), Some("Kubernetes config"));
        assert_eq!(
            kind(".config/gh/hosts.yml", "github.com:\n  oauth_token: x"),
            Some("GitHub CLI token")
        );
        assert_eq!(
            kind(".docker/config.json", r#"{"auths":{"x":{"auth":"..."}}}"#),
            Some("docker registry auth")
        );
        assert_eq!(
            kind(".mozilla/firefox/abc.default/logins.json", ""),
            Some("browser profile (cookies/passwords)")
        );
        assert_eq!(
            kind("certs/server.pem", "-----BEGIN CERTIFICATE-----"),
            None
        );
        assert_eq!(
            kind("certs/server.pem", "-----BEGIN RSA PRIVATE KEY-----"),
            Some("private key file")
        );
        assert_eq!(kind("src/main.rs", ""), None);
    }

    #[test]
    fn pre_check_never_drops_a_rule() {
        for rel in [
            ".netrc",
            ".ssh/deploy",
            ".mozilla/firefox/x/logins.json",
            "snap/firefox/common/.mozilla/firefox/x/cookies.sqlite",
            "proj/.env",
            "proj/.env.local",
            "certs/server.PEM",
            "x/store.p12",
        ] {
            let p = Path::new(rel);
            let dir = p.parent().unwrap();
            let name = p.file_name().unwrap().as_encoded_bytes();
            assert!(candidate(p).is_some(), "{rel}");
            assert!(may_match(dir, name), "{rel}");
        }
        assert!(!may_match(Path::new("proj/src"), b"main.rs"));
    }

    #[test]
    fn tokens_only_when_present() {
        assert_eq!(kind(".npmrc", "registry=https://x\n"), None);
        assert_eq!(
            kind(".npmrc", "//registry.npmjs.org/:_authToken=abc\n"),
            Some("npm token")
        );
        assert_eq!(kind(".pypirc", "[pypi]\nusername=x\n"), None);
        assert_eq!(
            kind(".pypirc", "[pypi]\npassword=x\n"),
            Some("PyPI password")
        );
    }

    #[test]
    fn shell_exports() {
        let s = Some("secret in a shell/env file");
        assert_eq!(kind(".bashrc", "export GITHUB_TOKEN=ghp_x\n"), s);
        assert_eq!(kind(".bashrc", "  export OPENAI_API_KEY=\"sk\"\n"), s);
        assert_eq!(kind(".profile", "AWS_SECRET_ACCESS_KEY=abc\n"), s);
        assert_eq!(kind(".config/fish/config.fish", "set -x API_KEY abc\n"), s);
        assert_eq!(kind("proj/.env", "DB_PASSWORD=hunter2\n"), s);
        assert_eq!(
            kind(".bashrc", "# export GITHUB_TOKEN=x\nalias ll='ls -l'\n"),
            None
        );
        assert_eq!(
            kind(".bashrc", "export PATH=$PATH:/x\nexport EDITOR=vi\n"),
            None
        );
        assert_eq!(kind(".bashrc", "export TOKEN=\n"), None);
    }
}
