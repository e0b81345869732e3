//! The agent's trust in the run's CA (issue 13 item 2): a bundle of the system's CAs plus the
//! run's CA, written by root (0644, root's directory, removed when the run ends), bound
//! read-only over the system bundle in the view and named by the variables clients read.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::broker::ca::{SYSTEM_BUNDLES, system_bundle};
use crate::context::Context;
use crate::view::ViewMount;

/// Variables naming a CA file, for clients that do not read the system bundle (Node adds
/// NODE_EXTRA_CA_CERTS to its own; Python requests, curl, git and cargo replace theirs).
const VARIABLES: [&str; 6] = [
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
];

/// Reads the CA certificate from the policy point and writes the view's bundle.
pub fn write_bundle(ctx: &Context, run: &str, ca_in: UnixStream) -> Result<PathBuf> {
    let mut pem = String::new();
    ca_in
        .take(64 << 10)
        .read_to_string(&mut pem)
        .context("reading the policy point's CA certificate")?;
    if !pem.starts_with("-----BEGIN CERTIFICATE-----") {
        bail!("network policy point: could not make the run's certificate authority");
    }
    let (_, system) = system_bundle()?;
    let dir = ctx.registry.root().join("run-ca");
    crate::registry::ensure_root_dir(&dir, 0o755)?;
    let path = dir.join(format!("{run}.pem"));
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut text = system;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# agentuser: this run's broker CA\n");
    text.push_str(&pem);
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The mount over the system bundle and the variables, in the view.
pub fn view(bundle: &Path) -> (Vec<ViewMount>, Vec<(String, Vec<u8>)>) {
    let target = SYSTEM_BUNDLES
        .iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map_or(SYSTEM_BUNDLES[0], |p| p);
    let mounts = vec![ViewMount {
        source: bundle.to_path_buf(),
        target: PathBuf::from(target),
        read_only: true,
    }];
    let env = VARIABLES
        .iter()
        .map(|v| (v.to_string(), target.as_bytes().to_vec()))
        .collect();
    (mounts, env)
}
