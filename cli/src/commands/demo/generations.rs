//! The demo's real system generations: built with `nix-build` from a `builtins.derivation` (no
//! nixpkgs), booted into by `nix-env --set`, and read back from each machine's profile.
//!
//! Each machine gets a G1, which it "boots" into before its agent starts, and a G2, which the
//! release asks of it. A generation is a directory with `bin/switch-to-configuration`, `init`,
//! `nixos-version` and, when it is a good one, a `healthy` file that the demo's health check
//! looks for through the machine's current-system link. Its switch points that link (in the demo
//! directory, baked into the closure) at itself, as a NixOS switch points `/run/current-system`.
//! A broken G2's switch exits 1 without touching anything, so its agent rolls back to G1.
//!
//! The paths live in the local Nix store (`/nix/store`), where the agent can run them, as the
//! agent's own tests do; the demo directory holds their GC roots (`generations/result*`), the
//! profiles and the links, so removing it leaves only garbage that `nix-collect-garbage` takes.
//! The host's `/run/current-system` and system profile are never touched.

use crate::error::{CliError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The programs a real run needs, in the order they are looked for.
pub const NIX_TOOLS: [&str; 3] = ["nix-build", "nix-store", "nix-env"];

/// The first of [`NIX_TOOLS`] that is not on PATH, if any.
pub fn missing_nix_tool() -> Option<&'static str> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    NIX_TOOLS
        .into_iter()
        .find(|tool| !dirs.iter().any(|d| d.join(tool).is_file()))
}

/// The Nix expression: one attribute per generation, `<host>-<label>`.
const GENERATIONS_NIX: &str = r##"# Written by `nixfleet demo`: each machine's system generations (no nixpkgs needed).
{ dir, hosts, broken }:
let
  gen = host: label: builtins.derivation {
    name = "nixfleet-demo-${host}-${label}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    link = "${dir}/machines/${host}/current-system";
    inherit label;
    brokenFlag = if label == "g2-broken" then "1" else "";
    args = [ "-c" ''
      mkdir -p $out/bin
      if [ -n "$brokenFlag" ]; then
        printf '#!/bin/sh\necho "activating %s: demo-app.service failed to start (broken on purpose by nixfleet demo)" >&2\nexit 1\n' "$out" > $out/bin/switch-to-configuration
      else
        printf "#!/bin/sh\nln -sfn '%s' '%s'\n" "$out" "$link" > $out/bin/switch-to-configuration
        touch $out/healthy
      fi
      chmod +x $out/bin/switch-to-configuration
      echo "nixfleet-demo-$label" > $out/nixos-version
      ln -s /bin/sh $out/init
    '' ];
  };
  for = host: [
    { name = "${host}-g1"; value = gen host "g1"; }
    { name = "${host}-g2"; value = gen host (if builtins.elem host broken then "g2-broken" else "g2"); }
  ];
in builtins.listToAttrs (builtins.concatMap for hosts)
"##;

/// One machine's two generations.
#[derive(Debug, Clone)]
pub struct Pair {
    /// What it runs before the rollouts.
    pub g1: String,
    /// What the release asks of it.
    pub g2: String,
}

/// Every machine's generations, and how long building them took.
#[derive(Debug, Clone)]
pub struct Generations {
    /// By machine id.
    pub machines: BTreeMap<String, Pair>,
    /// Seconds `nix-build` took.
    pub build_secs: f64,
}

impl Generations {
    /// The pair of `host` (every demo machine has one).
    pub fn of(&self, host: &str) -> &Pair {
        self.machines
            .get(host)
            .expect("generations were built for every demo machine")
    }
}

/// Builds G1 and G2 of each of `hosts` (G2 broken for those in `broken`) with `nix-build`, its
/// output in `log`, GC roots `<dir>/generations/result*`.
pub fn build(dir: &Path, hosts: &[&str], broken: &[&str], log: &Path) -> Result<Generations> {
    let dir_text = dir.to_str().filter(|d| {
        !d.chars()
            .any(|c| c == '\'' || c == '"' || c == '\\' || c == '$' || c.is_control())
    });
    let Some(dir_text) = dir_text else {
        return Err(CliError::usage(format!(
            "--dir {}: the generations' switch scripts name this directory, so it must be UTF-8 without quotes, backslashes, $ or control characters; pass another --dir",
            dir.display()
        )));
    };
    let gens = dir.join("generations");
    std::fs::create_dir_all(&gens)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", gens.display())))?;
    let file = gens.join("generations.nix");
    std::fs::write(&file, GENERATIONS_NIX)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", file.display())))?;
    let list = |xs: &[&str]| {
        format!(
            "[ {} ]",
            xs.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let started = Instant::now();
    let out = Command::new("nix-build")
        .arg(&file)
        .args(["--argstr", "dir", dir_text])
        .args(["--arg", "hosts", &list(hosts)])
        .args(["--arg", "broken", &list(broken)])
        .arg("--out-link")
        .arg(gens.join("result"))
        // No binary cache has these, and asking cache.nixos.org costs seconds without network.
        .args(["--option", "substituters", ""])
        .output()
        .map_err(|e| CliError::failed(format!("cannot run nix-build: {e}")))?;
    let build_secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The log is for a look afterwards; failing to write it must not hide the build's outcome.
    let _ = std::fs::write(log, format!("{stderr}{stdout}"));
    if !out.status.success() {
        let why = stderr
            .lines()
            .rev()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().last())
            .unwrap_or("no output")
            .trim();
        return Err(CliError::failed(format!(
            "nix-build of the demo's generations failed ({}): {why}; see {}, or run with --dry-run",
            out.status,
            log.display()
        )));
    }
    // Outputs come sorted by attribute name; match them by name rather than by position.
    let mut machines = BTreeMap::new();
    for host in hosts {
        let find = |label: &str| {
            let suffix = format!("-nixfleet-demo-{host}-{label}");
            stdout
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("/nix/store/") && l.ends_with(&suffix))
                .map(String::from)
                .ok_or_else(|| {
                    CliError::failed(format!(
                        "nix-build did not print the {label} of {host}; see {}",
                        log.display()
                    ))
                })
        };
        let g2_label = if broken.contains(host) {
            "g2-broken"
        } else {
            "g2"
        };
        machines.insert(
            host.to_string(),
            Pair {
                g1: find("g1")?,
                g2: find(g2_label)?,
            },
        );
    }
    Ok(Generations {
        machines,
        build_secs,
    })
}

/// Makes `path` the running system of a machine, as its boot would: profile generation 1 by
/// `nix-env -p <profile> --set`, and the current-system link.
pub fn boot(profile: &Path, current: &Path, path: &str) -> Result<()> {
    let out = Command::new("nix-env")
        .arg("-p")
        .arg(profile)
        .args(["--set", path])
        .output()
        .map_err(|e| CliError::failed(format!("cannot run nix-env: {e}")))?;
    if !out.status.success() {
        return Err(CliError::failed(format!(
            "nix-env -p {} --set {path} failed: {}",
            profile.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::os::unix::fs::symlink(path, current)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", current.display())))
}

/// Where a link points, if it is one.
pub fn link_target(link: &Path) -> Option<String> {
    std::fs::read_link(link)
        .ok()
        .map(|p| p.display().to_string())
}

/// The generations of a profile, oldest first: (number, store path).
pub fn profile_generations(profile: &Path) -> Vec<(u32, String)> {
    let (Some(dir), Some(name)) = (
        profile.parent(),
        profile.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let prefix = format!("{name}-");
    let mut found: Vec<(u32, String)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let file = e.ok()?.file_name().to_str()?.to_string();
                    let n = file
                        .strip_prefix(&prefix)?
                        .strip_suffix("-link")?
                        .parse()
                        .ok()?;
                    Some((n, link_target(&dir.join(&file))?))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// `<hash 7>…-<name>` of a store path, as the timeline shows it.
pub fn short(path: &str) -> String {
    let rest = path.trim_start_matches("/nix/store/");
    match rest.split_once('-') {
        Some((h, name)) => format!("{}…-{name}", &h[..7.min(h.len())]),
        None => rest.to_string(),
    }
}

/// A made-up system store path for a machine, for dry runs: valid syntax, never built.
pub fn release_path(host: &str) -> String {
    const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let hash: String = (0..32u8)
        .map(|i| {
            for b in host.bytes().chain([i]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            NIX_BASE32[(h >> 59) as usize] as char
        })
        .collect();
    format!("/nix/store/{hash}-nixos-system-{host}-demo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_release_paths_look_like_store_paths() {
        let p = release_path("web-01");
        let rest = p.strip_prefix("/nix/store/").expect("prefix");
        let (hash, name) = rest.split_at(32);
        assert!(hash
            .chars()
            .all(|c| "0123456789abcdfghijklmnpqrsvwxyz".contains(c)));
        assert_eq!(name, "-nixos-system-web-01-demo");
        assert_ne!(release_path("web-01"), release_path("web-02"));
        assert_eq!(release_path("db-01"), release_path("db-01"));
    }

    #[test]
    fn profile_generations_are_read_in_order_and_other_files_are_ignored() {
        let base = std::env::temp_dir().join(format!("nfdemo-gens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        for (n, to) in [
            (10, "/nix/store/c-x"),
            (2, "/nix/store/b-x"),
            (1, "/nix/store/a-x"),
        ] {
            std::os::unix::fs::symlink(to, base.join(format!("system-profile-{n}-link")))
                .expect("link");
        }
        std::os::unix::fs::symlink("system-profile-10-link", base.join("system-profile"))
            .expect("link");
        std::fs::write(base.join("system-profile-x-link"), "").expect("write");
        assert_eq!(
            profile_generations(&base.join("system-profile")),
            vec![
                (1, "/nix/store/a-x".to_string()),
                (2, "/nix/store/b-x".to_string()),
                (10, "/nix/store/c-x".to_string())
            ]
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn short_paths_look_like_the_timeline() {
        assert_eq!(
            short("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixfleet-demo-web-01-g2"),
            "0123456…-nixfleet-demo-web-01-g2"
        );
    }
}
