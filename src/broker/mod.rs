//! Credentials the agent never holds (DESIGN.md section 9, THREAT-MODEL rows 29 and 30).
//!
//! `cred env NAME VAR --host HOST...` stores a secret bound to hosts; the agent's
//! environment gets a [`placeholder`] of the same shape. The policy point (which runs as
//! agentuser-net, never as the agent) holds the real values in locked memory, wiped when
//! dropped; it terminates TLS for bound hosts only ([`ca`], [`intercept`]) and swaps the
//! placeholder for the value in request headers and the URL. A placeholder seen anywhere
//! else (a host it is not bound to, plain HTTP, a plain TCP stream) ends the request and is
//! logged as a likely exfiltration attempt.
#![forbid(unsafe_code)]

pub mod audit;
pub mod ca;
pub mod exposure;
pub mod intercept;
pub mod placeholder;
pub mod ssh;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

/// One brokered secret, as the policy point holds it.
pub struct Secret {
    pub var: String,
    pub placeholder: String,
    pub value: Zeroizing<String>,
    /// Lower-case host names the value may be sent to.
    pub hosts: Vec<String>,
}

/// What the policy point holds for the run: the secrets and the authority.
pub struct Broker {
    pub secrets: Secrets,
    pub authority: ca::Authority,
}

/// Where a placeholder was found that may not go there.
#[derive(Debug, PartialEq, Eq)]
pub struct Leak {
    pub var: String,
}

/// The secrets of one run.
#[derive(Default)]
pub struct Secrets {
    secrets: Vec<Secret>,
}

impl Secrets {
    pub fn new(secrets: Vec<Secret>) -> Secrets {
        Secrets { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether TLS to `host` is terminated (some secret is bound to it).
    pub fn binds(&self, host: &str) -> bool {
        self.secrets
            .iter()
            .any(|s| s.hosts.iter().any(|h| h == host))
    }

    /// Locks every value in memory (no swap), where the limits allow.
    pub fn lock_in_memory(&self) {
        for s in &self.secrets {
            crate::sys::memory::lock(s.value.as_bytes());
        }
    }

    /// The first placeholder found in `data`, if any.
    pub fn find(&self, data: &[u8]) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| contains(data, s.placeholder.as_bytes()))
    }

    /// The longest placeholder, so that a stream scan can keep that much of the previous
    /// chunk and catch a placeholder split across reads.
    pub fn longest(&self) -> usize {
        self.secrets
            .iter()
            .map(|s| s.placeholder.len())
            .max()
            .unwrap_or(0)
    }

    /// `data` with every secret's value replaced by its placeholder (of the same length, so
    /// offsets in a file stay where they were); `None` when it holds no value. What a copied
    /// credential file becomes in the agent's home (issue 13 item 3).
    pub fn mask_values(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for s in &self.secrets {
            let current: &[u8] = out.as_deref().unwrap_or(data);
            if !contains(current, s.value.as_bytes()) {
                continue;
            }
            let masked = replace(current, s.value.as_bytes(), s.placeholder.as_bytes());
            if let Some(old) = out.replace(masked) {
                // The previous round held no value of this secret, maybe one of another
                // secret not masked yet: wipe it.
                drop(Zeroizing::new(old));
            }
        }
        out
    }

    /// The names of the secrets whose real value occurs in `data`.
    pub fn values_in(&self, data: &[u8]) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| contains(data, s.value.as_bytes()))
            .map(|s| s.var.as_str())
            .collect()
    }

    /// `text` with the placeholder of every secret bound to `host` replaced by its value;
    /// `None` when it holds none. A placeholder of a secret not bound to `host` is a leak.
    pub fn substitute(&self, text: &[u8], host: &str) -> Result<Option<Zeroizing<Vec<u8>>>, Leak> {
        let mut out: Option<Zeroizing<Vec<u8>>> = None;
        for s in &self.secrets {
            let current: &[u8] = out.as_deref().map_or(text, |v| v.as_slice());
            if !contains(current, s.placeholder.as_bytes()) {
                continue;
            }
            if !s.hosts.iter().any(|h| h == host) {
                return Err(Leak { var: s.var.clone() });
            }
            let replaced = replace(current, s.placeholder.as_bytes(), s.value.as_bytes());
            out = Some(Zeroizing::new(replaced));
        }
        Ok(out)
    }
}

impl Secrets {
    /// [`Secrets::substitute`] for a header value, looking also inside HTTP Basic credentials
    /// (`Basic base64(user:password)`: how git, curl `-u` and most HTTP libraries send a
    /// token as a password), which are decoded, swapped and encoded again.
    pub fn substitute_header(
        &self,
        value: &[u8],
        host: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Leak> {
        if let Some(swapped) = self.substitute(value, host)? {
            return Ok(Some(swapped));
        }
        let Some(decoded) = basic_credentials(value) else {
            return Ok(None);
        };
        let Some(swapped) = self.substitute(&decoded, host)? else {
            return Ok(None);
        };
        let mut out = Zeroizing::new(b"Basic ".to_vec());
        out.extend_from_slice(Zeroizing::new(BASE64.encode(swapped.as_slice())).as_bytes());
        Ok(Some(out))
    }

    /// [`Secrets::find`] for a header value, looking also inside HTTP Basic credentials.
    pub fn find_in_header(&self, value: &[u8]) -> Option<&Secret> {
        self.find(value)
            .or_else(|| basic_credentials(value).and_then(|decoded| self.find(&decoded)))
    }
}

/// The decoded `user:password` of an HTTP Basic `Authorization` value (RFC 7617: the scheme
/// is case-insensitive); None for anything else.
fn basic_credentials(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let encoded = rest.trim_ascii();
    BASE64.decode(encoded).ok().map(Zeroizing::new)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut rest = 0;
    for at in memchr::memmem::find_iter(haystack, needle) {
        // find_iter yields non-overlapping matches, left to right.
        out.extend_from_slice(&haystack[rest..at]);
        out.extend_from_slice(with);
        rest = at + needle.len();
    }
    out.extend_from_slice(&haystack[rest..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(vec![
            Secret {
                var: "A".into(),
                placeholder: "sk-PLACEHOLDERa".into(),
                value: Zeroizing::new("sk-REALVALUEaaa".into()),
                hosts: vec!["api.test".into()],
            },
            Secret {
                var: "B".into(),
                placeholder: "gh-PLACEHOLDERb".into(),
                value: Zeroizing::new("gh-REALVALUEbbb".into()),
                hosts: vec!["git.test".into()],
            },
        ])
    }

    #[test]
    fn swapped_only_toward_bound_hosts() {
        let s = secrets();
        let out = s
            .substitute(b"Bearer sk-PLACEHOLDERa, sk-PLACEHOLDERa", "api.test")
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], b"Bearer sk-REALVALUEaaa, sk-REALVALUEaaa");
        assert_eq!(s.substitute(b"nothing here", "api.test"), Ok(None));
        assert_eq!(
            s.substitute(b"x=sk-PLACEHOLDERa", "git.test"),
            Err(Leak { var: "A".into() })
        );
        assert_eq!(
            s.substitute(b"sk-PLACEHOLDERa gh-PLACEHOLDERb", "api.test"),
            Err(Leak { var: "B".into() })
        );
        assert!(s.binds("api.test") && !s.binds("other.test"));
        assert_eq!(
            s.find(b"..gh-PLACEHOLDERb..").map(|s| &s.var[..]),
            Some("B")
        );
    }

    #[test]
    fn basic_credentials_are_swapped_inside() {
        let s = secrets();
        let basic = |text: &str| format!("Basic {}", BASE64.encode(text));
        let sent = basic("x-access-token:sk-PLACEHOLDERa");
        let out = s
            .substitute_header(sent.as_bytes(), "api.test")
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], basic("x-access-token:sk-REALVALUEaaa").as_bytes());
        // The scheme is case-insensitive; other schemes and garbage are left alone.
        let lower = sent.replacen("Basic", "basic", 1);
        assert!(
            s.substitute_header(lower.as_bytes(), "api.test")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.substitute_header(b"Basic !!notbase64", "api.test"),
            Ok(None)
        );
        assert_eq!(s.substitute_header(b"Digest x", "api.test"), Ok(None));
        // Toward a host the secret is not bound to: a leak, found inside the encoding too.
        assert_eq!(
            s.substitute_header(sent.as_bytes(), "git.test"),
            Err(Leak { var: "A".into() })
        );
        assert_eq!(
            s.find_in_header(sent.as_bytes()).map(|s| &s.var[..]),
            Some("A")
        );
        // Control: without decoding, the placeholder is not seen.
        assert!(s.find(sent.as_bytes()).is_none());
    }

    #[test]
    fn values_masked_in_file_content() {
        let s = secrets();
        let file = br#"{"a":"sk-REALVALUEaaa","b":"gh-REALVALUEbbb","c":"sk-REALVALUEaaa"}"#;
        let masked = s.mask_values(file).unwrap();
        assert_eq!(
            &masked[..],
            br#"{"a":"sk-PLACEHOLDERa","b":"gh-PLACEHOLDERb","c":"sk-PLACEHOLDERa"}"#
        );
        assert_eq!(s.values_in(file), ["A", "B"]);
        assert!(s.values_in(&masked).is_empty());
        assert_eq!(s.mask_values(b"nothing"), None);
    }
}
