//! Validation of agent names and Unix user names.
#![forbid(unsafe_code)]

use crate::error::usage;

/// Longest agent name (docs/design.md section 1).
pub const AGENT_NAME_MAX: usize = 24;
/// Longest Unix user name we create (shadow's limit on Linux).
pub const USER_NAME_MAX: usize = 32;

/// Checks an agent name: `[a-z][a-z0-9-]{0,23}`.
pub fn check_agent_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(first) => {
            first.is_ascii_lowercase()
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }
        None => false,
    };
    if !valid || name.len() > AGENT_NAME_MAX {
        return Err(usage(format!(
            "invalid agent name '{}': use 1 to {AGENT_NAME_MAX} characters from a-z, 0-9 and '-', starting with a letter",
            name.escape_default()
        )));
    }
    Ok(())
}

/// Checks a Unix user or group name as useradd accepts it portably:
/// `[a-z_][a-z0-9_-]*`, at most 32 characters.
pub fn is_valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) if first.is_ascii_lowercase() || first == '_' => {}
        _ => return false,
    }
    name.len() <= USER_NAME_MAX
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["a", "coder", "c0-der", "abcdefghijklmnopqrstuvwx"] {
            assert!(check_agent_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "0coder",
            "-x",
            "Coder",
            "co der",
            "co_der",
            "abcdefghijklmnopqrstuvwxy",
            "é",
            "a\n",
        ] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_names() {
        assert!(is_valid_user_name("agent-coder"));
        assert!(is_valid_user_name("_x"));
        assert!(!is_valid_user_name("Agent"));
        assert!(!is_valid_user_name("1x"));
        assert!(!is_valid_user_name(&"a".repeat(33)));
    }
}
