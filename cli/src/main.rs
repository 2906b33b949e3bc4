//! Entry point of `nixfleet`: parse the command line, run it, turn the outcome into an exit code.
//! The modules are the library's: declare new ones in `lib.rs`, not here.

use clap::Parser;
use nixfleet_cli::{cli, error};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors print clap's message with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::code::USAGE
            } else {
                error::code::OK
            });
        }
    };
    error::finish(cli::run(cli))
}
