//! The `ficus-traffic` binary: the traffic service alone in a process.

use std::process::ExitCode;

fn main() -> ExitCode {
    ficus_kit::main("traffic", ficus_traffic::start)
}
