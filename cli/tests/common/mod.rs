//! Shared helpers of the integration tests: a scratch directory and a `nixfleet` command
//! with a clean environment (no NIXFLEET_* from the caller, HOME inside the scratch directory).
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under /tmp removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// A fresh directory named after the test.
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from(format!(
            "/tmp/nfcli-t-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("home")).expect("create scratch dir");
        Scratch { path }
    }
    /// A path inside.
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
    /// The HOME the CLI sees.
    pub fn home(&self) -> PathBuf {
        self.path.join("home")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // NFCLI_KEEP_SCRATCH=1 keeps a failed test's files (logs, stores) for a look.
        if std::thread::panicking() && std::env::var_os("NFCLI_KEEP_SCRATCH").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nixfleet")
}

/// `nixfleet` with a clean environment, run from `cwd`.
pub fn nixfleet(scratch: &Scratch, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NIXFLEET_")
            || k == "XDG_CONFIG_HOME"
            || k == "NIX_SSHOPTS"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", scratch.home()).current_dir(cwd);
    cmd
}

/// [`nixfleet`] run from the scratch directory inside network namespace `ns` (`ip netns exec`).
pub fn nixfleet_in_ns(scratch: &Scratch, ns: &str) -> Command {
    let inner = nixfleet(scratch, &scratch.path);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(inner.get_program())
        .current_dir(&scratch.path);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// Runs and captures.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run nixfleet")
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that `out` exited with `code`, showing its stdout and stderr otherwise.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// `nixfleet <args>` in the scratch dir.
pub fn nf(s: &Scratch, args: &[&str]) -> Output {
    run(nixfleet(s, &s.path).args(args))
}

/// The same, which must succeed; its stdout.
pub fn nf_ok(s: &Scratch, args: &[&str]) -> String {
    let out = nf(s, args);
    assert!(
        out.status.success(),
        "nixfleet {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// `nixfleet --json <args>`, which must succeed, parsed.
pub fn json(s: &Scratch, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&nf_ok(s, &all)).expect("--json prints JSON")
}

pub mod agent;
pub mod cp;
pub mod sshd;
