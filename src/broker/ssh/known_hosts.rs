//! Host keys of the hosts an ssh key is given for, from known_hosts text (the owner's
//! ~/.ssh/known_hosts, or a file from `ssh-keyscan`): entries naming the host exactly
//! (port 22), plain or hashed (`|1|salt|hash`, HMAC-SHA1 as OpenSSH writes them). Wildcard
//! patterns and marked entries (@cert-authority, @revoked) are not used; a negated pattern
//! that names the host excludes the entry.
#![forbid(unsafe_code)]

use ssh_key::known_hosts::{HostPatterns, KnownHosts};

/// The public keys (OpenSSH one-line form, no comment) `text` records for `host`.
pub fn keys_for(text: &str, host: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for entry in KnownHosts::new(text).flatten() {
        if entry.marker().is_some() || !names(entry.host_patterns(), host) {
            continue;
        }
        let mut key = entry.public_key().clone();
        key.set_comment("");
        if let Ok(line) = key.to_openssh() {
            if !keys.contains(&line) {
                keys.push(line);
            }
        }
    }
    keys
}

fn names(patterns: &HostPatterns, host: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(list) => {
            let mut hit = false;
            for pattern in list {
                match pattern.strip_prefix('!') {
                    Some(negated) if negated.eq_ignore_ascii_case(host) => return false,
                    Some(_) => {}
                    None => hit |= pattern.eq_ignore_ascii_case(host),
                }
            }
            hit
        }
        HostPatterns::HashedName { salt, hash } => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&key, host.as_bytes(), hash).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOHS0FBsNC0ZJTlnQBHT2cJeo8EOmFZIIl8uQNRO3TMm";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKmm/YZ8+mz94NtKbnjC/kSVJAZVgY7v5UXFiKnfNgdy";

    #[test]
    fn exact_and_hashed_entries() {
        let text = format!(
            "git.test,10.0.0.1 {KEY} c\n*.test {OTHER}\n@revoked git.test {OTHER}\n\
             other.test,!git.test {OTHER}\n[git.test]:2222 {OTHER}\n"
        );
        assert_eq!(keys_for(&text, "git.test"), vec![KEY.to_string()]);
        assert_eq!(keys_for(&text, "GIT.test"), vec![KEY.to_string()]);
        assert!(keys_for(&text, "nowhere.test").is_empty());
        // OpenSSH's hashed form of "git.test" (HMAC-SHA1 with this salt, as ssh-keygen -H).
        let hashed =
            format!("|1|BwcHBwcHBwcHBwcHBwcHBwcHBwc=|niWio3y5tj7kF2UwkpieJacNVi8= {OTHER}\n");
        assert_eq!(keys_for(&hashed, "git.test"), vec![OTHER.to_string()]);
        assert!(keys_for(&hashed, "else.test").is_empty());
    }
}
