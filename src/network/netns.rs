//! The agent's network namespace in `allowlist` mode: loopback, default routes through
//! loopback (so every connection reaches netfilter instead of failing "unreachable"), and a
//! netfilter ruleset that delivers every TCP connection to a non-loopback address to the
//! policy point's capture port and every DNS datagram to its stub. The namespace has no other
//! interface: nothing the agent sends (UDP, ICMP, raw packets) can leave it except through
//! the policy point's sockets.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::nflog::GROUP;
use super::{CAPTURE_PORT, DNS_PORT};

/// The agent's own address for connections through loopback: the first address of the DNS
/// stub's synthetic range, which the stub never hands out.
const SOURCE_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 0);

/// Where nft(8) may be; it must be root's and writable by root only.
const NFT_PATHS: [&str; 2] = ["/usr/sbin/nft", "/sbin/nft"];

/// The netfilter ruleset of the agent's namespace. DNS to any address (127.0.0.53 included)
/// goes to the stub; the agent's own loopback stays its own; every other TCP connection, IPv4
/// or IPv6, goes to the capture listener. What is then still addressed outside the namespace
/// (UDP other than DNS, ICMP, any other protocol) is dropped, and reported to the policy
/// point's log ([`super::nflog`]) at most 50 times a second.
pub fn ruleset() -> String {
    format!(
        "table inet agentuser {{
  chain capture {{
    type nat hook output priority -100; policy accept;
    udp dport 53 redirect to :{DNS_PORT}
    ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    meta l4proto tcp redirect to :{CAPTURE_PORT}
  }}
  chain leave {{
    type filter hook output priority 0; policy accept;
    fib daddr type local accept
    limit rate 50/second burst 100 packets log group {GROUP}
    drop
  }}
}}
"
    )
}

/// The nft binary, if installed as root's.
pub fn nft_binary() -> Option<&'static str> {
    NFT_PATHS.into_iter().find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0)
    })
}

/// Configures the current (new, empty) network namespace. Runs as root, before the
/// listeners are bound.
pub fn configure() -> Result<()> {
    crate::sys::spawn::loopback_up().context("bringing up loopback")?;
    crate::sys::net::loopback_source_address(SOURCE_ADDRESS)?;
    crate::sys::net::default_routes_via_loopback()?;
    let Some(nft) = nft_binary() else {
        bail!("nft(8) is not installed (apt-get install nftables): the allowlist mode needs it");
    };
    load_ruleset(Path::new(nft), &ruleset())
}

fn load_ruleset(nft: &Path, rules: &str) -> Result<()> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", nft.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .context("writing the netfilter ruleset")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "loading the netfilter ruleset: {}",
            err.lines().next().unwrap_or("nft failed")
        );
    }
    Ok(())
}
