//! The per-agent network allowlist (docs/design.md section 8): entries, their canonical text (kept
//! in the agent's record), matching, and the presets.
//!
//! An entry is `HOST[:PORT]`:
//! - `HOST` is a DNS name (`api.anthropic.com`), a wildcard for every name below a domain
//!   (`*.githubusercontent.com`: any depth, not the domain itself), an address (`10.1.2.3`,
//!   `[fd00::1]`), or `localhost` (the host's own loopback services, port required);
//! - without a port an entry means ports 80 and 443.
//!
//! Names are ASCII (an internationalized name is given in its `xn--` form), compared without
//! case and without a trailing dot.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;

use anyhow::{Result, bail};

/// Ports an entry without `:PORT` allows.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostPattern {
    /// An exact DNS name, lowercase, no trailing dot.
    Name(String),
    /// Every name strictly below this domain (`*.DOMAIN`).
    Below(String),
    /// An address named explicitly: allowed even when private or loopback.
    Address(IpAddr),
    /// The host's loopback (127.0.0.1 and ::1), for one port.
    Localhost,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub host: HostPattern,
    /// None: 80 and 443.
    pub port: Option<u16>,
}

impl Entry {
    /// Parses `HOST[:PORT]` (see the module documentation).
    pub fn parse(text: &str) -> Result<Entry> {
        let bad = |why: &str| anyhow::anyhow!("'{}': {why}", text.escape_default());
        let (host, port) = split_port(text).map_err(|why| bad(&why))?;
        let host = parse_host(host).map_err(|why| bad(&why))?;
        if host == HostPattern::Localhost && port.is_none() {
            return Err(bad("localhost needs a port (localhost:PORT)"));
        }
        Ok(Entry { host, port })
    }

    pub fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Below(d) => write!(f, "*.{d}")?,
            HostPattern::Address(IpAddr::V4(a)) => write!(f, "{a}")?,
            HostPattern::Address(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            HostPattern::Localhost => f.write_str("localhost")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

fn split_port(text: &str) -> std::result::Result<(&str, Option<u16>), String> {
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port '{}'", p.escape_default())),
        Ok(port) => Ok(Some(port)),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err("unclosed '['".into());
        };
        return match after.strip_prefix(':') {
            Some(p) => Ok((addr, parse_port(p)?)),
            None if after.is_empty() => Ok((addr, None)),
            None => Err("unexpected text after ']'".into()),
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("an IPv6 address must be written in brackets: [ADDRESS]:PORT".into())
        }
        Some((host, p)) => Ok((host, parse_port(p)?)),
        None => Ok((text, None)),
    }
}

fn parse_host(host: &str) -> std::result::Result<HostPattern, String> {
    if let Ok(addr) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Address(addr));
    }
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if lower == "localhost" {
        return Ok(HostPattern::Localhost);
    }
    if let Some(domain) = lower.strip_prefix("*.") {
        check_name(domain)?;
        if !domain.contains('.') {
            return Err("a wildcard must name a domain below a top-level domain".into());
        }
        return Ok(HostPattern::Below(domain.to_owned()));
    }
    check_name(lower)?;
    Ok(HostPattern::Name(lower.to_owned()))
}

/// A DNS name: 1 to 253 characters, labels of 1 to 63 letters, digits, '-' and '_', not
/// starting or ending with '-'; not all digits (that would be an address).
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("not a host name".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "not a host name (label '{}'; write internationalized names in xn-- form)",
                label.escape_default()
            ));
        }
    }
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not a host name or a complete address".into());
    }
    Ok(())
}

/// Lowercase, without a trailing dot: the form names are compared in.
pub fn normalize_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower.strip_suffix('.').unwrap_or(&lower).to_owned()
}

/// `--host` names of `cred env` and `cred ssh`, normalized and without repeats: exact host
/// names only (no wildcard, port, user or scheme), or the one-line usage error naming the
/// first that is not one.
pub fn exact_host_names(hosts: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for host in hosts {
        let name = normalize_name(host);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(crate::error::usage(format!(
                "--host '{}': give a host name (no wildcard, port, user or scheme)",
                host.escape_default()
            )));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// What a destination is, as the policy point learned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Name(String),
    Address(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Address(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Address(a) => write!(f, "{a}"),
        }
    }
}

impl Host {
    /// A name from a request (CONNECT authority, URL host, SNI); addresses become addresses.
    pub fn from_request(text: &str) -> Host {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        match bare.parse::<IpAddr>() {
            Ok(addr) => Host::Address(addr),
            Err(_) => Host::Name(normalize_name(text)),
        }
    }
}

/// The parsed allowlist of one agent.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

/// Which entry allowed a destination, and how the address must then be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A name entry: the policy point resolves it and refuses non-public answers.
    PublicName,
    /// An address entry: connect to exactly that address.
    Address(IpAddr),
    /// `localhost:PORT`: the host's loopback.
    Localhost,
}

impl Allowlist {
    /// Parses the canonical entries kept in a record.
    pub fn from_record(entries: &[String]) -> Result<Allowlist> {
        let entries = entries
            .iter()
            .map(|e| Entry::parse(e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Allowlist { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether `name` (normalized) matches some entry, for any port: the DNS stub answers
    /// only such names.
    pub fn knows_name(&self, name: &str) -> bool {
        self.entries.iter().any(|e| name_matches(&e.host, name))
    }

    /// The grant for `host:port`, if an entry allows it.
    pub fn check(&self, host: &Host, port: u16) -> Option<Grant> {
        let mut grant = None;
        for entry in self.entries.iter().filter(|e| e.allows_port(port)) {
            match (host, &entry.host) {
                (Host::Name(n), HostPattern::Localhost) if n == "localhost" => {
                    return Some(Grant::Localhost);
                }
                (Host::Name(n), pattern) if name_matches(pattern, n) => {
                    grant = Some(Grant::PublicName);
                }
                (Host::Address(a), HostPattern::Address(b)) if same_address(a, b) => {
                    return Some(Grant::Address(*b));
                }
                (Host::Address(a), HostPattern::Localhost) if a.is_loopback() => {
                    return Some(Grant::Localhost);
                }
                _ => {}
            }
        }
        grant
    }
}

fn same_address(a: &IpAddr, b: &IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn name_matches(pattern: &HostPattern, name: &str) -> bool {
    match pattern {
        HostPattern::Name(n) => n == name,
        HostPattern::Below(domain) => name
            .strip_suffix(domain.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        HostPattern::Address(_) | HostPattern::Localhost => false,
    }
}

/// Presets: name, what it is for, its exact entries. README and `net --help` list these.
pub const PRESETS: &[(&str, &[&str])] = &[
    (
        "anthropic",
        &[
            "api.anthropic.com",
            "console.anthropic.com",
            "statsig.anthropic.com",
        ],
    ),
    (
        "openai",
        &["api.openai.com", "auth.openai.com", "chatgpt.com"],
    ),
    ("opencode", &["opencode.ai", "*.opencode.ai", "models.dev"]),
    (
        "github",
        &[
            "github.com",
            "github.com:22",
            "*.github.com",
            "*.githubusercontent.com",
        ],
    ),
    ("npm", &["registry.npmjs.org", "registry.yarnpkg.com"]),
    ("pypi", &["pypi.org", "files.pythonhosted.org"]),
    (
        "crates",
        &["crates.io", "index.crates.io", "static.crates.io"],
    ),
    ("debian", &["deb.debian.org", "security.debian.org"]),
];

/// The entries of a preset.
pub fn preset(name: &str) -> Result<&'static [&'static str]> {
    match PRESETS.iter().find(|(n, _)| *n == name) {
        Some((_, entries)) => Ok(entries),
        None => bail!(
            "--preset {}: unknown preset (known: {})",
            name.escape_default(),
            PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether an address may be reached for a public name: not loopback, link-local, private,
/// unique-local, unspecified, multicast, broadcast, documentation, shared (CGNAT) or the
/// synthetic range the DNS stub hands out (DNS rebinding, docs/threat-model.md row 28).
pub fn is_public(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_to_canonical_text() {
        for (given, canonical) in [
            ("API.Anthropic.com.", "api.anthropic.com"),
            ("github.com:22", "github.com:22"),
            ("*.GitHubUserContent.com", "*.githubusercontent.com"),
            ("localhost:5432", "localhost:5432"),
            ("10.1.2.3:5432", "10.1.2.3:5432"),
            ("[fd00::1]:443", "[fd00::1]:443"),
            ("[fd00::1]", "[fd00::1]"),
        ] {
            assert_eq!(Entry::parse(given).unwrap().to_string(), canonical);
        }
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.com",
            "exa mple.com",
            "host:0",
            "host:70000",
            "host:",
            "fd00::1",
            "*.com",
            "*",
            "bücher.de",
            "1.2.3",
            "[::1",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let list = Allowlist::from_record(&[
            "api.example.com".into(),
            "*.cdn.example".into(),
            "git.example:22".into(),
            "10.1.2.3:5432".into(),
            "localhost:8080".into(),
        ])
        .unwrap();
        let name = |n: &str| Host::Name(n.into());
        assert_eq!(
            list.check(&name("api.example.com"), 443),
            Some(Grant::PublicName)
        );
        assert_eq!(list.check(&name("api.example.com"), 22), None);
        assert_eq!(
            list.check(&name("a.b.cdn.example"), 80),
            Some(Grant::PublicName)
        );
        assert_eq!(list.check(&name("cdn.example"), 80), None);
        assert_eq!(list.check(&name("evilcdn.example"), 80), None);
        assert_eq!(
            list.check(&name("git.example"), 22),
            Some(Grant::PublicName)
        );
        assert_eq!(list.check(&name("git.example"), 443), None);
        let addr = |a: &str| Host::Address(a.parse().unwrap());
        assert!(matches!(
            list.check(&addr("10.1.2.3"), 5432),
            Some(Grant::Address(_))
        ));
        assert_eq!(list.check(&addr("10.1.2.4"), 5432), None);
        assert_eq!(list.check(&name("localhost"), 8080), Some(Grant::Localhost));
        assert_eq!(list.check(&addr("127.0.0.1"), 8080), Some(Grant::Localhost));
        assert_eq!(list.check(&addr("127.0.0.1"), 8081), None);
        assert!(list.knows_name("x.cdn.example"));
        assert!(!list.knows_name("secret.attacker.test"));
    }

    #[test]
    fn non_public_addresses() {
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "2606:4700::1", "1.1.1.1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn presets_are_valid() {
        for (name, entries) in PRESETS {
            for e in *entries {
                assert_eq!(Entry::parse(e).unwrap().to_string(), *e, "{name}");
            }
        }
    }
}
