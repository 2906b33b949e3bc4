//! Command lines of the fleet's own binaries on loopback, with a PKI made by `nixfleet pki`
//! (`ca.pem`, `<name>-cert.pem`, `<name>-key.pem`): a control plane requiring client
//! certificates, and an agent polling it every second.
//!
//! `nixfleet demo` starts its fleet with these; the CLI's integration tests start theirs with
//! the same, so the two cannot drift.

use crate::error::{CliError, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA certificate in a PKI directory (`nixfleet pki`'s `CA_CERT`; a unit test keeps them
/// equal, so this module needs no command module).
const CA_CERT: &str = "ca.pem";

/// `nixfleet-control-plane` on `127.0.0.1:port` with its certificate `cp` from `pki`.
pub struct ControlPlaneLaunch<'a> {
    /// The `nixfleet-control-plane` executable.
    pub bin: &'a Path,
    /// Loopback port to listen on.
    pub port: u16,
    /// Its data directory (the event log).
    pub data_dir: PathBuf,
    /// The PKI directory.
    pub pki: &'a Path,
}

impl ControlPlaneLaunch<'_> {
    /// The arguments after the executable.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", self.port).into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
        ];
        for (flag, file) in [
            ("--tls-cert", "cp-cert.pem"),
            ("--tls-key", "cp-key.pem"),
            ("--client-ca", CA_CERT),
        ] {
            a.push(flag.into());
            a.push(self.pki.join(file).into());
        }
        a
    }

    /// The command.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(self.args());
        cmd
    }
}

/// `nixfleet-agent` of `machine_id` against a control plane on `127.0.0.1:cp_port`, with
/// switch-mode direct and poll, retry and health intervals of one second.
pub struct AgentLaunch<'a> {
    /// The `nixfleet-agent` executable.
    pub bin: &'a Path,
    /// The control plane's loopback port.
    pub cp_port: u16,
    /// The machine id, also the CN of its certificate in `pki`.
    pub machine_id: &'a str,
    /// Its tags, comma-separated.
    pub tags: &'a str,
    /// The PKI directory.
    pub pki: &'a Path,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--profile`: the system profile it sets.
    pub profile: PathBuf,
    /// `--current-system`: the link to the running system.
    pub current_system: PathBuf,
    /// `--health-config`.
    pub health_config: PathBuf,
    /// `--dry-run`: never switch.
    pub dry_run: bool,
}

impl AgentLaunch<'_> {
    /// The command.
    pub fn command(&self) -> Command {
        let id = self.machine_id;
        let mut cmd = Command::new(self.bin);
        cmd.arg("--control-plane-url")
            .arg(format!("https://127.0.0.1:{}", self.cp_port))
            .args(["--machine-id", id, "--tags", self.tags])
            .arg("--ca-cert")
            .arg(self.pki.join(CA_CERT))
            .arg("--client-cert")
            .arg(self.pki.join(format!("{id}-cert.pem")))
            .arg("--client-key")
            .arg(self.pki.join(format!("{id}-key.pem")))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--profile")
            .arg(&self.profile)
            .arg("--current-system")
            .arg(&self.current_system)
            .arg("--health-config")
            .arg(&self.health_config)
            .args(if self.dry_run {
                &["--dry-run"][..]
            } else {
                &[][..]
            })
            .args([
                "--switch-mode",
                "direct",
                "--poll-interval",
                "1",
                "--retry-interval",
                "1",
                "--health-interval",
                "1",
            ]);
        cmd
    }
}

/// `N` distinct free ports on 127.0.0.1 (held at once, so they differ; all closed again before
/// this returns, for the children to take).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in ports.iter_mut() {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| CliError::failed(format!("cannot find a free port on 127.0.0.1: {e}")))?;
        *port = l.0;
        held.push(l.1);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ca_certificate_is_where_nixfleet_pki_puts_it() {
        assert_eq!(super::CA_CERT, crate::commands::pki::CA_CERT);
    }
}
