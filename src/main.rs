//! The `pegabridge` binary: parse the command line, start logging, run, map errors to exit codes.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pegabridge::cli::Cli::parse();
    pegabridge::cli::init_logging(cli.verbose);
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
