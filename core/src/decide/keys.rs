//! Decisions on API keys: the bootstrap, creating and revoking keys.

use super::*;

/// `Command::Bootstrap`: the first admin key, once.
pub(super) fn bootstrap(
    state: &State,
    name: &KeyName,
    hash: &[u8; 32],
) -> Result<Vec<Event>, Rejection> {
    if state.bootstrapped || !state.api_keys.is_empty() {
        return Err(Rejection::Conflict(
            "API keys already exist. Use an admin key to create more.".into(),
        ));
    }
    Ok(vec![
        Event::ApiKeyCreated {
            name: name.clone(),
            role: Role::Admin,
            hash: *hash,
        },
        Event::BootstrapDone { name: name.clone() },
    ])
}

/// `Command::CreateKey`: names are never reused, not even a revoked key's.
pub(super) fn create_key(
    state: &State,
    name: &KeyName,
    role: Role,
    hash: &[u8; 32],
) -> Result<Vec<Event>, Rejection> {
    if state.api_keys.contains_key(name) {
        return Err(Rejection::Conflict(format!(
            "an API key named {name} already exists (revoked keys keep their name)"
        )));
    }
    Ok(vec![Event::ApiKeyCreated {
        name: name.clone(),
        role,
        hash: *hash,
    }])
}

/// `Command::RevokeKey`.
pub(super) fn revoke_key(state: &State, name: &KeyName) -> Result<Vec<Event>, Rejection> {
    match state.api_keys.get(name) {
        None => Err(Rejection::NotFound(format!("API key {name} not found"))),
        Some(k) if k.revoked_at.is_some() => Err(Rejection::Conflict(format!(
            "API key {name} is already revoked"
        ))),
        Some(_) => Ok(vec![Event::ApiKeyRevoked { name: name.clone() }]),
    }
}
