//! Validated identifiers and scalar newtypes, the one rule for the whole of nixfleet.
//!
//! Everything that crosses a module boundary as an id is one of these types, constructed only
//! through `parse`/`TryFrom`, so nothing downstream re-validates strings. The control plane (through
//! `nixfleet-core`, which re-exports this crate), the agent and the CLI all use these types, so what
//! one accepts the others accept: there is no second copy of a rule to drift. Like the core, this
//! crate does no IO and depends only on serde and thiserror (`tests/tidy.rs`).
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct InvalidId {
    /// What was being parsed ("machine id", "store path", …).
    pub kind: &'static str,
    /// The refused value, truncated to 200 characters.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl InvalidId {
    fn new(kind: &'static str, value: &str, why: &'static str) -> Self {
        InvalidId {
            kind,
            value: value.chars().take(200).collect(),
            why,
        }
    }
}

/// Milliseconds since the Unix epoch. The core never reads a clock: callers pass it in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the epoch.
    pub fn as_ms(self) -> u64 {
        self.0
    }
    /// This instant plus `secs` seconds.
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1000)))
    }
    /// Whole seconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
}

/// Position of an event in the log: 1, 2, 3, … without gaps.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Seq(pub u64);

/// Longest id accepted anywhere (v0.1 answers 400 above this).
pub const ID_LEN_MAX: usize = 128;

fn check_name(kind: &'static str, s: &str, extra: &[char]) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::new(kind, s, "must not be empty"));
    }
    if s.len() > ID_LEN_MAX {
        return Err(InvalidId::new(kind, s, "must be at most 128 characters"));
    }
    if s.starts_with('-') || s.starts_with('.') {
        return Err(InvalidId::new(kind, s, "must not start with '-' or '.'"));
    }
    if !s.chars().all(|c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || extra.contains(&c)
    }) {
        return Err(InvalidId::new(
            kind,
            s,
            "may contain only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                check_name($kind, s, $extra)?;
                Ok($name(s.to_owned()))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                check_name($kind, &s, $extra)?;
                Ok($name(s))
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A machine's id: its hostname, and the CN of its client certificate.
    MachineId, "machine id", &[]
);
string_id!(
    /// A tag on a machine (`web`, `eu-west`, `role:db`).
    Tag, "tag", &[':', '=', '/']
);
string_id!(
    /// A release id, `rel-…`.
    ReleaseId, "release id", &[]
);
string_id!(
    /// A rollout id, `r-…`.
    RolloutId, "rollout id", &[]
);
string_id!(
    /// An API key's unique name.
    KeyName, "key name", &[':', '@']
);

/// The directory every store path is in.
pub const STORE_DIR: &str = "/nix/store/";

/// Length of the hash part of a store path.
pub const STORE_HASH_LEN: usize = 32;

/// Longest name part of a store path (after the hash and '-') Nix accepts.
pub const STORE_NAME_LEN_MAX: usize = 211;

/// Characters Nix allows in a store path name.
fn is_store_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// Nix's base32 alphabet (no e, o, u, t).
fn is_nix_base32(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

/// A top-level Nix store path, `/nix/store/<32 nix-base32 chars>-<name>`, nothing below it: a
/// generation.
///
/// The control plane accepts, the agent acts on (as an argument of `nix copy` and `nix-env`, and
/// as the location of an executable it runs as root) and the CLI sends to remote shells exactly
/// the paths this one check accepts. It rejects traversal (`..`, extra `/`) and every shell
/// metacharacter, so a value of this type can be passed as an argument to a command without
/// further quoting concerns. Its serde form is the plain string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorePath(String);

impl StorePath {
    /// Why a path outside the store is refused.
    pub const NOT_IN_STORE: &'static str = "must start with /nix/store/";
    /// Why a path with a malformed hash part is refused.
    pub const BAD_HASH: &'static str = "needs 32 nix-base32 characters and '-' after /nix/store/";
    /// Why a path with a malformed name part is refused.
    pub const BAD_NAME: &'static str = "the name must be 1 to 211 characters of A-Z a-z 0-9 + - . _ ? =, not start with '.' and not contain '..'";

    /// Validates and wraps `s`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let bad = |why| InvalidId::new("store path", s, why);
        let rest = s
            .strip_prefix(STORE_DIR)
            .ok_or_else(|| bad(Self::NOT_IN_STORE))?;
        let (hash, name) = rest
            .split_at_checked(STORE_HASH_LEN)
            .ok_or_else(|| bad(Self::BAD_HASH))?;
        if !hash.bytes().all(is_nix_base32) {
            return Err(bad(Self::BAD_HASH));
        }
        let name = name.strip_prefix('-').ok_or_else(|| bad(Self::BAD_HASH))?;
        // '..' anywhere is refused: it is harmless without '/', but what the control plane accepts
        // must be exactly what the agent will act on, and the agent refuses it.
        if name.is_empty()
            || name.len() > STORE_NAME_LEN_MAX
            || name.starts_with('.')
            || name.contains("..")
            || !name.bytes().all(is_store_name_char)
        {
            return Err(bad(Self::BAD_NAME));
        }
        Ok(StorePath(s.to_owned()))
    }
    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The path, to join or compare with filesystem paths (no IO here).
    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len()..STORE_DIR.len() + STORE_HASH_LEN]
    }
    /// The name part (after the hash and the '-').
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + STORE_HASH_LEN + 1..]
    }
}
impl TryFrom<&str> for StorePath {
    type Error = InvalidId;
    fn try_from(s: &str) -> Result<Self, InvalidId> {
        StorePath::parse(s)
    }
}
impl TryFrom<String> for StorePath {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        StorePath::parse(&s)
    }
}
impl From<StorePath> for String {
    fn from(v: StorePath) -> String {
        v.0
    }
}
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl AsRef<std::path::Path> for StorePath {
    fn as_ref(&self) -> &std::path::Path {
        self.as_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-01-24.05";

    #[test]
    fn a_well_formed_store_path_is_accepted_and_split_into_hash_and_name() {
        let p = StorePath::parse(GOOD).expect("valid");
        assert_eq!(p.as_str(), GOOD);
        assert_eq!(p.hash_part(), "0123456789abcdfghijklmnpqrsvwxyz");
        assert_eq!(p.name(), "nixos-system-web-01-24.05");
        assert_eq!(StorePath::try_from(GOOD), Ok(p));
    }

    #[test]
    fn a_multibyte_character_across_the_hash_end_is_refused_not_a_panic() {
        // The CLI's copy split at byte 32 unchecked and panicked on this.
        let s = "/nix/store/0123456789abcdfghijklmnpqrsvwxy\u{e9}-x";
        assert_eq!(
            StorePath::parse(s).map_err(|e| e.why),
            Err(StorePath::BAD_HASH)
        );
    }

    #[test]
    fn each_refusal_says_which_part_is_wrong() {
        let why = |s: &str| StorePath::parse(s).expect_err("refused").why;
        assert_eq!(why("/etc/passwd"), StorePath::NOT_IN_STORE);
        assert_eq!(
            why("/nix/store/0123456789abcdfghijklmnpqrsvwxyz"),
            StorePath::BAD_HASH
        );
        assert_eq!(
            why("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-"),
            StorePath::BAD_NAME
        );
        let e = StorePath::parse("/nix/store/x; rm -rf /").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "invalid store path \"/nix/store/x; rm -rf /\": needs 32 nix-base32 characters and '-' after /nix/store/"
        );
    }

    #[test]
    fn the_serde_form_is_the_plain_string_and_checked() {
        let p = StorePath::parse(GOOD).expect("valid");
        let json = serde_json::to_string(&p).expect("serializes");
        assert_eq!(json, format!("{GOOD:?}"));
        assert_eq!(
            serde_json::from_str::<StorePath>(&json).expect("decodes"),
            p
        );
        let bad = "\"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a..b\"";
        assert!(serde_json::from_str::<StorePath>(bad).is_err());
    }

    #[test]
    fn store_paths_with_traversal_or_shell_characters_are_refused() {
        for bad in [
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a/../../etc",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a;rm -rf /",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-$(id)",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a b",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-`x`",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-..",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a..b",
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
            "/tmp/0123456789abcdfghijklmnpqrsvwxyz-x",
            "/nix/store/short-x",
            "",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_name_of_up_to_211_characters_is_accepted_and_no_longer() {
        let path = |n: usize| {
            format!(
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-{}",
                "n".repeat(n)
            )
        };
        assert!(StorePath::parse(&path(179)).is_ok());
        assert!(StorePath::parse(&path(211)).is_ok());
        assert!(StorePath::parse(&path(212)).is_err());
    }

    #[test]
    fn machine_ids_are_bounded_and_plain() {
        assert!(MachineId::parse("web-01").is_ok());
        assert!(MachineId::parse(&"a".repeat(128)).is_ok());
        assert!(MachineId::parse(&"a".repeat(129)).is_err());
        assert!(MachineId::parse("../etc").is_err());
        assert!(MachineId::parse("a/b").is_err());
        assert!(MachineId::parse("-rf").is_err());
        assert!(MachineId::parse("").is_err());
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        let ok: Result<MachineId, _> = serde_json::from_str("\"web-01\"");
        assert!(ok.is_ok());
        let bad: Result<MachineId, _> = serde_json::from_str("\"web 01\"");
        assert!(bad.is_err());
    }
}
