//! `/api/v1/releases`: immutable host → store path maps, and what changes between two.

use super::command;
use crate::api::error::ApiError;
use crate::api::http::{found, json, Ctx, Resp};
use crate::api::{input, views};
use nixfleet_core::decide::Command;
use nixfleet_core::event::Role;
use nixfleet_core::ids::{MachineId, ReleaseId};
use nixfleet_core::state::Release;
use nixfleet_proto::api::v1 as wire;

/// The release of path parameter `i`.
fn release(cx: &Ctx<'_>, i: usize) -> Result<ReleaseId, ApiError> {
    Ok(ReleaseId::parse(cx.param(i))?)
}

/// `POST /api/v1/releases`.
pub async fn create(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let op = cx.operator(Role::Deploy)?;
    let req: wire::CreateReleaseRequest = cx.json()?;
    let entries = input::release_entries(&req.entries)?;
    let id = ReleaseId::parse(&format!("rel-{}", uuid::Uuid::new_v4()))?;
    let host_count = entries.len();
    let cmd = Command::CreateRelease {
        release: id.clone(),
        flake_ref: req.flake_ref,
        flake_rev: req.flake_rev,
        cache_url: req.cache_url,
        entries,
    };
    cx.exec(op.actor(), cmd).await?;
    let body = wire::CreateReleaseResponse {
        id: id.to_string(),
        host_count,
    };
    Ok(json(201, &body))
}

/// `GET /api/v1/releases?host=…&limit=…`: newest first.
pub async fn list(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let lim = cx.query.limit(20)?;
    let host = cx.query.get("host").map(MachineId::parse).transpose()?;
    let list: Vec<wire::Release> = cx.app.engine.read(|s| {
        let mut v: Vec<_> = s
            .releases
            .values()
            .filter(|r| host.as_ref().is_none_or(|h| r.entries.contains_key(h)))
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        v.into_iter().take(lim).map(views::release).collect()
    });
    Ok(json(200, &list))
}

/// `GET /api/v1/releases/{id}`.
pub async fn get(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let id = release(cx, 0)?;
    let r = cx
        .app
        .engine
        .read(|s| s.releases.get(&id).map(views::release));
    found(r, || format!("release {id} not found"))
}

/// `GET /api/v1/releases/{a}/diff/{b}`: what changes from release a to release b.
pub async fn diff(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let (a, b) = (release(cx, 0)?, release(cx, 1)?);
    let d = cx.app.engine.read(|s| {
        let (ra, rb) = (s.releases.get(&a)?, s.releases.get(&b)?);
        Some(release_diff(ra, rb))
    });
    found(d, || format!("release {a} or {b} not found"))
}

/// Hosts added, removed, changed (with both paths) and unchanged from `a` to `b`.
fn release_diff(a: &Release, b: &Release) -> wire::ReleaseDiff {
    let mut d = wire::ReleaseDiff {
        added: vec![],
        removed: vec![],
        changed: vec![],
        unchanged: vec![],
    };
    for (h, e) in &b.entries {
        match a.entries.get(h) {
            None => d.added.push(h.to_string()),
            Some(old) if old.path != e.path => d.changed.push(wire::ReleaseDiffChange {
                hostname: h.to_string(),
                old_store_path: old.path.to_string(),
                new_store_path: e.path.to_string(),
            }),
            Some(_) => d.unchanged.push(h.to_string()),
        }
    }
    d.removed = a
        .entries
        .keys()
        .filter(|h| !b.entries.contains_key(*h))
        .map(|h| h.to_string())
        .collect();
    d
}

/// `DELETE /api/v1/releases/{id}`: only one no active rollout uses.
pub async fn delete(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Admin, 204, |cx| {
        Ok(Command::DeleteRelease {
            release: release(cx, 0)?,
        })
    })
    .await
}
