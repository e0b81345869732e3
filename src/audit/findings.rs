//! Findings and how they are printed: a table for people, JSON for machines.
//!
//! Every string in a finding may come from a name the agent chose (a file it created in a
//! shared directory, a socket path), so control characters are escaped before anything is
//! printed: an audit must not become a way to inject escape sequences into the owner's
//! terminal (docs/threat-model.md row 2).
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Info,
}

impl Severity {
    pub fn word(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Info => "info",
        }
    }
}

/// Where the agent reaches something: in the view `exec` builds, or with the plain uid
/// switch (cron, at, `su`, anything that runs the agent's uid outside agentuser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    View,
    Host,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// A short stable key, e.g. `readable-secret`, `tcp-listener`, `sysctl`.
    pub category: String,
    /// The concrete path, socket, port, group or setting.
    pub subject: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// For `audit`: the passes in which the agent reached it. Empty for `doctor`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub views: Vec<View>,
}

impl Finding {
    pub fn new(
        severity: Severity,
        category: &str,
        subject: impl AsRef<str>,
        detail: impl AsRef<str>,
    ) -> Finding {
        Finding {
            severity,
            category: category.to_string(),
            subject: escape_controls(subject.as_ref()),
            detail: escape_controls(detail.as_ref()),
            fix: None,
            views: Vec::new(),
        }
    }

    pub fn fix(mut self, fix: impl AsRef<str>) -> Finding {
        self.fix = Some(escape_controls(fix.as_ref()));
        self
    }

    pub fn in_views(mut self, views: &[View]) -> Finding {
        self.views = views.to_vec();
        self
    }
}

/// Counts by severity, for the summary line and the exit status.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub high: usize,
    pub medium: usize,
    pub info: usize,
}

impl Summary {
    pub fn of<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Summary {
        let mut s = Summary::default();
        for f in findings {
            match f.severity {
                Severity::High => s.high += 1,
                Severity::Medium => s.medium += 1,
                Severity::Info => s.info += 1,
            }
        }
        s
    }
}

/// Sorts findings: most severe first, then by category and subject, so output is stable.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (a.severity, &a.category, &a.subject).cmp(&(b.severity, &b.category, &b.subject))
    });
}

/// The table `audit` and `doctor` print without `--json`.
pub fn table(findings: &[Finding], with_views: bool) -> String {
    let mut out = String::new();
    let subject_width = findings
        .iter()
        .map(|f| f.subject.chars().count())
        .max()
        .unwrap_or(7)
        .clamp(7, 48);
    let category_width = findings
        .iter()
        .map(|f| f.category.len())
        .max()
        .unwrap_or(8)
        .max(8);
    if with_views {
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<category_width$} {:<subject_width$}  DETAIL",
            "SEVERITY", "REACHED", "CATEGORY", "SUBJECT"
        );
    } else {
        let _ = writeln!(
            out,
            "{:<8} {:<category_width$} {:<subject_width$}  DETAIL",
            "SEVERITY", "CATEGORY", "SUBJECT"
        );
    }
    for f in findings {
        if with_views {
            let _ = writeln!(
                out,
                "{:<8} {:<9} {:<category_width$} {:<subject_width$}  {}",
                f.severity.word(),
                views_word(&f.views),
                f.category,
                f.subject,
                f.detail
            );
        } else {
            let _ = writeln!(
                out,
                "{:<8} {:<category_width$} {:<subject_width$}  {}",
                f.severity.word(),
                f.category,
                f.subject,
                f.detail
            );
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "{:8} fix: {fix}", "");
        }
    }
    out
}

fn views_word(views: &[View]) -> &'static str {
    match (views.contains(&View::View), views.contains(&View::Host)) {
        (true, true) => "both",
        (true, false) => "view",
        (false, true) => "host-only",
        (false, false) => "-",
    }
}

/// Replaces control characters (C0, DEL, C1) with visible escapes.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let f = Finding::new(
            Severity::High,
            "x",
            "/tmp/\u{1b}]52;c;ZWNobw==\u{7}\u{9b}2J",
            "a\nb",
        );
        assert!(!f.subject.chars().any(char::is_control), "{}", f.subject);
        assert!(!f.detail.contains('\n'));
        let text = table(&[f], true);
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != ' ')
        );
    }

    #[test]
    fn sorted_by_severity_and_counted() {
        let mut v = vec![
            Finding::new(Severity::Info, "b", "1", ""),
            Finding::new(Severity::High, "z", "2", ""),
            Finding::new(Severity::Medium, "a", "3", ""),
        ];
        sort(&mut v);
        assert_eq!(v[0].severity, Severity::High);
        assert_eq!(v[2].severity, Severity::Info);
        assert_eq!(
            Summary::of(&v),
            Summary {
                high: 1,
                medium: 1,
                info: 1
            }
        );
    }
}
