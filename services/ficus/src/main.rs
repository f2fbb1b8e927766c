//! The `ficus` command.

use std::process::ExitCode;

use clap::Parser;

/// A proxy and its control plane allocate per request; mimalloc keeps that cheap under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ficus::cli::Cli::parse().run()
}
