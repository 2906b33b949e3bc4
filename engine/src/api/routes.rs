//! The one dispatch: [`ROUTES`] maps each method and path pattern to its handler, and
//! [`handle`] reads the body, finds the route, runs its handler, holds the answer until what it
//! shows is durable, and counts it in the metrics.
//!
//! Handlers take the connection's [`Principal`] (the client certificate's CN) instead of raw TLS,
//! so tests can call [`handle`] with an injected principal and no TLS at all.

use super::error::ApiError;
use super::handlers::Handler;
use super::handlers::{agent, audit, events, handler, health, keys, machines, releases, rollouts};
use super::http::{error, read_body, BodyRefused, Ctx, Query, Resp};
use super::App;
use bytes::Bytes;
use hyper::body::Body;
use hyper::Request;
use std::time::Instant;

pub use super::auth::{Operator, Principal};
pub use super::handlers::audit::csv_cell;
pub use super::handlers::events::EVENTS_WAIT_SECS_MAX;
pub use super::http::{BODY_BYTES_MAX, BODY_DRAIN_MAX, BODY_DRAIN_TIME, PAGE_MAX};

/// Every route: method, path pattern (`{x}` is a path parameter, handed to the handler in
/// order) and handler. The first entry whose method and pattern match serves the request; a unit
/// test and the OpenAPI test (`docs/openapi.yaml`) keep this table and the document in step.
#[rustfmt::skip]
pub const ROUTES: &[(&str, &str, Handler)] = &[
    ("GET", "/health", handler!(health::health)),
    ("GET", "/ready", handler!(health::ready)),
    ("GET", "/metrics", handler!(health::metrics)),
    ("POST", "/api/v1/keys/bootstrap", handler!(keys::bootstrap)),
    ("GET", "/api/v1/keys", handler!(keys::list)),
    ("POST", "/api/v1/keys", handler!(keys::create)),
    ("DELETE", "/api/v1/keys/{name}", handler!(keys::revoke)),
    ("GET", "/api/v1/machines", handler!(machines::list)),
    ("GET", "/api/v1/machines/{id}", handler!(machines::get)),
    ("POST", "/api/v1/machines/{id}/register", handler!(machines::register)),
    ("PATCH", "/api/v1/machines/{id}/lifecycle", handler!(machines::set_lifecycle)),
    ("GET", "/api/v1/machines/{id}/desired-generation", handler!(agent::desired_generation)),
    ("DELETE", "/api/v1/machines/{id}/desired-generation", handler!(machines::clear_desired)),
    ("DELETE", "/api/v1/machines/{id}/quarantine", handler!(machines::clear_quarantine)),
    ("POST", "/api/v1/machines/{id}/report", handler!(agent::report)),
    ("POST", "/api/v1/machines/{id}/notify-deploy", handler!(machines::notify_deploy)),
    ("POST", "/api/v1/releases", handler!(releases::create)),
    ("GET", "/api/v1/releases", handler!(releases::list)),
    ("GET", "/api/v1/releases/{id}", handler!(releases::get)),
    ("GET", "/api/v1/releases/{a}/diff/{b}", handler!(releases::diff)),
    ("DELETE", "/api/v1/releases/{id}", handler!(releases::delete)),
    ("POST", "/api/v1/rollouts", handler!(rollouts::create)),
    ("POST", "/api/v1/rollouts/plan", handler!(rollouts::plan)),
    ("GET", "/api/v1/rollouts", handler!(rollouts::list)),
    ("GET", "/api/v1/rollouts/{id}", handler!(rollouts::get)),
    ("POST", "/api/v1/rollouts/{id}/resume", handler!(rollouts::resume)),
    ("POST", "/api/v1/rollouts/{id}/cancel", handler!(rollouts::cancel)),
    ("DELETE", "/api/v1/rollouts/{id}", handler!(rollouts::delete)),
    ("GET", "/api/v1/audit", handler!(audit::list)),
    ("GET", "/api/v1/audit/export", handler!(audit::export)),
    ("GET", "/api/v1/events", handler!(events::events)),
];

/// Normalises a path for metrics labels: ids become `{id}`.
pub fn route_label(path: &str) -> String {
    // Per request (the metrics' label): no vector of segments (issue 16's profile).
    let mut out = String::with_capacity(path.len() + 1);
    for (i, s) in path.trim_matches('/').split('/').enumerate() {
        out.push('/');
        let keep = i < 2
            || matches!(
                s,
                "machines"
                    | "releases"
                    | "rollouts"
                    | "keys"
                    | "audit"
                    | "events"
                    | "report"
                    | "register"
                    | "lifecycle"
                    | "desired-generation"
                    | "notify-deploy"
                    | "quarantine"
                    | "diff"
                    | "resume"
                    | "cancel"
                    | "plan"
                    | "export"
                    | "bootstrap"
            );
        out.push_str(if keep { s } else { "{id}" });
    }
    out
}

/// Answers one request.
pub async fn handle<B>(app: &App, principal: &Principal, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The body is read (up to the cap) before anything is decided, so that an early refusal
    // (401, 403, 400 on a path id) reaches a client still sending a large body: a reply sent over
    // an unread body makes hyper drop the connection, and the client sees a reset instead.
    let (head, body) = req.into_parts();
    let mut resp = match read_body(body).await {
        Ok(body) => {
            let query = Query::parse(head.uri.query());
            match dispatch(
                app,
                principal,
                &head.method,
                &path,
                query,
                head.headers,
                body,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => error(e),
            }
        }
        Err(BodyRefused { error: e, drained }) => {
            let mut r = error(e);
            if !drained {
                // The rest of the body was not read: the connection cannot be reused.
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            r
        }
    };
    // Durable reads: whatever this answer shows (a desired generation, a rollout's status, a
    // metric, an event) may come from events staged but not yet synced. Nothing leaves before
    // the log is durable up to everything staged when the answer was made, so no crash can take
    // back what a client was told. Liveness (`/health`) shows nothing of the log.
    if path != "/health" {
        if let Err(e) = app.engine.wait_staged_durable().await {
            resp = error(e.into());
        }
    }
    if path != "/metrics" && path != "/health" {
        let labels = [
            ("method", method.to_string()),
            ("path", route_label(&path)),
            ("status", resp.status().as_u16().to_string()),
        ];
        metrics::counter!("nixfleet_http_requests_total", &labels).increment(1);
        metrics::histogram!("nixfleet_http_request_duration_seconds", &labels[..2])
            .record(started.elapsed().as_secs_f64());
    }
    resp
}

/// The handler of the first route whose method and pattern match, with the path parameters.
fn find(method: &str, segs: &[&str]) -> Option<(Handler, Vec<String>)> {
    // Per request: the patterns are walked in place, not split into vectors (that was about 3 %
    // of the control plane's CPU per report in issue 16's profile).
    ROUTES.iter().find_map(|(m, pattern, h)| {
        let parts = || pattern.split('/').skip(1);
        if *m != method
            || parts().count() != segs.len()
            || !parts()
                .zip(segs)
                .all(|(p, s)| p.starts_with('{') || p == *s)
        {
            return None;
        }
        let params = parts()
            .zip(segs)
            .filter(|(p, _)| p.starts_with('{'))
            .map(|(_, s)| (*s).to_owned())
            .collect();
        Some((*h, params))
    })
}

/// Finds the route (a trailing `/` is ignored) and runs its handler; 404 when none matches.
async fn dispatch(
    app: &App,
    principal: &Principal,
    method: &hyper::Method,
    path: &str,
    query: Query,
    headers: hyper::HeaderMap,
    body: Bytes,
) -> Result<Resp, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let Some((handler, params)) = find(method.as_str(), &segs) else {
        return Err(ApiError::not_found(match segs.as_slice() {
            ["api", "v1", rest @ ..] => format!("no route for {method} /api/v1/{}", rest.join("/")),
            _ => format!("no route for {path}"),
        }));
    };
    let cx = Ctx {
        app,
        principal,
        params,
        query,
        headers,
        body,
    };
    handler(&cx).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, ManualClock};
    use http_body_util::{BodyExt, Full};
    use nixfleet_core::ids::Timestamp;
    use std::sync::Arc;

    fn app() -> App {
        let clock = Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)));
        App {
            engine: Arc::new(Engine::in_memory(clock)),
            metrics: super::super::metrics::install(),
            insecure: false,
            auto_register: true,
        }
    }

    async fn call(app: &App, method: &str, path: &str) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request");
        let resp = handle(app, &Principal::Cert("web-01".into()), req).await;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn every_listed_route_is_dispatched_and_nothing_else_is() {
        let app = app();
        for (method, pattern, _) in ROUTES {
            let path = pattern
                .replace("{id}", "web-01")
                .replace("{name}", "ci")
                .replace("{a}", "rel-a")
                .replace("{b}", "rel-b");
            let (status, body) = call(&app, method, &path).await;
            assert!(
                !body.contains("no route"),
                "{method} {pattern} is listed but not dispatched ({status} {body})"
            );
        }
        for (method, path) in [
            ("GET", "/nope"),
            ("PUT", "/api/v1/machines"),
            ("GET", "/api/v1/machines/web-01/nope"),
            ("POST", "/health"),
        ] {
            let (status, body) = call(&app, method, path).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert!(body.contains("no route"), "{method} {path}: {body}");
        }
    }

    #[tokio::test]
    async fn handlers_take_an_injected_principal_without_tls() {
        let app = app();
        let body = r#"{"machine_id":"web-01","current_generation":"","success":true}"#;
        let req = |cn: &str| {
            (
                Request::builder()
                    .method("POST")
                    .uri("/api/v1/machines/web-01/report")
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid"),
                Principal::Cert(cn.into()),
            )
        };
        let (r, p) = req("web-01");
        assert_eq!(handle(&app, &p, r).await.status(), 200);
        let (r, p) = req("db-01");
        assert_eq!(handle(&app, &p, r).await.status(), 403);
        let r = Request::builder()
            .method("POST")
            .uri("/api/v1/machines/web-01/report")
            .body(Full::new(Bytes::from(body)))
            .expect("valid");
        assert_eq!(
            handle(&app, &Principal::Anonymous, r).await.status(),
            403,
            "no certificate, not insecure: refused"
        );
    }

    #[test]
    fn route_labels_hide_ids() {
        assert_eq!(
            route_label("/api/v1/machines/web-01/report"),
            "/api/v1/machines/{id}/report"
        );
        assert_eq!(
            route_label("/api/v1/rollouts/r-1/resume"),
            "/api/v1/rollouts/{id}/resume"
        );
    }
}
