//! `GET /api/v1/events`: raw durable records after a sequence number, as JSON lines, with a
//! long poll on the durable mark.

use crate::api::error::ApiError;
use crate::api::http::{text, Ctx, Resp};
use crate::api::views;
use nixfleet_core::event::Role;
use nixfleet_core::ids::Seq;

/// Longest long-poll on the events API.
pub const EVENTS_WAIT_SECS_MAX: u64 = 60;

/// `GET /api/v1/events?after=&limit=&stream=&kind=&wait=`: the records after `after` (at most
/// `limit`, 1 to 10,000), waiting up to `wait` seconds for one to become durable.
pub async fn events(cx: &Ctx<'_>) -> Result<Resp, ApiError> {
    cx.operator(Role::Readonly)?;
    let q = &cx.query;
    let after = Seq(q.num("after")?.unwrap_or(0));
    let wait = q.num("wait")?.unwrap_or(0).min(EVENTS_WAIT_SECS_MAX);
    let lim = q
        .num("limit")?
        .map(|l| l as usize)
        .unwrap_or(1000)
        .clamp(1, 10_000);
    let (stream, kind) = (q.get("stream"), q.get("kind"));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let log = cx.app.engine.log();
    let mut durable = log.durable_watch();
    loop {
        let upto = log.durable_seq();
        let records = match stream {
            Some(st) => log.read_stream(st, after, lim)?,
            None => log.read_after(after, lim)?,
        };
        let records: Vec<_> = records
            .into_iter()
            .filter(|r| r.seq <= upto && kind.is_none_or(|k| r.event.kind() == k))
            .collect();
        let last_seen = records.last().map(|r| r.seq).unwrap_or(after);
        if !records.is_empty() || tokio::time::Instant::now() >= deadline {
            let mut out = Vec::new();
            for r in &records {
                serde_json::to_writer(&mut out, &views::event_record(r))
                    .map_err(|e| ApiError::internal(&e))?;
                out.push(b'\n');
            }
            let mut resp = text(200, "application/x-ndjson", out);
            resp.headers_mut().insert(
                "x-nixfleet-last-seq",
                hyper::header::HeaderValue::from(last_seen.0.max(upto.0)),
            );
            return Ok(resp);
        }
        // Wait for the durable mark to move, or the deadline.
        let _ = tokio::time::timeout_at(deadline, durable.changed()).await;
    }
}
