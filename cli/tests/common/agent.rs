//! A real `nixfleet-agent` against the control plane of [`super::cp`]: switch-mode direct, its
//! own profile and current-system link under `<scratch>/<host>`, a health check that passes when
//! the running system has `healthy`; stopped on drop.
//!
//! Needs the agent binary next to the control plane's: `cargo build -p nixfleet-agent`.

use super::cp::{cp_bin, ok, ControlPlane};
use super::{nixfleet, Scratch};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running agent; killed on drop.
pub struct Agent {
    pub child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent binary, next to the control plane binary.
pub fn agent_bin() -> PathBuf {
    let bin = cp_bin().with_file_name("nixfleet-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p nixfleet-agent` first",
        bin.display()
    );
    bin
}

/// Prepares `host`'s agent and starts it: [`prepare_agent`] then [`spawn_agent`].
pub fn start_agent(s: &Scratch, cp: &ControlPlane, host: &str) -> Agent {
    prepare_agent(s, host);
    spawn_agent(s, cp, host)
}

/// `host`'s client certificate in `<scratch>/pki`, and `<scratch>/<host>`: an empty `profiles`,
/// the machine healthy on a system the control plane does not know (`initial`, linked from
/// `current-system`), and `health.json`. Returns `<scratch>/<host>`.
pub fn prepare_agent(s: &Scratch, host: &str) -> PathBuf {
    let pki = s.join("pki");
    ok(nixfleet(s, &s.path)
        .args(["pki", "issue", "--name", host, "--dir"])
        .arg(&pki));
    let dir = s.join(host);
    std::fs::create_dir_all(dir.join("profiles")).expect("mkdir");
    std::fs::create_dir_all(dir.join("initial")).expect("mkdir");
    std::fs::write(dir.join("initial/healthy"), "").expect("write");
    std::os::unix::fs::symlink(dir.join("initial"), dir.join("current-system")).expect("symlink");
    std::fs::write(
        dir.join("health.json"),
        format!(
            r#"{{"command":[{{"name":"app","command":"test -e {}/current-system/healthy"}}]}}"#,
            dir.display()
        ),
    )
    .expect("health config");
    dir
}

/// Starts the agent of a `host` made ready by [`prepare_agent`], logging to
/// `<scratch>/<host>/agent.log`.
pub fn spawn_agent(s: &Scratch, cp: &ControlPlane, host: &str) -> Agent {
    let pki = s.join("pki");
    let dir = s.join(host);
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let child = Command::new(agent_bin())
        .args([
            "--control-plane-url",
            &format!("https://127.0.0.1:{}", cp.port),
            "--machine-id",
            host,
        ])
        .arg("--ca-cert")
        .arg(pki.join("ca.pem"))
        .arg("--client-cert")
        .arg(pki.join(format!("{host}-cert.pem")))
        .arg("--client-key")
        .arg(pki.join(format!("{host}-key.pem")))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--profile")
        .arg(dir.join("profiles/system"))
        .arg("--current-system")
        .arg(dir.join("current-system"))
        .arg("--health-config")
        .arg(dir.join("health.json"))
        .args([
            "--switch-mode",
            "direct",
            "--poll-interval",
            "1",
            "--retry-interval",
            "1",
            "--health-interval",
            "1",
            "--tags",
            "web",
        ])
        .env("NIX_CONFIG", super::sshd::NIX_CONFIG)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start agent");
    Agent { child }
}
