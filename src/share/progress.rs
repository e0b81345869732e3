//! A one-line progress counter on stderr for long walks, only when stderr is a terminal.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Walks shorter than this print nothing.
const QUIET_FOR: Duration = Duration::from_millis(500);

pub struct Progress {
    label: String,
    start: Instant,
    tty: bool,
    shown: AtomicBool,
}

impl Progress {
    pub fn new(verb: &str, path: &Path) -> Progress {
        Progress {
            label: format!("agentuser: {verb} {}", super::printable(path)),
            start: Instant::now(),
            tty: nix::unistd::isatty(std::io::stderr()).unwrap_or(false),
            shown: AtomicBool::new(false),
        }
    }

    /// Rewrites the line with the number of entries seen so far.
    pub fn show(&self, entries: u64) {
        if !self.tty || self.start.elapsed() < QUIET_FOR {
            return;
        }
        self.shown.store(true, Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{}: {entries} entries ({:.0}/s)",
            self.label,
            entries as f64 / secs
        );
        let _ = err.flush();
    }

    /// Ends the line, if one was shown.
    pub fn finish(&self, entries: u64) {
        if self.shown.load(Ordering::Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "\r\x1b[K{}: {entries} entries, done", self.label);
        }
    }
}
