//! Which sudoers rules apply to an agent. The privileged process reads /etc/sudoers (and
//! what it includes) itself rather than running `sudo -l` as the agent: no program of the
//! agent's environment runs, and sudo would log and mail about the attempt.
//!
//! This is a conservative reader, not a full sudoers grammar: a user list matches when any
//! item names the agent, one of its groups, `ALL`, or a User_Alias that does. Negations are
//! ignored, which can only add findings, never hide one.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Who the rules are checked for.
pub struct Subject<'a> {
    pub user: &'a str,
    pub uid: u32,
    /// (gid, name) of every group, primary included.
    pub groups: &'a [(u32, String)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub file: PathBuf,
    pub line: usize,
    pub text: String,
    pub nopasswd: bool,
}

const MAX_INCLUDE_DEPTH: usize = 8;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Rules of /etc/sudoers (and its includes) whose user list matches `who`.
pub fn rules_for(who: &Subject) -> Vec<Rule> {
    let mut lines = Vec::new();
    collect(Path::new("/etc/sudoers"), 0, &mut lines);
    matching(&lines, who)
}

/// Logical lines (continuations joined) with their file and first line number.
type Lines = Vec<(PathBuf, usize, String)>;

fn collect(path: &Path, depth: usize, out: &mut Lines) {
    if depth > MAX_INCLUDE_DEPTH {
        return;
    }
    let Some(text) = read_root_file(path) else {
        return;
    };
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        if let Some(head) = raw.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let trimmed = line.trim();
        let directive = trimmed
            .strip_prefix('@')
            .or_else(|| trimmed.strip_prefix('#'))
            .unwrap_or("");
        if let Some(dir) = directive.strip_prefix("includedir ") {
            include_dir(Path::new(dir.trim()), depth, out);
        } else if let Some(file) = directive.strip_prefix("include ") {
            let file = file.trim();
            if !file.contains('%') {
                let file = resolve(path, file);
                collect(&file, depth + 1, out);
            }
        } else {
            out.push((path.to_path_buf(), start, line));
        }
    }
}

/// Relative include paths are relative to the including file's directory (sudo 1.9.1+).
fn resolve(from: &Path, file: &str) -> PathBuf {
    let file = Path::new(file);
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        from.parent().unwrap_or(Path::new("/")).join(file)
    }
}

fn include_dir(dir: &Path, depth: usize, out: &mut Lines) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        // sudo skips names ending in '~' or containing '.'.
        .filter(|n| !n.ends_with('~') && !n.contains('.'))
        .collect();
    names.sort();
    for name in names {
        collect(&dir.join(name), depth + 1, out);
    }
}

/// sudo itself ignores sudoers files that are not root's or are writable by others; so do we.
fn read_root_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 || meta.len() > MAX_FILE_BYTES
    {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        // `#123` is a uid in a user list; any other '#' starts a comment.
        if b == b'#' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return &line[..i];
        }
    }
    line
}

fn matching(lines: &Lines, who: &Subject) -> Vec<Rule> {
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut specs = Vec::new();
    for (file, number, raw) in lines {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let keyword = line.split_whitespace().next().unwrap_or("");
        if keyword == "User_Alias" {
            for def in line["User_Alias".len()..].split(':') {
                if let Some((name, members)) = def.split_once('=') {
                    aliases.insert(name.trim().to_string(), items(members));
                }
            }
            continue;
        }
        if keyword.starts_with("Defaults")
            || matches!(
                keyword,
                "Host_Alias" | "Runas_Alias" | "Cmnd_Alias" | "Cmd_Alias"
            )
        {
            continue;
        }
        let Some((head, _)) = line.split_once('=') else {
            continue;
        };
        // "alice, %dev  host1, host2 = ..." : the user list is the first comma-joined list.
        let joined = head.replace(", ", ",").replace(" ,", ",");
        let Some(users) = joined.split_whitespace().next() else {
            continue;
        };
        specs.push((file, *number, line, items(users)));
    }
    specs
        .into_iter()
        .filter(|(_, _, _, users)| users.iter().any(|u| item_matches(u, who, &aliases, 0)))
        .map(|(file, line, text, _)| Rule {
            file: file.clone(),
            line,
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            nopasswd: text.contains("NOPASSWD"),
        })
        .collect()
}

fn items(list: &str) -> Vec<String> {
    list.split(',')
        .map(|i| i.trim().trim_start_matches('!').to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

fn item_matches(
    item: &str,
    who: &Subject,
    aliases: &BTreeMap<String, Vec<String>>,
    depth: usize,
) -> bool {
    if item == "ALL" || item == who.user {
        return true;
    }
    if let Some(uid) = item.strip_prefix('#') {
        return uid.parse() == Ok(who.uid);
    }
    if let Some(gid) = item.strip_prefix("%#") {
        return who.groups.iter().any(|(g, _)| gid.parse() == Ok(*g));
    }
    if let Some(group) = item.strip_prefix('%') {
        return who.groups.iter().any(|(_, n)| n == group);
    }
    match aliases.get(item) {
        Some(members) if depth < 8 => members
            .iter()
            .any(|m| item_matches(m, who, aliases, depth + 1)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Vec<(usize, bool)> {
        let lines: Lines = {
            let mut v = Vec::new();
            let mut n = 0;
            for l in text.lines() {
                n += 1;
                v.push((PathBuf::from("/etc/sudoers"), n, l.to_string()));
            }
            v
        };
        let groups = vec![
            (1_900_000_000, "agent-coder".to_string()),
            (999, "docker".into()),
        ];
        let who = Subject {
            user: "agent-coder",
            uid: 1_900_000_000,
            groups: &groups,
        };
        matching(&lines, &who)
            .into_iter()
            .map(|r| (r.line, r.nopasswd))
            .collect()
    }

    #[test]
    fn matches_user_group_uid_alias_and_all() {
        let rules = check(
            "Defaults env_reset
root ALL=(ALL:ALL) ALL
%sudo ALL=(ALL:ALL) ALL
agent-coder ALL=(ALL) NOPASSWD: /usr/bin/apt
%docker, bob host1 = ALL
#1900000000 ALL=ALL
User_Alias BOTS = alice, agent-coder
BOTS ALL = NOPASSWD: ALL
ALL ALL=(root) /usr/bin/true # comment with = sign
%#999 ALL = ALL
alice ALL=ALL",
        );
        assert_eq!(
            rules,
            vec![
                (4, true),
                (5, false),
                (6, false),
                (8, true),
                (9, false),
                (10, false)
            ]
        );
    }
}
