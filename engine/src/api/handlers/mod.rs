//! One function per route, all of one signature ([`Handler`]): each takes the request's [`Ctx`]
//! and checks its caller first (an API key's role, or the agent's certificate), before it reads
//! a path id, the query or the body, so a caller without the right learns nothing from a
//! malformed id: it gets 401 or 403, never 400. Then it parses, decides, appends and answers.

pub mod agent;
pub mod audit;
pub mod events;
pub mod health;
pub mod keys;
pub mod machines;
pub mod releases;
pub mod rollouts;

use super::error::ApiError;
use super::http::{empty, Ctx, Resp};
use nixfleet_core::decide::Command;
use nixfleet_core::event::Role;
use std::future::Future;
use std::pin::Pin;

/// What a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Resp, ApiError>> + Send + 'a>>;

/// The one signature of every handler in the `ROUTES` table.
pub type Handler = for<'a> fn(&'a Ctx<'a>) -> HandlerFuture<'a>;

/// `async fn name(cx: &Ctx<'_>) -> Result<Resp, ApiError>` as a [`Handler`].
macro_rules! handler {
    ($f:path) => {{
        fn boxed<'a>(
            cx: &'a $crate::api::http::Ctx<'a>,
        ) -> $crate::api::handlers::HandlerFuture<'a> {
            Box::pin($f(cx))
        }
        boxed as $crate::api::handlers::Handler
    }};
}
pub(crate) use handler;

/// The common operator route: an API key of at least `role`, then the command `build` makes
/// of the request (path ids, body), appended; the answer is `status` without a body.
pub async fn command(
    cx: &Ctx<'_>,
    role: Role,
    status: u16,
    build: impl FnOnce(&Ctx<'_>) -> Result<Command, ApiError>,
) -> Result<Resp, ApiError> {
    let op = cx.operator(role)?;
    let cmd = build(cx)?;
    cx.exec(op.actor(), cmd).await?;
    Ok(empty(status))
}
