//! The agent's use of Nix: is a path present, fetch it, point the system profile at it.
//!
//! Each operation is one `Command` with arguments (never a shell) and a deadline. Programs are looked
//! up on `PATH`; the NixOS module puts Nix on the agent unit's path.

use crate::exec::{self, ExecError};
use nixfleet_ids::StorePath;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Deadline of every Nix subprocess (copy, realise, profile update).
pub const NIX_TIMEOUT: Duration = Duration::from_secs(300);

/// Deadline of a validity query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a closure could not be made present in the local store.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not in the store and nowhere to fetch it from. The text is matched by the seed's
    /// `vm-fleet-agent-rebuild`; do not reword it.
    #[error("store path {0} not found locally and no cache URL configured")]
    NotFoundNoCache(StorePath),
    /// The cache URL is not something to hand to `nix copy --from`.
    #[error("invalid cache URL {0:?}: expected <scheme>://… (e.g. https://cache.example or file:///srv/cache)")]
    BadCacheUrl(String),
    /// Both the cache and the system substituters failed.
    #[error(
        "cannot fetch {path}: nix copy --from {cache}: {copy}; nix-store --realise: {realise}"
    )]
    Failed {
        /// The path.
        path: StorePath,
        /// The cache tried first.
        cache: String,
        /// What `nix copy` said.
        copy: String,
        /// What `nix-store --realise` said.
        realise: String,
    },
    /// A Nix program could not be run at all.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Where a fetched closure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// It was already valid in the local store.
    AlreadyPresent,
    /// `nix copy --from <cache>` brought it.
    FromCache,
    /// `nix-store --realise` (the system substituters) brought it.
    FromSubstituters,
}

/// Whether `path` is valid (fully present and registered) in the local store.
pub fn is_valid(path: &StorePath) -> Result<bool, ExecError> {
    let out = exec::run(
        Command::new("nix-store")
            .arg("--check-validity")
            .arg(path.as_str()),
        QUERY_TIMEOUT,
    )?;
    Ok(out.status.success())
}

/// Checks a cache URL before it becomes an argument of `nix copy`: it must look like `scheme://…`,
/// so that it can never be mistaken for an option.
pub fn validate_cache_url(url: &str) -> Result<(), FetchError> {
    let ok = match url.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
                && scheme.as_bytes()[0].is_ascii_lowercase()
                && !rest.is_empty()
                && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(FetchError::BadCacheUrl(url.to_owned()))
    }
}

/// Makes `path` valid in the local store.
///
/// Already valid: nothing to do. With a cache: `nix copy --from <cache> <path>`, then the system
/// substituters (`nix-store --realise`) if that fails. Without a cache: fail and touch nothing.
pub fn fetch(path: &StorePath, cache: Option<&str>) -> Result<Fetched, FetchError> {
    if is_valid(path)? {
        return Ok(Fetched::AlreadyPresent);
    }
    let Some(cache) = cache else {
        return Err(FetchError::NotFoundNoCache(path.clone()));
    };
    validate_cache_url(cache)?;
    let copy = exec::run(
        Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--from",
                cache,
            ])
            .arg(path.as_str()),
        NIX_TIMEOUT,
    )?;
    if copy.status.success() && is_valid(path)? {
        return Ok(Fetched::FromCache);
    }
    let copy_err = copy.failure_summary();
    tracing::warn!(path = %path, cache, error = %copy_err, "Cache fetch failed, falling back to system substituters");
    let realise = exec::run(
        Command::new("nix-store")
            .arg("--realise")
            .arg(path.as_str()),
        NIX_TIMEOUT,
    )?;
    if realise.status.success() && is_valid(path)? {
        return Ok(Fetched::FromSubstituters);
    }
    Err(FetchError::Failed {
        path: path.clone(),
        cache: cache.to_owned(),
        copy: copy_err,
        realise: realise.failure_summary(),
    })
}

/// Points `profile` at `path` (`nix-env -p <profile> --set <path>`), creating a new profile generation.
pub fn set_profile(profile: &Path, path: &StorePath) -> Result<(), String> {
    run_to_success(
        Command::new("nix-env")
            .arg("-p")
            .arg(profile)
            .arg("--set")
            .arg(path.as_str()),
        NIX_TIMEOUT,
        &format!("nix-env -p {} --set {path}", profile.display()),
    )
}

/// Makes `link` an indirect GC root for `path` (`nix-store --realise <path> --add-root <link>
/// --indirect`), so a garbage collection cannot delete the closure the agent is about to switch to,
/// or the generation it would roll back to (facts §9, defect 12).
pub fn add_root(link: &Path, path: &StorePath) -> Result<(), String> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    run_to_success(
        Command::new("nix-store")
            .arg("--realise")
            .arg(path.as_str())
            .arg("--add-root")
            .arg(link)
            .arg("--indirect"),
        QUERY_TIMEOUT,
        &format!("nix-store --add-root {}", link.display()),
    )
}

/// Runs `cmd` to its end; an exit other than 0 is `{what}: {its failure summary}`.
fn run_to_success(cmd: &mut Command, timeout: Duration, what: &str) -> Result<(), String> {
    let out = exec::run(cmd, timeout).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {}", out.failure_summary()))
    }
}
