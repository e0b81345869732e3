//! The few modules that operate at the libc level. Everything outside `sys` (and the
//! runner's own reviewed low-level files) is safe Rust.
//!
//! Each `unsafe` block carries a `SAFETY:` comment; keep these modules small.
#![allow(unsafe_code)]

pub mod agentfs;
pub mod ids;
pub mod landlock;
pub mod mount;
pub mod net;
pub mod process;
pub mod socket;
pub mod spawn;
pub mod syslog;
pub mod xattr;
