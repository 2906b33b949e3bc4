//! Running local tools (`nix`, `nix-copy-closure`, `ssh`) and reading their answers.
//!
//! Commands are spawned with an argument vector, never through a shell. Failures keep the
//! tail of stderr, which is where Nix says what went wrong. Both `nix` and `ssh` build on this
//! module; neither imports the other.

use std::process::{Command, Stdio};

/// How much of a failing command's stderr is kept.
const STDERR_TAIL_BYTES: usize = 2048;

/// Quotes a word for a POSIX shell.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A failed local command.
#[derive(Debug)]
pub struct CommandFailed {
    /// What we tried, in words.
    pub what: String,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// The end of its stderr.
    pub stderr: String,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = last_line(&self.stderr);
        match self.code {
            Some(c) => write!(f, "{} failed (exit {c})", self.what)?,
            None => write!(f, "{} was killed", self.what)?,
        }
        if !last.is_empty() {
            write!(f, ": {last}")?;
        }
        Ok(())
    }
}

/// Runs `cmd`, returning stdout on success. `what` names the step for error messages.
pub fn run(cmd: &mut Command, what: &str, verbose: u8) -> Result<String, CommandFailed> {
    let cmdline = describe(cmd);
    if verbose >= 1 {
        eprintln!("+ {cmdline}");
    }
    let started = std::time::Instant::now();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        let err = format!("cannot start {}: {e}", cmd.get_program().to_string_lossy());
        crate::oplog::command(
            &cmdline,
            None,
            b"",
            err.as_bytes(),
            started.elapsed().as_millis(),
        );
        CommandFailed {
            what: what.to_string(),
            code: None,
            stderr: err,
        }
    })?;
    crate::oplog::command(
        &cmdline,
        out.status.code(),
        &out.stdout,
        &out.stderr,
        started.elapsed().as_millis(),
    );
    if out.status.success() {
        if verbose >= 2 && !out.stderr.is_empty() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let start = err.len().saturating_sub(STDERR_TAIL_BYTES);
        let start = (start..err.len())
            .find(|i| err.is_char_boundary(*i))
            .unwrap_or(err.len());
        Err(CommandFailed {
            what: what.to_string(),
            code: out.status.code(),
            stderr: err[start..].to_string(),
        })
    }
}

/// The last non-empty line of some output, trimmed.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// A printable form of a command line, for `-v`.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}
