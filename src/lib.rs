//! agentuser: give every AI agent its own Unix account.
//!
//! The crate is a library so that integration tests and man-page generation can reach the
//! CLI definition and the configuration schema; the only binary is `src/main.rs`.
//!
//! Module map (see docs/design.md section 11):
//! - [`cli`]: clap definitions, the single source of `--help` and the man pages.
//! - [`app`]: start-up discipline of the setuid helper and command dispatch.
//! - [`config`], [`policy`]: admin configuration, caller identity, authorization.
//! - [`registry`]: agent records, locking, atomic writes, uid tombstones.
//! - [`account`], [`provision`]: Unix accounts and the create/delete life cycle.
//! - [`share`], [`creds`], [`runner`], [`audit`]: the features built on those.
//! - [`network`]: the allowlist and the policy point of the `allowlist` network mode.
//! - [`eventlog`]: syslog records of every state change.
//! - [`sys`]: the only modules allowed to use `unsafe` (libc-level operations).
#![deny(unsafe_code)]

pub mod account;
pub mod app;
pub mod audit;
pub mod broker;
pub mod cleanup;
pub mod cli;
pub mod completions;
pub mod config;
pub mod context;
pub mod creds;
pub mod error;
pub mod eventlog;
pub mod git;
pub mod home;
pub mod leftovers;
pub mod names;
pub mod network;
pub mod policy;
pub mod provision;
pub mod record;
pub mod recover;
pub mod registry;
pub mod runner;
pub mod settings;
pub mod share;
pub mod show;
pub mod sys;
pub mod view;
