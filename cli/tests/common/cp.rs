//! The real control plane binary on loopback, with mutual TLS: a PKI from `nixfleet pki`, a
//! `.nixfleet.toml` in the scratch dir pointing at it, and the process stopped on drop.
//!
//! Its command line is the demo's ([`nixfleet_cli::launch`]), and it runs as the demo's does,
//! under a [`Supervisor`] (its own process group, stopped on drop).
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or NIXFLEET_CP_BIN).

use super::{nixfleet, Scratch};
use nixfleet_cli::launch::{free_ports, ControlPlaneLaunch};
use nixfleet_cli::supervise::Supervisor;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A running control plane; stopped on drop.
pub struct ControlPlane {
    procs: Supervisor,
    pub port: u16,
}

/// The control plane binary: NIXFLEET_CP_BIN, else target/debug.
pub fn cp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NIXFLEET_CP_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug/nixfleet-control-plane");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p nixfleet-engine` first",
        bin.display()
    );
    bin
}

/// Runs a command that must succeed.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// PKI, project settings, and a control plane requiring client certificates, on loopback.
pub fn start(s: &Scratch) -> ControlPlane {
    start_in(s, None)
}

/// `s/pki`: a fleet CA made with `nixfleet pki init`, a server certificate `cp` for
/// 127.0.0.1 and localhost, and a client certificate `operator`.
pub fn operator_pki(s: &Scratch) -> PathBuf {
    let pki = s.join("pki");
    ok(nixfleet(s, &s.path)
        .args(["pki", "init", "--dir"])
        .arg(&pki));
    ok(nixfleet(s, &s.path)
        .args([
            "pki",
            "issue",
            "--name",
            "cp",
            "--server",
            "--san",
            "127.0.0.1,localhost",
            "--dir",
        ])
        .arg(&pki));
    ok(nixfleet(s, &s.path)
        .args(["pki", "issue", "--name", "operator", "--dir"])
        .arg(&pki));
    pki
}

/// The same, inside network namespace `ns` (on its loopback) when given.
pub fn start_in(s: &Scratch, ns: Option<&str>) -> ControlPlane {
    start_full(s, ns, &[])
}

/// [`start`] with these `NIXFLEET_CP_*` variables set for the control plane (the supervisor
/// passes on none of the test's own).
pub fn start_with_env(s: &Scratch, env: &[(&str, &str)]) -> ControlPlane {
    start_full(s, None, env)
}

fn start_full(s: &Scratch, ns: Option<&str>, env: &[(&str, &str)]) -> ControlPlane {
    let pki = operator_pki(s);
    let [port] = free_ports().expect("free port");
    std::fs::write(
        s.join(".nixfleet.toml"),
        format!(
            "[control-plane]\nurl = \"https://127.0.0.1:{port}\"\nca-cert = \"pki/ca.pem\"\n\n[tls]\nclient-cert = \"pki/operator-cert.pem\"\nclient-key = \"pki/operator-key.pem\"\n"
        ),
    )
    .expect("write settings");
    let bin = cp_bin();
    let launch = ControlPlaneLaunch {
        bin: &bin,
        port,
        data_dir: s.join("cp-data"),
        pki: &pki,
    };
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin).args(launch.args());
            c
        }
        None => launch.command(),
    };
    cmd.envs(env.iter().copied());
    let procs = Supervisor::default();
    procs
        .spawn("the control plane", cmd, &s.join("cp.log"))
        .expect("start control plane");
    let cp = ControlPlane { procs, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = |port: u16| match ns {
        Some(ns) => Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success()),
        None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
    };
    while !listening(cp.port) {
        if let Err(e) = cp.procs.check_alive() {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(s.join("cp.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "control plane did not listen: {}",
            std::fs::read_to_string(s.join("cp.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cp
}
