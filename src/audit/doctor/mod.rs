//! `doctor`: the installation and the host, checked for what weakens agentuser's isolation.
//! Every finding says how to fix it.
//!
//! Any caller but an agent may run it (app.rs refuses agents before dispatch): it reports
//! only what a local user can learn anyway (sysctls, mount options, modes of homes listed in
//! /etc/passwd, modes of agentuser's own files, and which agent accounts cron/at would
//! accept), never a file's content or a secret.
#![forbid(unsafe_code)]

mod accounts;
mod install;
mod kernel;
mod state;

use anyhow::Result;
use serde::Serialize;

use super::findings::{self, Finding, Summary};
use crate::context::Context;

#[derive(Serialize)]
struct DoctorReport {
    summary: Summary,
    findings: Vec<Finding>,
}

pub fn doctor(ctx: &Context, json: bool) -> Result<u8> {
    let mut findings = Vec::new();
    install::check(ctx, &mut findings);
    kernel::check(&mut findings);
    accounts::check(ctx, &mut findings);
    state::check(ctx, &mut findings);
    findings::sort(&mut findings);
    let summary = Summary::of(&findings);
    let code = u8::from(summary.high > 0);
    if json {
        let out = DoctorReport { summary, findings };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", findings::table(&findings, false));
        println!(
            "\n{} high, {} medium, {} info",
            summary.high, summary.medium, summary.info
        );
    }
    Ok(code)
}
