//! The `ficus-traffic` binary: the traffic service alone in a process.

use std::process::ExitCode;

/// A proxy and its control plane allocate per request; mimalloc keeps that cheap under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ficus_kit::main("traffic", ficus_traffic::start)
}
