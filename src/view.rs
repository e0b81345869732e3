//! What features contribute to the agent's view of the file system. Sharing and live
//! credentials describe their bind mounts here; the runner builds the view from them.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// One bind mount in the agent's view: `source` on the host appears at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}
