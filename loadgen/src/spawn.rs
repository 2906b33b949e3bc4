//! Control planes the loadgen starts itself (`--spawn-cp`): one on the embedded log, or `--cps N`
//! sharing one PostgreSQL log (`--postgres-url`), each on its own loopback port.

use crate::pki;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The spawned control plane; stopped with SIGTERM when dropped.
pub struct Spawned {
    pub child: Child,
    pub log: PathBuf,
}

impl Spawned {
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Its resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU seconds all of them used so far (`None` if one cannot be read).
pub fn cpu_seconds(all: &[Spawned]) -> Option<f64> {
    all.iter().map(Spawned::cpu_seconds).sum()
}

/// Starts control plane number `index` (0-based) of `bin` on `port`. With `postgres_url` its
/// log is that database's (`--log-backend postgres`, `--cp-id cpINDEX`), and its data directory
/// `DATA_DIR-INDEX`; else the embedded log in `data_dir`.
pub fn spawn_cp(
    bin: &Path,
    data_dir: &Path,
    pki: &pki::Pki,
    port: u16,
    index: usize,
    postgres_url: Option<&str>,
) -> Result<Spawned> {
    let data_dir = match postgres_url {
        Some(_) => {
            let mut name = data_dir.as_os_str().to_owned();
            name.push(format!("-{index}"));
            PathBuf::from(name)
        }
        None => data_dir.to_path_buf(),
    };
    let (cert, key) = pki.write_server(&format!("loadgen-cp{index}"))?;
    let log = data_dir.with_extension("log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--client-ca")
        .arg(pki.ca_path());
    if let Some(url) = postgres_url {
        cmd.args(["--log-backend", "postgres", "--log-postgres-url", url])
            .args(["--cp-id", &format!("cp{index}")]);
    }
    let child = cmd
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Spawned { child, log })
}
