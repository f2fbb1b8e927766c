//! The `ficus-sessions` binary: the sessions service alone in a process.

use std::process::ExitCode;

fn main() -> ExitCode {
    ficus_kit::main("sessions", ficus_sessions::start)
}
