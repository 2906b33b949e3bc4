//! Liveness, readiness and metrics: no caller to check (they show no fleet data beyond counts).

use crate::api::error::ApiError;
use crate::api::http::{json, text, Ctx, Resp};
use nixfleet_proto::api::v1 as wire;

/// `GET /health`: the process answers.
pub async fn health(_cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    Ok(text(200, "text/plain", "ok"))
}

/// `GET /ready`: 200 once the projections include every event of the log, else 503.
pub async fn ready(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let log_seq = cx.app.engine.log().last_seq().0;
    let applied = cx.app.engine.read(|s| s.last_seq.0);
    let r = wire::Readiness {
        ready: applied == log_seq,
        log_seq,
        applied_seq: applied,
    };
    Ok(json(if r.ready { 200 } else { 503 }, &r))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    Ok(text(
        200,
        "text/plain; version=0.0.4",
        crate::api::metrics::render(cx.app),
    ))
}
