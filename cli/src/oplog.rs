//! The operation log: every command `deploy`, `release create` and `rollback` run, with its
//! exit code and output, appended as JSON lines to `~/.local/state/nixfleet/logs/<time>_<op>.jsonl`.
//!
//! The terminal shows one line per failure; the oplog keeps the whole story for a post-mortem
//! ("what exactly did the CLI run on web-03 at 14:02?"), whatever the verbosity.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much of each stream is kept per command.
const STREAM_BYTES: usize = 16 * 1024;

static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// `$XDG_STATE_HOME/nixfleet/logs`, else `~/.local/state/nixfleet/logs`.
fn dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(base.join("nixfleet").join("logs"))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Starts the log of operation `op`; returns its path. Failing to open it only disables it.
pub fn start(op: &str) -> Option<PathBuf> {
    let dir = dir()?;
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{}_{op}_{}.jsonl", now_ms(), std::process::id()));
    // Commands can carry secrets (a [cache.hook] push-cmd with a token): owner-only.
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    LOG.set(Mutex::new(file)).ok()?;
    record(&serde_json::json!({ "op": op, "args": redacted_args() }));
    Some(path)
}

/// The command line with the value of `--api-key` replaced.
fn redacted_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in std::env::args() {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
        } else if arg == "--api-key" {
            hide_next = true;
            out.push(arg);
        } else if arg.starts_with("--api-key=") {
            out.push("--api-key=<redacted>".to_string());
        } else {
            out.push(arg);
        }
    }
    out
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(STREAM_BYTES);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Appends one command's outcome (no-op when no log was started).
pub fn command(cmdline: &str, code: Option<i32>, stdout: &[u8], stderr: &[u8], elapsed_ms: u128) {
    record(&serde_json::json!({
        "cmd": cmdline, "exit": code, "elapsed_ms": elapsed_ms as u64,
        "stdout": tail(stdout), "stderr": tail(stderr),
    }));
}

fn record(value: &serde_json::Value) {
    let Some(log) = LOG.get() else { return };
    let mut line = serde_json::json!({ "at_ms": now_ms() as u64 });
    if let (Some(obj), Some(extra)) = (line.as_object_mut(), value.as_object()) {
        obj.extend(extra.clone());
    }
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
}
