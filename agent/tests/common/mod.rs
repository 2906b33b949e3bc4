//! Shared test fixtures: a real Nix store, fake system closures, and a "machine" in a temp dir.
//!
//! A fake system is a `builtins.derivation` (builder /bin/sh, no nixpkgs) whose
//! `bin/switch-to-configuration` flips a symlink (the machine's `--current-system`, baked into the
//! closure) and appends a line to a marker file. A `healthy` file in the closure is what the
//! machine's command health check looks for, so health depends on the generation that runs.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod running;
pub mod standin;

use nixfleet_agent::cycle::{Agent, Settings};
use nixfleet_agent::health::HealthRunner;
use nixfleet_agent::inflight::Journal;
use nixfleet_agent::quarantine::Quarantine;
use nixfleet_agent::switch::{SwitchMode, Switcher};
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::DesiredGeneration;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The control plane's answer: apply `path` (with `activation`, when given), not quarantined.
pub fn desired(path: &str, activation: Option<&str>) -> DesiredGeneration {
    DesiredGeneration {
        hash: path.to_owned(),
        cache_url: None,
        poll_hint: Some(5),
        quarantined: false,
        decided_seq: None,
        activation: activation.map(str::to_owned),
    }
}

/// Public key trusted by every Nix call of the test process, and the file of its secret key.
pub struct SigningKey {
    pub public: String,
    pub secret_file: PathBuf,
}

static NIX: OnceLock<SigningKey> = OnceLock::new();

/// Sets up Nix for the whole test process once: no substituters (no network), no negative narinfo
/// cache, `nix-command`, and one trusted signing key. Every test calls this before any Nix command.
pub fn nix() -> &'static SigningKey {
    NIX.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("nixfleet-agent-key").tempdir().expect("tempdir").keep();
        let secret_file = dir.join("key.sec");
        let public_file = dir.join("key.pub");
        run_ok(Command::new("nix-store").args(["--generate-binary-cache-key", "nixfleet-agent-test-1"]).arg(&secret_file).arg(&public_file));
        let public = std::fs::read_to_string(&public_file).expect("public key").trim().to_owned();
        // Set before any test runs a Nix command: every test calls nix() first and OnceLock blocks
        // the others until this returns.
        std::env::set_var(
            "NIX_CONFIG",
            format!(
                "substituters =\nnarinfo-cache-negative-ttl = 0\nexperimental-features = nix-command\nrequire-sigs = true\ntrusted-public-keys = {public}\n"
            ),
        );
        SigningKey { public, secret_file }
    })
}

/// Runs a command and returns its stdout, panicking with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const SYSTEM_NIX: &str = r#"
{ name, link, marker, healthy, switchScript ? "", bootParts ? "" }:
builtins.derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  inherit link marker switchScript bootParts;
  healthyFlag = if healthy then "1" else "";
  args = [ "-c" ''
    mkdir -p $out/bin
    if [ -n "$switchScript" ]; then
      printf '%s\n' "$switchScript" > $out/bin/switch-to-configuration
    else
      printf '#!/bin/sh\nln -sfn %s %s\necho "$1 %s" >> %s\n' "$out" "$link" "$out" "$marker" > $out/bin/switch-to-configuration
    fi
    chmod +x $out/bin/switch-to-configuration
    echo 26.05-nixfleet-test > $out/nixos-version
    ln -s /bin/sh $out/init
    if [ -n "$healthyFlag" ]; then touch $out/healthy; fi
    if [ -n "$bootParts" ]; then
      for part in kernel initrd systemd; do ln -s "$bootParts/$part" $out/$part; done
    fi
  '' ];
}
"#;

const NOT_A_SYSTEM_NIX: &str = r#"
{ name }:
builtins.derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out/share; echo just-data > $out/share/data" ];
}
"#;

/// One machine: its current-system link, profile, marker, health config and state dir in a temp dir.
pub struct Machine {
    pub dir: tempfile::TempDir,
    pub current: PathBuf,
    pub profile: PathBuf,
    pub marker: PathBuf,
    pub health_config: PathBuf,
    pub state_dir: PathBuf,
}

impl Machine {
    /// A machine whose health check passes when the running generation holds a `healthy` file.
    pub fn new() -> Machine {
        nix();
        let dir = tempfile::Builder::new()
            .prefix("nixfleet-agent-machine")
            .tempdir()
            .expect("tempdir");
        let current = dir.path().join("current-system");
        let health_config = dir.path().join("health-checks.json");
        std::fs::write(
            &health_config,
            format!(
                r#"{{"command":[{{"name":"app","command":"test -e {}/healthy","timeout":5}}]}}"#,
                current.display()
            ),
        )
        .expect("write health config");
        let m = Machine {
            current,
            profile: dir.path().join("profiles/system"),
            marker: dir.path().join("switches.log"),
            health_config,
            state_dir: dir.path().join("state"),
            dir,
        };
        std::fs::create_dir_all(m.profile.parent().expect("parent")).expect("profiles dir");
        std::fs::create_dir_all(&m.state_dir).expect("state dir");
        m
    }

    fn nix_file(&self, name: &str, text: &str) -> PathBuf {
        let f = self.dir.path().join(name);
        std::fs::write(&f, text).expect("write nix file");
        f
    }

    /// Builds a fake system closure for this machine.
    pub fn build(&self, name: &str, healthy: bool) -> StorePath {
        self.build_with_switch(name, healthy, "")
    }

    /// Builds a fake system whose switch-to-configuration is `script` (empty: the flipping one).
    pub fn build_with_switch(&self, name: &str, healthy: bool, script: &str) -> StorePath {
        self.build_full(name, healthy, script, None)
    }

    /// Builds a fake system whose `kernel`, `initrd` and `systemd` link to those in `boot_parts`.
    pub fn build_full(
        &self,
        name: &str,
        healthy: bool,
        script: &str,
        boot_parts: Option<&Path>,
    ) -> StorePath {
        let f = self.nix_file("system.nix", SYSTEM_NIX);
        let out = run_ok(
            Command::new("nix-build")
                .arg(&f)
                .arg("--no-out-link")
                .args(["--argstr", "name", name])
                .args(["--argstr", "link"])
                .arg(&self.current)
                .args(["--argstr", "marker"])
                .arg(&self.marker)
                .args(["--arg", "healthy", if healthy { "true" } else { "false" }])
                .args(["--argstr", "switchScript", script])
                .args(["--argstr", "bootParts"])
                .arg(boot_parts.unwrap_or(Path::new(""))),
        );
        StorePath::try_from(out.lines().last().expect("nix-build prints the path"))
            .expect("a store path")
    }

    /// Builds a closure that is not a system (no bin/switch-to-configuration).
    pub fn build_not_a_system(&self, name: &str) -> StorePath {
        let f = self.nix_file("data.nix", NOT_A_SYSTEM_NIX);
        let out = run_ok(
            Command::new("nix-build")
                .arg(&f)
                .arg("--no-out-link")
                .args(["--argstr", "name", name]),
        );
        StorePath::try_from(out.lines().last().expect("path")).expect("a store path")
    }

    /// Makes `path` the running system, as a boot would: profile and current-system link.
    pub fn boot_into(&self, path: &StorePath) {
        self.set_profile(path);
        let _ = std::fs::remove_file(&self.current);
        std::os::unix::fs::symlink(path.as_str(), &self.current).expect("symlink current-system");
    }

    /// Makes `path` the running and the booted system, as a reboot into it would.
    pub fn reboot_into(&self, path: &StorePath) {
        self.boot_into(path);
        let booted = self.dir.path().join("booted-system");
        let _ = std::fs::remove_file(&booted);
        std::os::unix::fs::symlink(path.as_str(), &booted).expect("symlink booted-system");
    }

    /// Adds a profile generation without switching (like `nixos-rebuild boot`).
    pub fn set_profile(&self, path: &StorePath) {
        run_ok(
            Command::new("nix-env")
                .arg("-p")
                .arg(&self.profile)
                .arg("--set")
                .arg(path.as_str()),
        );
    }

    /// Where the current-system link points.
    pub fn running(&self) -> String {
        std::fs::read_link(&self.current)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Where the profile finally points.
    pub fn profile_target(&self) -> String {
        std::fs::canonicalize(&self.profile)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// The number of profile generations.
    pub fn profile_generations(&self) -> usize {
        run_ok(
            Command::new("nix-env")
                .arg("-p")
                .arg(&self.profile)
                .arg("--list-generations"),
        )
        .lines()
        .count()
    }

    /// The lines of the switch marker: "switch <path>" per switch.
    pub fn switches(&self) -> Vec<String> {
        std::fs::read_to_string(&self.marker)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Agent settings for this machine (direct switch mode).
    pub fn settings(&self, dry_run: bool, cache_url: Option<&str>) -> Settings {
        Settings {
            machine_id: "web-01".into(),
            tags: vec!["web".into(), "eu-west".into()],
            dry_run,
            cache_url: cache_url.map(str::to_owned),
            profile: self.profile.clone(),
            switcher: Switcher {
                mode: SwitchMode::Direct,
                current_system: self.current.clone(),
                timeout: Duration::from_secs(20),
            },
            switch_lock: self.switch_lock(),
            // Failing checks fail at once here; the retry window has its own test.
            verify_window: Duration::ZERO,
            gc_roots: self.state_dir.join("gcroots"),
        }
    }

    /// The agent binary for this machine (web-01 of the control plane at `url`): its state dir,
    /// profile, current-system link and health check file; direct switches.
    pub fn agent_command(&self, url: &str) -> Command {
        let mut cmd =
            running::agent_command(url, &self.state_dir, &self.current, &self.health_config);
        cmd.arg("--profile").arg(&self.profile);
        cmd
    }

    /// This machine's stand-in for /run/nixos/switch-to-configuration.lock.
    pub fn switch_lock(&self) -> PathBuf {
        self.dir.path().join("switch-to-configuration.lock")
    }

    /// An agent for this machine.
    pub fn agent(&self) -> Agent {
        self.agent_with(self.settings(false, None))
    }

    /// An agent with these settings.
    pub fn agent_with(&self, settings: Settings) -> Agent {
        Agent::new(
            settings,
            Quarantine::load(&self.state_dir).expect("quarantine"),
            Journal::new(&self.state_dir),
            HealthRunner::new(self.health_config.clone(), Duration::from_secs(60)),
        )
    }
}

/// Whether `path` is valid in the local store.
pub fn is_valid(path: &StorePath) -> bool {
    Command::new("nix-store")
        .arg("--check-validity")
        .arg(path.as_str())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("nix-store")
        .success()
}

/// Deletes `path` from the local store.
pub fn delete(path: &StorePath) {
    run_ok(Command::new("nix-store").arg("--delete").arg(path.as_str()));
    assert!(
        !is_valid(path),
        "{path} is still valid after nix-store --delete"
    );
}

/// Copies `path`'s closure into a `file://` binary cache in `dir`, signing it first when `sign`.
pub fn publish(path: &StorePath, dir: &Path, sign: bool) -> String {
    let key = nix();
    if sign {
        run_ok(
            Command::new("nix")
                .args(["store", "sign", "--key-file"])
                .arg(&key.secret_file)
                .arg("-r")
                .arg(path.as_str()),
        );
    }
    let url = format!("file://{}", dir.display());
    run_ok(
        Command::new("nix")
            .args(["copy", "--to", &url])
            .arg(path.as_str()),
    );
    url
}

/// A fabricated store path that exists nowhere.
pub fn fabricated_path() -> StorePath {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let mut x = nanos ^ u128::from(std::process::id());
    let hash: String = (0..32)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            alphabet[((x >> 64) % 32) as usize] as char
        })
        .collect();
    StorePath::try_from(format!("/nix/store/{hash}-nixos-system-fabricated")).expect("valid")
}
