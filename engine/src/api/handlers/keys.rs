//! `/api/v1/keys`: the bootstrap of the first admin key, and keys made and revoked by admins.

use super::command;
use crate::api::auth::new_key;
use crate::api::error::ApiError;
use crate::api::http::{json, Ctx, Resp};
use crate::api::{input, views};
use nixfleet_core::decide::Command;
use nixfleet_core::event::{Actor, Role};
use nixfleet_core::ids::KeyName;
use nixfleet_proto::api::v1 as wire;

fn created(key: String, name: &KeyName, role: Role) -> wire::ApiKeyCreated {
    wire::ApiKeyCreated {
        key,
        name: name.to_string(),
        role: role.to_string(),
    }
}

/// `POST /api/v1/keys/bootstrap`: the one route open to anyone, until any key exists (then 409,
/// decided by the core).
pub async fn bootstrap(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let req: wire::BootstrapRequest = cx.json()?;
    let name = match req.name.as_deref().map(str::trim) {
        None | Some("") => "admin",
        Some(n) => n,
    };
    let name = KeyName::parse(name)?;
    let (key, hash) = new_key();
    let cmd = Command::Bootstrap {
        name: name.clone(),
        hash,
    };
    cx.exec(Actor::Bootstrap, cmd).await?;
    tracing::info!(key = %name, "bootstrap: first admin key created");
    Ok(json(200, &created(key, &name, Role::Admin)))
}

/// `GET /api/v1/keys`: every key, never its secret.
pub async fn list(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Admin)?;
    let keys: Vec<wire::ApiKeyInfo> = cx
        .app
        .engine
        .read(|s| s.api_keys.values().map(views::api_key).collect());
    Ok(json(200, &keys))
}

/// `POST /api/v1/keys`: a new key; its secret is shown once, here.
pub async fn create(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let op = cx.operator(Role::Admin)?;
    let req: wire::CreateKeyRequest = cx.json()?;
    let role = input::role(&req.role)?;
    let name = KeyName::parse(&req.name)?;
    let (key, hash) = new_key();
    let cmd = Command::CreateKey {
        name: name.clone(),
        role,
        hash,
    };
    cx.exec(op.actor(), cmd).await?;
    Ok(json(201, &created(key, &name, role)))
}

/// `DELETE /api/v1/keys/{name}`: the key fails from the next request on.
pub async fn revoke(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Admin, 204, |cx| {
        Ok(Command::RevokeKey {
            name: KeyName::parse(cx.param(0))?,
        })
    })
    .await
}
