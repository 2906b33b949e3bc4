//! `/api/v1/rollouts`: planning (dry run) and starting rollouts, their status with timeline,
//! and the operator's resume, cancel and delete.

use super::command;
use crate::api::error::ApiError;
use crate::api::http::{found, json, Ctx, Resp};
use crate::api::{input, views};
use nixfleet_core::decide::Command;
use nixfleet_core::event::{Role, RolloutPlan};
use nixfleet_core::ids::{RolloutId, Seq};
use nixfleet_core::plan::plan_rollout;
use nixfleet_proto::api::v1 as wire;

/// The rollout of path parameter 0.
fn rollout(cx: &Ctx<'_>) -> Result<RolloutId, ApiError> {
    Ok(RolloutId::parse(cx.param(0))?)
}

/// The batches of `plan` as answered to a create or a dry run, with each batch's status.
fn summary(
    id: &RolloutId,
    plan: &RolloutPlan,
    status: &dyn Fn(usize) -> String,
) -> wire::CreateRolloutResponse {
    wire::CreateRolloutResponse {
        rollout_id: id.to_string(),
        batches: plan
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| wire::BatchSummary {
                batch_index: i,
                machine_ids: b.iter().map(|(mm, _)| mm.to_string()).collect(),
                status: status(i),
            })
            .collect(),
        total_machines: plan.batches.iter().map(Vec::len).sum(),
        seed: plan.seed,
    }
}

/// `POST /api/v1/rollouts`: plans and starts a rollout.
pub async fn create(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    create_or_plan(cx, false).await
}

/// `POST /api/v1/rollouts/plan`: the batches a create would make; nothing is written.
pub async fn plan(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    create_or_plan(cx, true).await
}

async fn create_or_plan(cx: &Ctx<'_>, dry_run: bool) -> Result<Resp, ApiError> {
    let op = cx.operator(Role::Deploy)?;
    let req: wire::CreateRolloutRequest = cx.json()?;
    let seed = req.seed.unwrap_or_else(rand::random);
    let (spec, options) = input::rollout(req)?;
    let id = RolloutId::parse(&format!("r-{}", uuid::Uuid::new_v4()))?;
    if dry_run {
        let plan = cx.app.engine.read(|s| plan_rollout(s, &spec, seed))?;
        return Ok(json(200, &summary(&id, &plan, &|_| "pending".into())));
    }
    let cmd = Command::CreateRolloutWithOptions {
        rollout: id.clone(),
        spec,
        seed,
        options,
    };
    cx.exec(op.actor(), cmd).await?;
    let body = cx.app.engine.read(|s| {
        s.rollouts.get(&id).map(|r| {
            summary(&id, &r.plan, &|i| {
                r.batches
                    .get(i)
                    .map(|b| views::batch_status(s, b).to_string())
                    .unwrap_or_default()
            })
        })
    });
    body.map(|b| json(201, &b))
        .ok_or_else(|| ApiError::internal(&"rollout vanished after creation"))
}

/// `GET /api/v1/rollouts?status=…&limit=…`: newest first, without timelines.
pub async fn list(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let status = cx
        .query
        .get("status")
        .map(input::rollout_status)
        .transpose()?;
    let lim = cx.query.limit(100)?;
    let list: Vec<wire::RolloutDetail> = cx.app.engine.read(|s| {
        let mut v: Vec<_> = s
            .rollouts
            .values()
            .filter(|r| status.is_none_or(|st| r.status == st))
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        v.into_iter()
            .take(lim)
            .map(|r| views::rollout(s, r, &[]))
            .collect()
    });
    Ok(json(200, &list))
}

/// `GET /api/v1/rollouts/{id}`: with each machine's health per batch and the durable timeline.
pub async fn get(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let id = rollout(cx)?;
    let not_found = || format!("rollout {id} not found");
    // Its stream starts at its creation: the read never opens older archive segments.
    let engine = &cx.app.engine;
    let Some(created) = engine.read(|s| s.rollouts.get(&id).map(|r| r.created_seq)) else {
        return Err(ApiError::not_found(not_found()));
    };
    let from = Seq(created.0.saturating_sub(1));
    let timeline = engine
        .log()
        .read_stream(&format!("rollout:{id}"), from, 10_000)?;
    let durable = engine.log().durable_seq();
    let timeline: Vec<_> = timeline.into_iter().filter(|r| r.seq <= durable).collect();
    let r = engine.read(|s| s.rollouts.get(&id).map(|r| views::rollout(s, r, &timeline)));
    found(r, not_found)
}

/// Resume or cancel: the command, then `{"rollout_id", "status"}`.
async fn act(cx: &Ctx<'_>, cmd: fn(RolloutId) -> Command) -> Result<Resp, ApiError> {
    let op = cx.operator(Role::Deploy)?;
    let id = rollout(cx)?;
    cx.exec(op.actor(), cmd(id.clone())).await?;
    let status = cx
        .app
        .engine
        .read(|s| s.rollouts.get(&id).map(|r| r.status.to_string()))
        .unwrap_or_default();
    Ok(json(
        200,
        &serde_json::json!({"rollout_id": id.to_string(), "status": status}),
    ))
}

/// `POST /api/v1/rollouts/{id}/resume`: restarts the failed batch of a paused rollout.
pub async fn resume(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    act(cx, |rollout| Command::ResumeRollout { rollout }).await
}

/// `POST /api/v1/rollouts/{id}/cancel`.
pub async fn cancel(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    act(cx, |rollout| Command::CancelRollout { rollout }).await
}

/// `DELETE /api/v1/rollouts/{id}`: only a finished one.
pub async fn delete(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    command(cx, Role::Admin, 204, |cx| {
        Ok(Command::DeleteRollout {
            rollout: rollout(cx)?,
        })
    })
    .await
}
