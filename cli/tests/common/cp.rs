//! The real control plane binary on loopback, with mutual TLS: a PKI from `nixfleet pki`, a
//! `.nixfleet.toml` in the scratch dir pointing at it, and the process stopped on drop.
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or NIXFLEET_CP_BIN).

use super::{nixfleet, Scratch};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running control plane; killed on drop.
pub struct ControlPlane {
    pub child: Child,
    pub port: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let pki = operator_pki(s);
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(
        s.join(".nixfleet.toml"),
        format!(
            "[control-plane]\nurl = \"https://127.0.0.1:{port}\"\nca-cert = \"pki/ca.pem\"\n\n[tls]\nclient-cert = \"pki/operator-cert.pem\"\nclient-key = \"pki/operator-key.pem\"\n"
        ),
    )
    .expect("write settings");
    let log = std::fs::File::create(s.join("cp.log")).expect("log");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(cp_bin());
            c
        }
        None => Command::new(cp_bin()),
    };
    let child = cmd
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(s.join("cp-data"))
        .arg("--tls-cert")
        .arg(pki.join("cp-cert.pem"))
        .arg("--tls-key")
        .arg(pki.join("cp-key.pem"))
        .arg("--client-ca")
        .arg(pki.join("ca.pem"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start control plane");
    let mut cp = ControlPlane { child, port };
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
        if let Ok(Some(status)) = cp.child.try_wait() {
            panic!(
                "control plane exited with {status}: {}",
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
