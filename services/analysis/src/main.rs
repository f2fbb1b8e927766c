//! The `ficus-analysis` binary: the analysis service alone in a process.

use std::process::ExitCode;

/// A proxy and its control plane allocate per request; mimalloc keeps that cheap under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ficus_kit::main("analysis", ficus_analysis::start)
}
