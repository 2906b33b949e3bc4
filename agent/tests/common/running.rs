//! The `nixfleet-agent` binary as a child process: its command line, its collected logs, signals.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent binary of this package.
pub const AGENT: &str = env!("CARGO_BIN_EXE_nixfleet-agent");

/// A loopback port nothing listens on (free when asked).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits up to `within` for `cond`, checking every 50 ms.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent as machine `web-01` of the control plane at `url`, switching directly (as a child),
/// with its state directory, current-system link and health check file at these paths.
pub fn agent_command(
    url: &str,
    state_dir: &Path,
    current_system: &Path,
    health_config: &Path,
) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.args(["--control-plane-url", url, "--machine-id", "web-01"])
        .args(["--switch-mode", "direct"])
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--current-system")
        .arg(current_system)
        .arg("--health-config")
        .arg(health_config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

/// A running agent whose stderr (its logs) is collected line by line; killed when dropped.
pub struct RunningAgent {
    pub child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl RunningAgent {
    /// Spawns `cmd` with stderr piped into the collected logs; `dir`, if any, lives as long as
    /// the agent.
    pub fn spawn(mut cmd: Command, dir: Option<tempfile::TempDir>) -> RunningAgent {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn agent");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        RunningAgent {
            child,
            logs,
            _dir: dir,
        }
    }

    /// The first log line so far that contains `needle`.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        let logs = self.logs.lock().expect("lock");
        logs.iter().find(|l| l.contains(needle)).cloned()
    }

    /// How many log lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let logs = self.logs.lock().expect("lock");
        logs.iter().filter(|l| l.contains(needle)).count()
    }

    /// Whether a log line so far contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.log_line(needle).is_some()
    }

    /// All log lines so far.
    pub fn dump(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Waits up to `within` for a log line that contains `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.log_line(needle) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; logs:\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM, waits for the agent to exit (it must say so in its log) and returns its exit code.
    pub fn terminate(mut self) -> i32 {
        signal(&self.child, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.wait_for_log(
                    "Received SIGTERM, exiting gracefully",
                    Duration::from_secs(2),
                );
                return status.code().expect("exit code");
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
