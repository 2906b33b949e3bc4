//! The reducer for API keys, the bootstrap, and releases (the tables operators manage directly).

use super::*;

impl State {
    /// Folds a key's creation or revocation, or the bootstrap.
    pub(super) fn apply_key_event(&mut self, env: &Envelope) {
        let at = env.at;
        match &env.event {
            Event::ApiKeyCreated { name, role, hash } => {
                self.key_by_hash.insert(*hash, name.clone());
                self.api_keys.insert(
                    name.clone(),
                    ApiKey {
                        name: name.clone(),
                        role: *role,
                        hash: *hash,
                        created_at: at,
                        created_by: env.actor.clone(),
                        revoked_at: None,
                    },
                );
            }
            Event::ApiKeyRevoked { name } => {
                if let Some(k) = self.api_keys.get_mut(name) {
                    k.revoked_at = Some(at);
                    self.key_by_hash.remove(&k.hash);
                }
            }
            Event::BootstrapDone { .. } => self.bootstrapped = true,
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }

    /// Folds a release's creation or deletion.
    pub(super) fn apply_release_event(&mut self, env: &Envelope) {
        let at = env.at;
        match &env.event {
            Event::ReleaseCreated {
                release,
                flake_ref,
                flake_rev,
                cache_url,
                entries,
            } => {
                self.releases.insert(
                    release.clone(),
                    Release {
                        id: release.clone(),
                        flake_ref: flake_ref.clone(),
                        flake_rev: flake_rev.clone(),
                        cache_url: cache_url.clone(),
                        entries: entries
                            .iter()
                            .map(|e| (e.machine.clone(), e.clone()))
                            .collect(),
                        created_at: at,
                        created_by: env.actor.clone(),
                    },
                );
            }
            Event::ReleaseDeleted { release } => {
                self.releases.remove(release);
            }
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }
}
