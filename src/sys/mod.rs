//! The few modules that operate at the libc level: the only place `unsafe` is allowed.
//! Everything outside `sys` is safe Rust (`lib.rs` denies `unsafe_code` and every other
//! module forbids it).
//!
//! Each `unsafe` block holds one unsafe operation and carries a `SAFETY:` comment saying why
//! it holds (Cargo.toml's `[lints]` enforce both); keep these modules small.
#![allow(unsafe_code)]

pub mod agentfs;
pub mod fanotify;
pub mod ids;
pub mod landlock;
pub mod memory;
pub mod mount;
pub mod net;
pub mod ns;
pub mod pam;
pub mod process;
pub mod signals;
pub mod socket;
pub mod spawn;
pub mod syslog;
pub mod xattr;
