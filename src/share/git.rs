//! `.git` entries in a shared tree, for the agent's view. They are found through the
//! share's index ([`super::index`]), without walking the tree at each run.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// A `.git` directory or file (a gitfile of a submodule or worktree) in a share.
#[derive(Debug, Clone)]
pub struct GitEntry {
    pub path: PathBuf,
    pub uid: u32,
    /// Device and inode: which repository the runner must never take for a planted one.
    pub id: (u64, u64),
}
