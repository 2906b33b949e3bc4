//! `/api/v1/machines` for operators: the list, one machine, registration, lifecycle, and the
//! desired generation, quarantine and out-of-band deploys an operator may set or clear.

use super::command;
use crate::api::error::ApiError;
use crate::api::http::{found, json, Ctx, Resp};
use crate::api::{input, views};
use nixfleet_core::decide::Command;
use nixfleet_core::event::{Lifecycle, Role};
use nixfleet_core::ids::{MachineId, StorePath};
use nixfleet_proto::api::v1 as wire;

/// The machine of path parameter 0.
fn machine(cx: &Ctx<'_>) -> Result<MachineId, ApiError> {
    Ok(MachineId::parse(cx.param(0))?)
}

/// `GET /api/v1/machines?tag=…`: the machines carrying every given tag.
pub async fn list(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let want = input::tags(cx.query.all("tag"))?;
    let now = cx.app.engine.now();
    let list: Vec<wire::MachineStatus> = cx.app.engine.read(|s| {
        s.machines_with_tags(&want)
            .map(|mm| views::machine(mm, now))
            .collect()
    });
    Ok(json(200, &list))
}

/// `GET /api/v1/machines/{id}`.
pub async fn get(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let id = machine(cx)?;
    let now = cx.app.engine.now();
    let mm = cx
        .app
        .engine
        .read(|s| s.machines.get(&id).map(|mm| views::machine(mm, now)));
    found(mm, || format!("machine {id} not found"))
}

/// `POST /api/v1/machines/{id}/register`: registers it (active unless said otherwise) or
/// replaces its tags.
pub async fn register(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let op = cx.operator(Role::Admin)?;
    let id = machine(cx)?;
    let req: wire::RegisterRequest = cx.json()?;
    let lifecycle = match req.lifecycle.as_deref() {
        None => Lifecycle::Active,
        Some(l) => input::lifecycle(l)?,
    };
    let cmd = Command::Register {
        machine: id.clone(),
        lifecycle,
        tags: input::tags(&req.tags)?,
    };
    cx.exec(op.actor(), cmd).await?;
    let lifecycle = cx
        .app
        .engine
        .read(|s| s.machines.get(&id).map(|mm| mm.lifecycle.to_string()))
        .unwrap_or_default();
    let body = wire::RegisterResponse {
        machine_id: id.to_string(),
        lifecycle,
    };
    Ok(json(201, &body))
}

/// `PATCH /api/v1/machines/{id}/lifecycle`.
pub async fn set_lifecycle(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Admin, 200, |cx| {
        let machine = machine(cx)?;
        let req: wire::LifecycleRequest = cx.json()?;
        let to = input::lifecycle(&req.lifecycle)?;
        Ok(Command::SetLifecycle { machine, to })
    })
    .await
}

/// `DELETE /api/v1/machines/{id}/desired-generation`.
pub async fn clear_desired(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Admin, 204, |cx| {
        Ok(Command::ClearDesired {
            machine: machine(cx)?,
        })
    })
    .await
}

/// `DELETE /api/v1/machines/{id}/quarantine`: the machine may try its quarantined paths again.
pub async fn clear_quarantine(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Deploy, 204, |cx| {
        Ok(Command::ClearQuarantine {
            machine: machine(cx)?,
        })
    })
    .await
}

/// `POST /api/v1/machines/{id}/notify-deploy`: a deploy made out of band (SSH deploy, rollback).
pub async fn notify_deploy(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Deploy, 200, |cx| {
        let machine = machine(cx)?;
        let req: wire::NotifyDeployRequest = cx.json()?;
        let path = StorePath::parse(&req.store_path)?;
        Ok(Command::NotifyDeploy { machine, path })
    })
    .await
}
