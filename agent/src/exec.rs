//! Running external programs with a deadline.
//!
//! The agent drives Nix, systemd and health-check commands as child processes. None of them may hang
//! the agent, and none of them ever goes through a shell unless the operator asked for one (command
//! health checks). Each child runs in its own process group so that a timeout kills the whole tree.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How much of a child's stdout and stderr the agent keeps (bytes, the tail of the stream).
pub const OUTPUT_KEPT_BYTES: usize = 2048;

/// How long the agent waits for a killed child's pipes to close before giving up on its output.
const PIPE_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// What a finished child left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// The tail of its stdout, lossily decoded.
    pub stdout: String,
    /// The tail of its stderr, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// A short description of a failure: the status and the last line of stderr.
    pub fn failure_summary(&self) -> String {
        let last = self.stderr.trim().lines().last().unwrap_or("").trim();
        if last.is_empty() {
            format!("{}", self.status)
        } else {
            format!("{}: {last}", self.status)
        }
    }
}

/// Why a child could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The program ran past its deadline and was killed.
    #[error("{program} did not finish within {secs} s and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The deadline in seconds.
        secs: u64,
    },
    /// Waiting for the program failed.
    #[error("waiting for {program} failed: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs `cmd` to completion or until `timeout`, capturing the tails of stdout and stderr.
/// stdin is closed. On timeout the child's whole process group is killed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, ExecError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&child);
                // Reap it so it does not linger as a zombie; the result is irrelevant now.
                let _ = child.wait();
                return Err(ExecError::Timeout {
                    program,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                kill_group(&child);
                return Err(ExecError::Wait { program, source });
            }
        }
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Sends SIGKILL to the child's process group (it leads its own group, see [`run`]).
pub fn kill_group(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_child(child);
    // The group may already be gone; there is nothing useful to do about an error here.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 4 * OUTPUT_KEPT_BYTES {
                        buf.drain(..buf.len() - OUTPUT_KEPT_BYTES);
                    }
                }
            }
        }
        let start = buf.len().saturating_sub(OUTPUT_KEPT_BYTES);
        // The receiver may have given up waiting; then nobody wants the output.
        let _ = tx.send(String::from_utf8_lossy(&buf[start..]).into_owned());
    });
    rx
}

fn collect(rx: Option<mpsc::Receiver<String>>) -> String {
    rx.and_then(|rx| rx.recv_timeout(PIPE_DRAIN_WAIT).ok())
        .unwrap_or_default()
}
