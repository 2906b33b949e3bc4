//! Calling `nix` and reading its answers: host discovery, flake references, host names, globs.

pub use crate::process::{run, CommandFailed};
use std::process::Command;

/// Nix flags every `nix` call gets: flakes on (Nix 2.8 needs them spelled out).
const NIX_FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// A `nix` command with flakes enabled.
pub fn nix() -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(NIX_FEATURES);
    cmd
}

/// Refuses flake references that `nix` would read as an option.
pub fn check_flake_ref(flake: &str) -> Result<(), String> {
    if flake.is_empty() || flake.starts_with('-') || flake.contains('#') {
        Err(format!(
            "--flake {flake:?}: give a flake reference without '#' such as . or github:org/fleet"
        ))
    } else {
        Ok(())
    }
}

/// Host names as they appear in `nixosConfigurations` and as machine ids.
pub fn check_host_name(host: &str) -> Result<(), String> {
    nixfleet_ids::MachineId::parse(host).map(drop).map_err(|e| {
        format!(
            "host name {host:?} is not usable as a machine id: {}",
            e.why
        )
    })
}

/// `nix eval <flake>#nixosConfigurations --apply builtins.attrNames --json`.
pub fn discover_hosts(flake: &str, verbose: u8) -> Result<Vec<String>, CommandFailed> {
    let attr = format!("{flake}#nixosConfigurations");
    let out = run(
        nix().args(["eval", "--json", &attr, "--apply", "builtins.attrNames"]),
        &format!("nix eval {attr}"),
        verbose,
    )?;
    serde_json::from_str(&out).map_err(|e| CommandFailed {
        what: format!("nix eval {attr}"),
        code: Some(0),
        stderr: format!("unexpected output ({e}): {}", out.trim()),
    })
}

/// The installable of a host's system toplevel.
pub fn toplevel_attr(flake: &str, host: &str) -> String {
    format!("{flake}#nixosConfigurations.\"{host}\".config.system.build.toplevel")
}

/// Shell-style glob on host names: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Hosts matching any of the comma-separated globs, in discovery order.
pub fn filter_hosts(hosts: &[String], globs: &str) -> Vec<String> {
    let patterns: Vec<&str> = globs
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    hosts
        .iter()
        .filter(|h| patterns.iter().any(|g| glob_match(g, h)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", "db"));
        assert!(glob_match("web-0?", "web-01"));
        assert!(!glob_match("web-0?", "web-010"));
        assert!(!glob_match("web-*", "db-01"));
        let hosts: Vec<String> = ["web-01", "web-02", "db-01"].map(String::from).to_vec();
        assert_eq!(
            filter_hosts(&hosts, "db-*, web-02"),
            vec!["web-02", "db-01"]
        );
    }

    #[test]
    fn flake_refs_that_look_like_options_are_refused() {
        assert!(check_flake_ref("--impure").is_err());
        assert!(check_flake_ref(".#web").is_err());
        assert!(check_flake_ref("github:org/fleet").is_ok());
        assert!(check_host_name("web-01").is_ok());
        assert!(check_host_name("-oProxyCommand=x").is_err());
    }
}
