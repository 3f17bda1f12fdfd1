//! The `pegabridge` binary: parse the command line, start logging, run, map errors to exit codes.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the service allocates and frees across threads
/// all the time (requests, the SQLite writer, the delivery worker), where it took about a
/// quarter off the CPU per delivered event. The `system-allocator` feature leaves it out, so
/// that a heap profiler that follows `malloc` (heaptrack) sees every allocation.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = pegabridge::cli::Cli::parse();
    pegabridge::cli::init_logging(&cli);
    match pegabridge::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
