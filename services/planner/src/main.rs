//! The `ficus-planner` binary: the planner service alone in a process.

use std::process::ExitCode;

fn main() -> ExitCode {
    ficus_kit::main("planner", ficus_planner::start)
}
