//! `nixfleet-agent`: parse and check the flags, set up, run the loop.
//!
//! Bad input ends the process with one line on stderr and exit code 2; a setup failure (unreadable
//! certificate, unusable state directory, busy metrics port) with one line and exit code 1. A signal
//! ends it with exit code 0.

use clap::Parser;
use nixfleet_agent::config::{Args, Config};
use nixfleet_agent::{run, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                // Help and version go to stdout as usual; a broken pipe there is not our problem.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let rendered = e.to_string();
            let line = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            say(line);
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            say(&e.to_string());
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(cfg.log_format);
    let rt = match run::build(cfg) {
        Ok(rt) => rt,
        Err(e) => {
            // One plain line, not a log record as well: the journal would show the failure twice.
            say(&e.to_string());
            return ExitCode::from(1);
        }
    };
    run::run(rt);
    ExitCode::SUCCESS
}

/// Prints one line on stderr; a broken stderr must not turn a clean refusal into a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "nixfleet-agent: {line}");
}
