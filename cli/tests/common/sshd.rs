//! A real sshd in its own network namespace, with its own Nix store bound onto /nix in its own
//! mount namespace: the "target machine" of deploy and rollback tests.
//!
//! Layout under the scratch dir: `target/nix` (the target's store and DB), `hostkey`, `id`
//! (client key), `authorized_keys`, `known_hosts`, `sshd_config`. The CLI runs inside the same
//! network namespace, so every packet stays on that namespace's loopback.

use super::{stderr, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Nix settings for the machine running the CLI: flakes on, no substituters (no network).
pub const NIX_CONFIG: &str =
    "experimental-features = nix-command flakes\nsubstituters =\nsandbox = false";

/// Host names that all resolve (through `-o HostName`) to the namespace's sshd.
pub const HOST_ALIASES: [&str; 3] = ["target", "broken", "127.0.0.1"];

/// The running target. Drop stops sshd and removes the namespace.
pub struct SshTarget {
    pub ns: String,
    pub dir: PathBuf,
    sshd: Child,
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run setup command");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs nix and sshd if this machine lacks them (CI images start bare).
fn ensure_tools() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if Path::new("/usr/sbin/sshd").exists() && Path::new("/usr/bin/nix-copy-closure").exists() {
            return;
        }
        sh(Command::new("apt-get").arg("update").arg("-qq"));
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "nix-bin", "openssh-server"])
            .env("DEBIAN_FRONTEND", "noninteractive"));
    });
}

impl SshTarget {
    /// Starts sshd on 127.0.0.1:22 inside a fresh namespace `nfcli-t-<pid>-<n>`.
    pub fn start(scratch: &Scratch) -> SshTarget {
        ensure_tools();
        let dir = scratch.join("ssh");
        std::fs::create_dir_all(dir.join("target/nix/store")).expect("mkdir store");
        std::fs::create_dir_all(dir.join("target/nix/var/nix/profiles")).expect("mkdir profiles");
        std::fs::create_dir_all("/run/sshd").expect("sshd privsep dir");
        for key in ["hostkey", "id"] {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).expect("authorized_keys");
        let host_pub = std::fs::read_to_string(dir.join("hostkey.pub")).expect("host key");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        std::fs::write(
            dir.join("known_hosts"),
            format!("{} {}\n", HOST_ALIASES.join(","), host_pub.join(" ")),
        )
        .expect("known_hosts");
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort 22\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\n"
            ),
        )
        .expect("sshd_config");

        let ns = format!(
            "nfcli-t-{}",
            scratch
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .trim_start_matches("nfcli-t-")
        );
        let ns: String = ns.chars().take(40).collect();
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(Command::new("ip").args(["netns", "add", &ns]));
        sh(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        let script = format!("mount --bind {d}/target/nix /nix && exec /usr/sbin/sshd -D -f {d}/sshd_config -E {d}/sshd.log");
        let sshd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let target = SshTarget { ns, dir, sshd };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !target.dir.join("sshd.pid").exists() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(target.dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        target
    }

    /// NIX_SSHOPTS for the CLI: our key, our known_hosts, every alias on the namespace's sshd.
    pub fn ssh_opts(&self) -> String {
        let d = self.dir.display();
        format!("-i {d}/id -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o HostName=127.0.0.1 -o ConnectTimeout=5")
    }

    /// `nixfleet …` inside the namespace with a clean environment and NIX_SSHOPTS set.
    pub fn nixfleet(&self, scratch: &Scratch) -> Command {
        let mut cmd = super::nixfleet_in_ns(scratch, &self.ns);
        cmd.env("NIX_CONFIG", NIX_CONFIG)
            .env("NIX_SSHOPTS", self.ssh_opts());
        cmd
    }

    /// Runs a command inside the target's mount namespace (its own /nix and Nix DB).
    pub fn on_target(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.sshd.id().to_string())
            .args(["-m", "-n", "--"])
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// stdout of a command on the target that must succeed.
    pub fn on_target_ok(&self, args: &[&str]) -> String {
        let out = self.on_target(args);
        assert!(
            out.status.success(),
            "{args:?} on target failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Where the system profile points on the target.
    pub fn profile(&self) -> String {
        self.on_target_ok(&["readlink", "-f", "/nix/var/nix/profiles/system"])
    }
}

impl Drop for SshTarget {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The store path of `target`'s generation `gen`, from a deploy's stderr.
pub fn store_path_of(out: &Output, gen: &str) -> String {
    let err = stderr(out);
    err.split_whitespace()
        .find(|w| {
            w.starts_with("/nix/store/") && w.ends_with(&format!("-nixos-system-target-{gen}"))
        })
        .unwrap_or_else(|| panic!("no store path for {gen} in: {err}"))
        .to_string()
}

/// What the last `switch-to-configuration` of the flakes here wrote to `<scratch>/marker`.
pub fn marker(s: &Scratch) -> String {
    std::fs::read_to_string(s.join("marker"))
        .expect("marker written by switch-to-configuration")
        .trim()
        .to_string()
}

/// Writes a flake with hosts `target` (switch writes `active=<gen> arg=$1` to `marker`) and
/// `broken` (its switch fails). No nixpkgs: plain derivations built by /bin/sh.
pub fn write_flake(dir: &Path, gen: &str, marker: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir flake");
    let marker = marker.display();
    let flake = r#"{
  outputs = { self }: let
    dep = builtins.derivation {
      name = "nfcli-dep"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
      args = [ "-c" "echo dep for MARKER > $out" ];
    };
    mk = host: gen: exit: builtins.derivation {
      name = "nixos-system-${host}-${gen}"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
      args = [ "-c" ''
        mkdir -p $out/bin
        ln -s ${dep} $out/dep
        printf '#!/bin/sh\necho "active=${gen} arg=$1" > MARKER\nexit ${exit}\n' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      '' ];
    };
  in {
    nixosConfigurations.target.config.system.build.toplevel = mk "target" "GEN" "0";
    nixosConfigurations.broken.config.system.build.toplevel = mk "broken" "GEN" "1";
  };
}
"#
    .replace("MARKER", &marker.to_string())
    .replace("GEN", gen);
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
}
