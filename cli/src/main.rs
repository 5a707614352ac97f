//! `ward`: Ward's command-line tool.
#![forbid(unsafe_code)]

use clap::Parser;

/// Ward: end-to-end encrypted messaging for clinicians.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "ward {}: the servers and client commands arrive with issues 3-5.",
        env!("CARGO_PKG_VERSION")
    );
}
