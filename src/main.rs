//! `rc-audit-hec`: parse arguments and hand over to the library (see `lib.rs` for the design).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    rc_audit_hec::cli::main_with(rc_audit_hec::cli::Cli::parse())
}
