//! The `ficus-analysis` binary: the analysis service alone in a process.

use std::process::ExitCode;

fn main() -> ExitCode {
    ficus_kit::main("analysis", ficus_analysis::start)
}
