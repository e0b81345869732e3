//! Placeholders: what the agent holds instead of a brokered secret. Shaped like the real
//! value so that a client's format check passes: the same prefix (`sk-ant-api03-`, `ghp_`),
//! the same length, each other character drawn at random from the same class (lower case,
//! upper case, digit; anything else kept). Made once per agent and secret by `cred env
//! --host` with the system's random generator, so two agents never share one.
#![forbid(unsafe_code)]

use anyhow::{Result, anyhow, bail};
use ring::rand::{SecureRandom, SystemRandom};

/// The fewest random characters a placeholder must have: fewer and the agent could guess
/// the placeholder of another secret or agent, or the swap could hit ordinary text.
pub const MIN_RANDOM: usize = 16;

/// The prefix kept as it is: everything up to the last `-` or `_` in the first half of the
/// value (at most 24 characters), the part tokens use to say what they are.
pub fn prefix_len(value: &str) -> usize {
    let limit = (value.len() / 2).min(24);
    value
        .char_indices()
        .take_while(|(i, _)| *i < limit)
        .filter(|(_, c)| matches!(c, '-' | '_'))
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(0)
}

/// A new placeholder for `value`.
pub fn make(value: &str) -> Result<String> {
    let keep = prefix_len(value);
    let rest = &value[keep..];
    let random = rest.chars().filter(char::is_ascii_alphanumeric).count();
    if random < MIN_RANDOM {
        bail!(
            "a brokered value needs at least {MIN_RANDOM} letters or digits after its prefix \
             (a token or API key); this one is too short to be replaced safely"
        );
    }
    let rng = SystemRandom::new();
    for _ in 0..4 {
        let mut bytes = vec![0u8; rest.len()];
        rng.fill(&mut bytes)
            .map_err(|_| anyhow!("the system's random generator failed"))?;
        let mut out = String::with_capacity(value.len());
        out.push_str(&value[..keep]);
        for (c, r) in rest.chars().zip(bytes.iter().cycle()) {
            out.push(same_class(c, *r));
        }
        if out != value {
            return Ok(out);
        }
    }
    bail!("could not make a placeholder different from the value")
}

fn same_class(c: char, r: u8) -> char {
    // 256 is not a multiple of 26 or 10: the bias (at most 1/9) does not matter for a value
    // whose only job is to be unguessable to the agent among >= 16 such characters.
    match c {
        'a'..='z' => char::from(b'a' + r % 26),
        'A'..='Z' => char::from(b'A' + r % 26),
        '0'..='9' => char::from(b'0' + r % 10),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_shape_other_value() {
        let real = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_xyzXYZ";
        let p = make(real).unwrap();
        assert_eq!(p.len(), real.len());
        assert!(p.starts_with("sk-ant-api03-"), "{p}");
        assert_ne!(p, real);
        for (a, b) in real.chars().zip(p.chars()) {
            assert_eq!(a.is_ascii_lowercase(), b.is_ascii_lowercase());
            assert_eq!(a.is_ascii_uppercase(), b.is_ascii_uppercase());
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
        }
        assert_ne!(
            make(real).unwrap(),
            p,
            "two placeholders of one value differ"
        );
        assert_eq!(prefix_len("ghp_0123456789abcdefghijABCDEFGHIJ"), 4);
        assert_eq!(prefix_len("0123456789abcdefghij"), 0);
        assert!(make("short-abc").is_err());
    }
}
