//! Decisions on releases: creating and deleting them.

use super::*;

/// `Command::CreateRelease`: at least one entry, no host twice, a new id.
pub(super) fn create(
    state: &State,
    release: &ReleaseId,
    flake_ref: &Option<String>,
    flake_rev: &Option<String>,
    cache_url: &Option<String>,
    entries: &[ReleaseEntry],
) -> Result<Vec<Event>, Rejection> {
    if entries.is_empty() {
        return Err(Rejection::Invalid("entries must not be empty".into()));
    }
    if entries.len() > RELEASE_ENTRIES_MAX {
        return Err(Rejection::Invalid(format!(
            "a release holds at most {RELEASE_ENTRIES_MAX} entries"
        )));
    }
    if state.releases.contains_key(release) {
        return Err(Rejection::Conflict(format!(
            "release {release} already exists"
        )));
    }
    if let Some(url) = cache_url {
        crate::plan::check_cache_url(url)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in entries {
        if !seen.insert(&e.machine) {
            return Err(Rejection::Invalid(format!(
                "host {} appears twice in entries",
                e.machine
            )));
        }
        check_tags(&e.tags)?;
    }
    Ok(vec![Event::ReleaseCreated {
        release: release.clone(),
        flake_ref: flake_ref.clone(),
        flake_rev: flake_rev.clone(),
        cache_url: cache_url.clone(),
        entries: entries.to_vec(),
    }])
}

/// `Command::DeleteRelease`: only one no rollout references.
pub(super) fn delete(state: &State, release: &ReleaseId) -> Result<Vec<Event>, Rejection> {
    if !state.releases.contains_key(release) {
        return Err(Rejection::NotFound(format!("release {release} not found")));
    }
    if let Some(r) = state.rollouts.values().find(|r| &r.plan.release == release) {
        return Err(Rejection::Conflict(format!(
            "release {release} is used by rollout {}",
            r.id
        )));
    }
    Ok(vec![Event::ReleaseDeleted {
        release: release.clone(),
    }])
}
