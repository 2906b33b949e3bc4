//! Entry point of `nixfleet`: parse the command line, run it, turn the outcome into an exit code.

// Doc comments of clap arguments are the CLI's help text, written for a terminal: `[default: …]`
// and `<host>` there are not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod client;
mod commands;
mod error;
mod nix;
mod oplog;
mod output;
mod process;
mod replay;
mod settings;
mod ssh;

use clap::Parser;
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
