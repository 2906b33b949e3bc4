//! The CLI's single error type and its mapping to exit codes.
//!
//! Scripts branch on the exit code, so every failure is classified once, here, and `main`
//! turns it into a code and one line on stderr. Messages say what to do, not only what broke.

use std::process::ExitCode;

/// Exit codes that scripts can rely on. Documented in docs/cli.md.
pub mod code {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The operation ran and failed (a host failed to deploy, a rollout paused or failed, a remote command failed).
    pub const FAILED: u8 = 1;
    /// The command line, a setting or a local file is wrong; nothing was attempted.
    pub const USAGE: u8 = 2;
    /// The control plane could not be reached (connection, TLS, timeout).
    pub const UNREACHABLE: u8 = 3;
    /// The control plane refused the request (4xx).
    pub const REJECTED: u8 = 4;
    /// The control plane failed (5xx) or answered with something unreadable.
    pub const SERVER: u8 = 5;
}

/// Everything that can end a command early.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: flags, settings, files. Nothing was attempted.
    #[error("{0}")]
    Usage(String),
    /// The operation was attempted and failed.
    #[error("{0}")]
    Failed(String),
    /// The control plane could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The control plane answered 4xx.
    #[error("{message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's message plus what to do.
        message: String,
    },
    /// The control plane answered 5xx or garbage.
    #[error("{0}")]
    Server(String),
    /// Writing our own output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// Shorthand for [`CliError::Usage`].
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }
    /// Shorthand for [`CliError::Failed`].
    pub fn failed(msg: impl Into<String>) -> Self {
        CliError::Failed(msg.into())
    }

    /// The process exit code, or `None` when the error is a closed stdout (`nixfleet … | head`),
    /// which is success.
    pub fn exit_code(&self) -> Option<u8> {
        Some(match self {
            CliError::Usage(_) => code::USAGE,
            CliError::Failed(_) => code::FAILED,
            CliError::Unreachable(_) => code::UNREACHABLE,
            CliError::Rejected { .. } => code::REJECTED,
            CliError::Server(_) => code::SERVER,
            CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return None,
            CliError::Output(_) => code::FAILED,
        })
    }
}

/// Turns the result of a command into the process exit, printing at most one line.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(code::OK),
        Err(err) => match err.exit_code() {
            None => ExitCode::from(code::OK),
            Some(c) => {
                let text = err.to_string();
                // One line: collapse whatever a subprocess or server put in the message.
                let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
                eprintln!("error: {line}");
                ExitCode::from(c)
            }
        },
    }
}

/// Result alias used by every command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
