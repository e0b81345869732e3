//! Links the agentuser binary with packed relative relocations (DT_RELR) where the C
//! library can load them.
//!
//! Every run of agentuser is a fresh exec of a position-independent executable with about
//! 11,000 relative relocations (the vtables and static tables of its dependencies). In the
//! usual RELA form the dynamic loader reads 24 bytes per relocation (270 KiB) before main;
//! packed, the table is under 3 KiB. That saved about 0.3 ms of CPU per `exec` here, a
//! quarter of what agentuser's start-up costs over runuser's (bench/results/exec.md).
//!
//! glibc loads DT_RELR from 2.36 on; the linker then also records a dependency on the
//! version `GLIBC_ABI_DT_RELR`, so an older C library refuses the binary instead of running
//! it unrelocated. It is only asked for when the C library it is built against has that
//! version (a native build, as install.sh does): elsewhere the binary is linked as before.
#![forbid(unsafe_code)]

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    if linux_gnu && native && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build host's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least
/// MAJOR.MINOR. False when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(found_major), Some(found_minor)) => (found_major, found_minor) >= (major, minor),
        _ => false,
    }
}
