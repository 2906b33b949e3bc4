//! A real `nixfleet-agent` against the control plane of [`super::cp`]: switch-mode direct, its
//! own profile and current-system link under `<scratch>/<host>`, a health check that passes when
//! the running system has `healthy`; stopped on drop.
//!
//! Its command line is the demo's ([`nixfleet_cli::launch`]), and it runs as the demo's do,
//! under a [`Supervisor`] (its own process group, stopped on drop).
//!
//! Needs the agent binary next to the control plane's: `cargo build -p nixfleet-agent`.

use super::cp::{cp_bin, ok, ControlPlane};
use super::{nixfleet, Scratch};
use nixfleet_cli::launch::AgentLaunch;
use nixfleet_cli::supervise::Supervisor;
use std::path::PathBuf;

/// A running agent; stopped on drop.
pub struct Agent(Supervisor);

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
    let bin = agent_bin();
    let mut cmd = AgentLaunch {
        bin: &bin,
        cp_port: cp.port,
        machine_id: host,
        tags: "web",
        pki: &pki,
        state_dir: dir.join("state"),
        profile: dir.join("profiles/system"),
        current_system: dir.join("current-system"),
        health_config: dir.join("health.json"),
        dry_run: false,
    }
    .command();
    cmd.env("NIX_CONFIG", super::sshd::NIX_CONFIG);
    let agent = Supervisor::default();
    agent
        .spawn(&format!("the agent of {host}"), cmd, &dir.join("agent.log"))
        .expect("start agent");
    Agent(agent)
}
