//! The agent routes: a machine polls for its desired generation and reports. The caller is the
//! certificate whose CN is the machine in the path (and, for a report, in the body).

use crate::api::error::ApiError;
use crate::api::http::{empty, found, Ctx, Resp};
use crate::api::{input, views};
use nixfleet_core::event::Actor;
use nixfleet_proto::api::v1 as wire;

/// `GET /api/v1/machines/{id}/desired-generation`: what the machine should run (404: nothing).
pub async fn desired_generation(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let id = cx.agent()?;
    let d = cx.app.engine.read(|s| {
        let mm = s.machines.get(&id)?;
        let d = mm.desired.as_ref()?;
        Some(wire::DesiredGeneration {
            hash: d.path.to_string(),
            cache_url: d.cache_url.clone(),
            poll_hint: s.poll_hint(&id),
            quarantined: mm.quarantined.contains_key(&d.path),
            activation: views::activation_of(s, d).map(|a| a.to_string()),
            decided_seq: Some(mm.decided_seq.0),
        })
    });
    found(d, || format!("no desired generation for machine {id}"))
}

/// `POST /api/v1/machines/{id}/report`: the machine's state and health.
pub async fn report(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let id = cx.agent()?;
    let cmd = input::report(&id, cx.json()?, cx.app.auto_register)?;
    cx.exec(Actor::Machine(id), cmd).await?;
    Ok(empty(200))
}
