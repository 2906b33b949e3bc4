//! `StorePath`: a validated `/nix/store/<hash>-<name>` path.
//!
//! Store paths reach remote shells (`nix-env --set`, `switch-to-configuration`), so they are
//! checked against Nix's own grammar before they are used anywhere, and quoted anyway.

use std::fmt;

/// The characters of Nix's base-32 alphabet (no e, o, u, t).
const NIX_BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
const HASH_LEN: usize = 32;
const MAX_NAME_LEN: usize = 211;

/// A syntactically valid Nix store path (not necessarily present in any store).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StorePath(String);

impl StorePath {
    /// The full path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for StorePath {
    type Error = String;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        let bad = |why: &str| {
            format!("{raw:?} is not a Nix store path ({why}); expected /nix/store/<hash>-<name>")
        };
        let rest = raw
            .strip_prefix("/nix/store/")
            .ok_or_else(|| bad("it does not start with /nix/store/"))?;
        if rest.len() < HASH_LEN + 2 {
            return Err(bad("too short"));
        }
        let (hash, name) = rest.split_at(HASH_LEN);
        if !hash.chars().all(|c| NIX_BASE32.contains(c)) {
            return Err(bad("the hash part is not Nix base-32"));
        }
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| bad("no '-' after the hash"))?;
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.starts_with('.') {
            return Err(bad("bad name"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c))
        {
            return Err(bad("the name has characters Nix does not allow"));
        }
        Ok(StorePath(raw.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_store_path_is_accepted() {
        let p = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-01-24.05";
        assert_eq!(StorePath::try_from(p).expect("valid").as_str(), p);
    }

    #[test]
    fn shell_metacharacters_and_subpaths_are_rejected() {
        for bad in [
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x; rm -rf /",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/bin/sh",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-$(reboot)",
            "/nix/store/0123456789abcdefghijklmnpqrsvwxy-e-is-not-base32",
            "/tmp/0123456789abcdfghijklmnpqrsvwxyz-x",
            "/nix/store/../etc",
            "",
        ] {
            assert!(StorePath::try_from(bad).is_err(), "{bad}");
        }
    }
}
