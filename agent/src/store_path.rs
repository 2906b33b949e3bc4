//! A validated Nix store path.
//!
//! Every path the control plane sends ends up as an argument of `nix copy`, `nix-env` and as the
//! location of an executable the agent runs as root. It is therefore checked once, strictly, at the
//! boundary, and the rest of the agent only handles [`StorePath`] values.

use std::fmt;
use std::path::Path;

/// The prefix of every store path the agent accepts.
pub const STORE_DIR: &str = "/nix/store/";

/// Characters of Nix's base-32 alphabet (no `e`, `o`, `u`, `t`).
const NIX_BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the hash part of a store path.
const HASH_LEN: usize = 32;

/// Longest name part Nix accepts.
const NAME_LEN_MAX: usize = 211;

/// A top-level store path: `/nix/store/<32 nix-base32 chars>-<name>`, nothing below it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

/// Why a string is not an acceptable store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    /// The string does not start with `/nix/store/`.
    #[error("{0:?} is not a store path: it must start with /nix/store/")]
    NotInStore(String),
    /// The hash part is not 32 nix-base32 characters followed by `-`.
    #[error(
        "{0:?} is not a store path: expected 32 nix-base32 characters and '-' after /nix/store/"
    )]
    BadHash(String),
    /// The name part is empty, too long, or has a forbidden character.
    #[error("{0:?} is not a store path: the name must be 1 to 211 characters of A-Z a-z 0-9 + - . _ ? =, not start with '.' and not contain '..'")]
    BadName(String),
}

impl StorePath {
    /// The full path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len()..STORE_DIR.len() + HASH_LEN]
    }

    /// The name part (after the hash and the dash).
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + HASH_LEN + 1..]
    }
}

impl TryFrom<&str> for StorePath {
    type Error = StorePathError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        let Some(rest) = s.strip_prefix(STORE_DIR) else {
            return Err(StorePathError::NotInStore(s.to_owned()));
        };
        let bytes = rest.as_bytes();
        if bytes.len() < HASH_LEN + 1
            || !bytes[..HASH_LEN]
                .iter()
                .all(|b| NIX_BASE32.as_bytes().contains(b))
            || bytes[HASH_LEN] != b'-'
        {
            return Err(StorePathError::BadHash(s.to_owned()));
        }
        let name = &rest[HASH_LEN + 1..];
        let name_ok = !name.is_empty()
            && name.len() <= NAME_LEN_MAX
            && !name.starts_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if !name_ok {
            return Err(StorePathError::BadName(s.to_owned()));
        }
        Ok(StorePath(s.to_owned()))
    }
}

impl TryFrom<String> for StorePath {
    type Error = StorePathError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        StorePath::try_from(s.as_str())
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for StorePath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}
