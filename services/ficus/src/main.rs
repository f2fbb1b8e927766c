//! The `ficus` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ficus::cli::Cli::parse().run()
}
