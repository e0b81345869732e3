//! `audit` and `doctor` (DESIGN.md section 7). Placeholder until the audit work lands.
#![forbid(unsafe_code)]

use anyhow::Result;

use crate::context::Context;
use crate::error::not_implemented;

pub fn audit(_ctx: &Context, _name: &str, _json: bool) -> Result<u8> {
    Err(not_implemented("audit"))
}

pub fn doctor(_ctx: &Context, _json: bool) -> Result<u8> {
    Err(not_implemented("doctor"))
}
