//! `/api/v1/audit`: who did what, newest first, as JSON or as a CSV export.

use crate::api::error::ApiError;
use crate::api::http::{json, text, Ctx, Resp};
use crate::api::views;
use nixfleet_core::event::Role;
use nixfleet_proto::api::v1 as wire;

/// The rows the query asks for (`actor`, `action`, `target`, `limit`), for a readonly key.
fn rows(cx: &Ctx<'_>) -> Result<Vec<wire::AuditEntry>, ApiError> {
    cx.operator(Role::Readonly)?;
    let lim = cx.query.limit(100)?;
    let q = |k| cx.query.get(k);
    let (actor, action, target) = (q("actor"), q("action"), q("target"));
    Ok(cx.app.engine.read(|s| {
        s.audit
            .iter()
            .rev()
            .filter(|a| {
                actor.is_none_or(|x| a.actor.to_string() == x)
                    && action.is_none_or(|x| a.action == x)
                    && target.is_none_or(|x| a.target == x)
            })
            .take(lim)
            .map(|a| wire::AuditEntry {
                id: a.seq.0,
                timestamp: views::rfc3339(a.at),
                actor: a.actor.to_string(),
                action: a.action.clone(),
                target: a.target.clone(),
                detail: a.detail.clone(),
            })
            .collect()
    }))
}

/// `GET /api/v1/audit`.
pub async fn list(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    Ok(json(200, &rows(cx)?))
}

/// `GET /api/v1/audit/export`: the same rows as a CSV attachment.
pub async fn export(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let mut csv = String::from("timestamp,actor,action,target,detail\n");
    for r in rows(cx)? {
        let cells = [r.timestamp, r.actor, r.action, r.target, r.detail].map(|c| csv_cell(&c));
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    let mut resp = text(200, "text/csv", csv);
    resp.headers_mut().insert(
        "content-disposition",
        hyper::header::HeaderValue::from_static("attachment; filename=\"audit.csv\""),
    );
    Ok(resp)
}

/// A CSV cell, quoted, with formula-leading characters neutralised.
pub fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}
