//! Every route in one place: parse → authenticate → decide → append → respond.
//!
//! Handlers take the connection's [`Principal`] (the client certificate's CN) instead of raw TLS,
//! so tests can call [`handle`] with an injected principal and no TLS at all.

use super::error::ApiError;
use super::views;
use super::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::{Method, Request, Response};
use nixfleet_core::decide::{Command, ReportInput, SwitchInput};
use nixfleet_core::event::{
    Activation, Actor, CheckResult, Lifecycle, ReleaseEntry, Role, RolloutOptions, SwitchOutcome,
    Target,
};
use nixfleet_core::ids::*;
use nixfleet_core::plan::{plan_rollout, RolloutSpec};
use nixfleet_proto::api::v1 as wire;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Instant;

/// Request bodies above this are refused with 413.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Pages of lists are at most this long.
pub const PAGE_MAX: usize = 500;
/// Longest long-poll on the events API.
pub const EVENTS_WAIT_SECS_MAX: u64 = 60;

/// Every route: method and path pattern (`{x}` is a path parameter). The match in `route`
/// dispatches exactly these; a unit test and the OpenAPI test (`docs/openapi.yaml`) keep them in step.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/keys/bootstrap"),
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/{name}"),
    ("GET", "/api/v1/machines"),
    ("GET", "/api/v1/machines/{id}"),
    ("POST", "/api/v1/machines/{id}/register"),
    ("PATCH", "/api/v1/machines/{id}/lifecycle"),
    ("GET", "/api/v1/machines/{id}/desired-generation"),
    ("DELETE", "/api/v1/machines/{id}/desired-generation"),
    ("DELETE", "/api/v1/machines/{id}/quarantine"),
    ("POST", "/api/v1/machines/{id}/report"),
    ("POST", "/api/v1/machines/{id}/notify-deploy"),
    ("POST", "/api/v1/releases"),
    ("GET", "/api/v1/releases"),
    ("GET", "/api/v1/releases/{id}"),
    ("GET", "/api/v1/releases/{a}/diff/{b}"),
    ("DELETE", "/api/v1/releases/{id}"),
    ("POST", "/api/v1/rollouts"),
    ("POST", "/api/v1/rollouts/plan"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{id}"),
    ("POST", "/api/v1/rollouts/{id}/resume"),
    ("POST", "/api/v1/rollouts/{id}/cancel"),
    ("DELETE", "/api/v1/rollouts/{id}"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/export"),
    ("GET", "/api/v1/events"),
];

/// Who is on the other end of the connection, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No client certificate (only possible when the server runs without a client CA).
    Anonymous,
    /// A certificate signed by the fleet CA with this CN.
    Cert(String),
}

/// An operator authenticated by API key.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Key name.
    pub name: KeyName,
    /// Role.
    pub role: Role,
}

impl Operator {
    fn actor(&self) -> Actor {
        Actor::Key(self.name.clone())
    }
}

type Resp = Response<Full<Bytes>>;

fn json<T: serde::Serialize>(status: u16, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn text(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn empty(status: u16) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

fn error(e: ApiError) -> Resp {
    let mut r = json(e.status, &wire::ErrorBody { error: e.message });
    if e.status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Normalises a path for metrics labels: ids become `{id}`.
pub fn route_label(path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut out = String::new();
    for (i, s) in segs.iter().enumerate() {
        out.push('/');
        let keep = i < 2
            || matches!(
                *s,
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
        Ok(bytes) => match route(app, principal, Request::from_parts(head, Full::new(bytes))).await
        {
            Ok(r) => r,
            Err(e) => error(e),
        },
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

struct Parts {
    method: Method,
    query: HashMap<String, Vec<String>>,
    headers: hyper::HeaderMap,
}

impl Parts {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }
    fn q_num(&self, k: &str) -> Result<Option<u64>, ApiError> {
        self.q(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("query parameter {k} must be a whole number"))
                })
            })
            .transpose()
    }
}

fn parse_query(q: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A body over [`BODY_BYTES_MAX`] is read on and thrown away, up to this many more bytes and
/// for at most [`BODY_DRAIN_TIME`], so that a client still sending it receives the 413 instead of a
/// connection reset (the server would otherwise close with unread data in its receive buffer).
pub const BODY_DRAIN_MAX: usize = 16 << 20;
/// See [`BODY_DRAIN_MAX`].
pub const BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a body was not read: the refusal, and whether the connection may be reused.
struct BodyRefused {
    error: ApiError,
    drained: bool,
}

/// The whole request body, at most [`BODY_BYTES_MAX`] bytes (else 413).
async fn read_body<B>(body: B) -> Result<Bytes, BodyRefused>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyRefused {
            error: ApiError::bad_request(format!("could not read the request body: {}", e.into())),
            drained: false,
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > BODY_BYTES_MAX {
            let drain = async {
                let mut thrown = 0usize;
                while let Some(frame) = body.frame().await {
                    match frame.map(|f| f.into_data()) {
                        Ok(Ok(d)) => thrown += d.len(),
                        Ok(Err(_)) => {}
                        Err(_) => return false,
                    }
                    if thrown > BODY_DRAIN_MAX {
                        return false;
                    }
                }
                true
            };
            let drained = tokio::time::timeout(BODY_DRAIN_TIME, drain)
                .await
                .unwrap_or(false);
            return Err(BodyRefused {
                error: ApiError::too_large(BODY_BYTES_MAX),
                drained,
            });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

async fn body_json<T: serde::de::DeserializeOwned, B>(req: Request<B>) -> Result<T, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(ct) = req.headers().get("content-type") {
        let ct = ct.to_str().unwrap_or("");
        if !ct.is_empty() && !ct.starts_with("application/json") {
            return Err(ApiError::unsupported_media());
        }
    }
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            ApiError::bad_request(format!("could not read the request body: {}", e.into()))
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable(format!("invalid request body: {e}"))
        }
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

/// The machine id of `id`, if valid (ids over 128 characters and odd characters are 400).
fn machine_id(id: &str) -> Result<MachineId, ApiError> {
    Ok(MachineId::parse(id)?)
}

/// Agent routes: the certificate's CN must be the machine in the path.
fn require_agent(app: &App, principal: &Principal, id: &MachineId) -> Result<(), ApiError> {
    match principal {
        Principal::Cert(cn) if cn == id.as_str() => Ok(()),
        Principal::Cert(cn) => Err(ApiError::forbidden(format!(
            "certificate CN {cn} may not act for machine {id}"
        ))),
        Principal::Anonymous if app.insecure => Ok(()),
        Principal::Anonymous => Err(ApiError::forbidden("a client certificate is required")),
    }
}

/// Admin routes: a bearer API key with at least `role`.
fn require_role(app: &App, parts: &Parts, role: Role) -> Result<Operator, ApiError> {
    let header = parts
        .headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let key = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
    let hash: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
    let op = app
        .engine
        .read(|s| {
            s.key_for_hash(&hash).map(|k| Operator {
                name: k.name.clone(),
                role: k.role,
            })
        })
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    if op.role < role {
        return Err(ApiError::forbidden(format!(
            "API key {} has role {}; this needs {role}",
            op.name, op.role
        )));
    }
    Ok(op)
}

fn new_key() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "nfk-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let hash = Sha256::digest(key.as_bytes()).into();
    (key, hash)
}

async fn exec(app: &App, actor: Actor, cmd: Command) -> Result<crate::engine::Submitted, ApiError> {
    let started = Instant::now();
    let r = app.engine.execute(actor, &cmd).await?;
    metrics::histogram!("nixfleet_append_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(r)
}

/// An RFC 3339 time from an agent, in milliseconds (times before 1970 as 0); `None` if unreadable.
/// Accepts `Z` and numeric offsets (`+00:00`, as v0.1's chrono writes them).
fn wire_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let (base, offset_secs) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((base, off))
            if matches!(off.as_bytes(), [b'+' | b'-', _, _, b':', _, _]) && base.contains('T') =>
        {
            let h: i64 = off[1..3].parse().ok()?;
            let m: i64 = off[4..6].parse().ok()?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (base.to_owned() + "Z", sign * (h * 3600 + m * 60))
        }
        _ => (s.to_owned(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Some(Timestamp(
        u64::try_from(ms - offset_secs * 1000).unwrap_or(0),
    ))
}

/// A report's `switch` object, checked: a store path and known activation and outcome names.
fn switch_input(s: &wire::SwitchReport) -> Result<SwitchInput, ApiError> {
    Ok(SwitchInput {
        path: StorePath::parse(&s.path)?,
        activation: activation(&s.activation, "switch.activation")?,
        outcome: SwitchOutcome::parse(&s.outcome).ok_or_else(|| {
            ApiError::bad_request(format!(
                "switch.outcome {:?} is not one of: {}",
                s.outcome,
                SwitchOutcome::choices()
            ))
        })?,
        exit_code: s.exit_code,
        failed_units: s.failed_units,
    })
}

fn activation(s: &str, field: &str) -> Result<Activation, ApiError> {
    Activation::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field} {s:?} is not one of: {}",
            Activation::choices()
        ))
    })
}

fn tags(v: &[String]) -> Result<Vec<Tag>, ApiError> {
    v.iter()
        .map(|t| Tag::parse(t).map_err(ApiError::from))
        .collect()
}

fn limit(parts: &Parts, default: usize) -> Result<usize, ApiError> {
    Ok(parts
        .q_num("limit")?
        .map(|l| (l as usize).clamp(1, PAGE_MAX))
        .unwrap_or(default))
}

async fn route<B>(app: &App, principal: &Principal, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let parts = Parts {
        method: req.method().clone(),
        query: parse_query(req.uri().query()),
        headers: req.headers().clone(),
    };
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = &parts.method;
    let now = app.engine.now();
    match (segs.as_slice(), m) {
        (["health"], &Method::GET) => Ok(text(200, "text/plain", "ok")),
        (["ready"], &Method::GET) => {
            let log_seq = app.engine.log().last_seq().0;
            let applied = app.engine.read(|s| s.last_seq.0);
            let r = wire::Readiness {
                ready: applied == log_seq,
                log_seq,
                applied_seq: applied,
            };
            Ok(json(if r.ready { 200 } else { 503 }, &r))
        }
        (["metrics"], &Method::GET) => Ok(text(
            200,
            "text/plain; version=0.0.4",
            super::metrics::render(app),
        )),
        (["api", "v1", rest @ ..], _) => v1(app, principal, &parts, rest, req, now).await,
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    }
}

async fn v1<B>(
    app: &App,
    principal: &Principal,
    parts: &Parts,
    segs: &[&str],
    req: Request<B>,
    now: Timestamp,
) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let m = &parts.method;
    match (segs, m) {
        // --- keys
        (["keys", "bootstrap"], &Method::POST) => {
            let req: wire::BootstrapRequest = body_json(req).await?;
            let name = match req.name.as_deref().map(str::trim) {
                None | Some("") => "admin".to_string(),
                Some(n) => n.to_string(),
            };
            let name = KeyName::parse(&name)?;
            let (key, hash) = new_key();
            exec(
                app,
                Actor::Bootstrap,
                Command::Bootstrap {
                    name: name.clone(),
                    hash,
                },
            )
            .await?;
            tracing::info!(key = %name, "bootstrap: first admin key created");
            Ok(json(
                200,
                &wire::ApiKeyCreated {
                    key,
                    name: name.to_string(),
                    role: "admin".into(),
                },
            ))
        }
        (["keys"], &Method::GET) => {
            require_role(app, parts, Role::Admin)?;
            let keys: Vec<wire::ApiKeyInfo> = app
                .engine
                .read(|s| s.api_keys.values().map(views::api_key).collect());
            Ok(json(200, &keys))
        }
        (["keys"], &Method::POST) => {
            let op = require_role(app, parts, Role::Admin)?;
            let req: wire::CreateKeyRequest = body_json(req).await?;
            let role = Role::parse(&req.role).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "role {:?} is not one of: {}",
                    req.role,
                    Role::choices()
                ))
            })?;
            let name = KeyName::parse(&req.name)?;
            let (key, hash) = new_key();
            exec(
                app,
                op.actor(),
                Command::CreateKey {
                    name: name.clone(),
                    role,
                    hash,
                },
            )
            .await?;
            Ok(json(
                201,
                &wire::ApiKeyCreated {
                    key,
                    name: name.to_string(),
                    role: role.to_string(),
                },
            ))
        }
        (["keys", name], &Method::DELETE) => {
            let op = require_role(app, parts, Role::Admin)?;
            exec(
                app,
                op.actor(),
                Command::RevokeKey {
                    name: KeyName::parse(name)?,
                },
            )
            .await?;
            Ok(empty(204))
        }
        // --- machines
        (["machines"], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let want = tags(parts.query.get("tag").map(Vec::as_slice).unwrap_or(&[]))?;
            let list: Vec<wire::MachineStatus> = app.engine.read(|s| {
                s.machines_with_tags(&want)
                    .map(|mm| views::machine(mm, now))
                    .collect()
            });
            Ok(json(200, &list))
        }
        (["machines", id], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let id = machine_id(id)?;
            let mm = app
                .engine
                .read(|s| s.machines.get(&id).map(|mm| views::machine(mm, now)));
            mm.map(|mm| json(200, &mm))
                .ok_or_else(|| ApiError::not_found(format!("machine {id} not found")))
        }
        (["machines", id, "register"], &Method::POST) => {
            let id = machine_id(id)?;
            let op = require_role(app, parts, Role::Admin)?;
            let req: wire::RegisterRequest = body_json(req).await?;
            let lifecycle = match req.lifecycle.as_deref() {
                None => Lifecycle::Active,
                Some(l) => Lifecycle::parse(l).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "lifecycle {l:?} is not one of: {}",
                        Lifecycle::choices()
                    ))
                })?,
            };
            exec(
                app,
                op.actor(),
                Command::Register {
                    machine: id.clone(),
                    lifecycle,
                    tags: tags(&req.tags)?,
                },
            )
            .await?;
            let lc = app
                .engine
                .read(|s| s.machines.get(&id).map(|mm| mm.lifecycle.to_string()))
                .unwrap_or_default();
            Ok(json(
                201,
                &wire::RegisterResponse {
                    machine_id: id.to_string(),
                    lifecycle: lc,
                },
            ))
        }
        (["machines", id, "lifecycle"], &Method::PATCH) => {
            let id = machine_id(id)?;
            let op = require_role(app, parts, Role::Admin)?;
            let req: wire::LifecycleRequest = body_json(req).await?;
            let to = Lifecycle::parse(&req.lifecycle).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "lifecycle {:?} is not one of: {}",
                    req.lifecycle,
                    Lifecycle::choices()
                ))
            })?;
            exec(app, op.actor(), Command::SetLifecycle { machine: id, to }).await?;
            Ok(empty(200))
        }
        (["machines", id, "desired-generation"], &Method::GET) => {
            let id = machine_id(id)?;
            require_agent(app, principal, &id)?;
            let d = app.engine.read(|s| {
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
            d.map(|d| json(200, &d)).ok_or_else(|| {
                ApiError::not_found(format!("no desired generation for machine {id}"))
            })
        }
        (["machines", id, "desired-generation"], &Method::DELETE) => {
            let id = machine_id(id)?;
            let op = require_role(app, parts, Role::Admin)?;
            exec(app, op.actor(), Command::ClearDesired { machine: id }).await?;
            Ok(empty(204))
        }
        (["machines", id, "quarantine"], &Method::DELETE) => {
            let id = machine_id(id)?;
            let op = require_role(app, parts, Role::Deploy)?;
            exec(app, op.actor(), Command::ClearQuarantine { machine: id }).await?;
            Ok(empty(204))
        }
        (["machines", id, "report"], &Method::POST) => {
            let id = machine_id(id)?;
            require_agent(app, principal, &id)?;
            let r: wire::Report = body_json(req).await?;
            if r.machine_id != id.as_str() {
                return Err(ApiError::forbidden(format!(
                    "report body is for machine {:?}, the path for {id}",
                    r.machine_id
                )));
            }
            if r.current_generation.len() > 512 {
                return Err(ApiError::bad_request(
                    "current_generation is longer than 512 characters",
                ));
            }
            let generation = match r.current_generation.as_str() {
                "" => None,
                g => Some(StorePath::parse(g)?),
            };
            // When the checks ran (the agent's clock); "" (a client that sends none) leaves the
            // results to count as measured when appended. The report's own time is only used for
            // the results' age, so an unreadable one is ignored as before.
            let health_timestamp = match r.health.as_ref().map(|h| h.timestamp.as_str()) {
                None | Some("") => None,
                Some(t) => Some(wire_time(t).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "health.timestamp {t:?} is not an RFC 3339 time (e.g. 2026-01-01T00:00:00.000Z)"
                    ))
                })?),
            };
            let report_timestamp = wire_time(&r.timestamp);
            let report = ReportInput {
                generation,
                success: r.success,
                message: r.message,
                tags: tags(&r.tags)?,
                health: r.health.map(|h| {
                    let results = h
                        .results
                        .into_iter()
                        .map(|c| match c {
                            wire::HealthCheckResult::Pass {
                                check_name,
                                duration_ms,
                            } => CheckResult {
                                name: check_name,
                                passed: true,
                                duration_ms,
                                message: String::new(),
                            },
                            wire::HealthCheckResult::Fail {
                                check_name,
                                duration_ms,
                                message,
                            } => CheckResult {
                                name: check_name,
                                passed: false,
                                duration_ms,
                                message,
                            },
                        })
                        .collect();
                    (results, h.all_passed)
                }),
                agent_version: r.agent_version.chars().take(64).collect(),
                uptime_secs: r.uptime_seconds,
                dry_run: r.dry_run,
                rolled_back_from: r
                    .rolled_back_from
                    .as_deref()
                    .map(StorePath::parse)
                    .transpose()?,
            };
            let cmd = match health_timestamp {
                Some(health_timestamp) => Command::ReportMeasured {
                    machine: id.clone(),
                    report,
                    auto_register: app.auto_register,
                    health_timestamp,
                    report_timestamp,
                },
                None => Command::Report {
                    machine: id.clone(),
                    report,
                    auto_register: app.auto_register,
                },
            };
            let cmd = Command::ReportActivation {
                report: Box::new(cmd),
                machine: id.clone(),
                switch: r.switch.as_ref().map(switch_input).transpose()?,
                reboot_needed: r.reboot_needed,
            };
            exec(app, Actor::Machine(id), cmd).await?;
            Ok(empty(200))
        }
        (["machines", id, "notify-deploy"], &Method::POST) => {
            let id = machine_id(id)?;
            let op = require_role(app, parts, Role::Deploy)?;
            let req: wire::NotifyDeployRequest = body_json(req).await?;
            exec(
                app,
                op.actor(),
                Command::NotifyDeploy {
                    machine: id,
                    path: StorePath::parse(&req.store_path)?,
                },
            )
            .await?;
            Ok(empty(200))
        }
        // --- releases
        (["releases"], &Method::POST) => {
            let op = require_role(app, parts, Role::Deploy)?;
            let req: wire::CreateReleaseRequest = body_json(req).await?;
            let entries = req
                .entries
                .iter()
                .map(|e| {
                    Ok(ReleaseEntry {
                        machine: MachineId::parse(&e.hostname)?,
                        path: StorePath::parse(&e.store_path)?,
                        platform: e.platform.chars().take(64).collect(),
                        tags: tags(&e.tags)?,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            let id = ReleaseId::parse(&format!("rel-{}", uuid::Uuid::new_v4()))?;
            let n = entries.len();
            exec(
                app,
                op.actor(),
                Command::CreateRelease {
                    release: id.clone(),
                    flake_ref: req.flake_ref,
                    flake_rev: req.flake_rev,
                    cache_url: req.cache_url,
                    entries,
                },
            )
            .await?;
            Ok(json(
                201,
                &wire::CreateReleaseResponse {
                    id: id.to_string(),
                    host_count: n,
                },
            ))
        }
        (["releases"], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let lim = limit(parts, 20)?;
            let host = parts.q("host").map(MachineId::parse).transpose()?;
            let list: Vec<wire::Release> = app.engine.read(|s| {
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
        (["releases", id], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let id = ReleaseId::parse(id)?;
            app.engine
                .read(|s| s.releases.get(&id).map(views::release))
                .map(|r| json(200, &r))
                .ok_or_else(|| ApiError::not_found(format!("release {id} not found")))
        }
        (["releases", a, "diff", b], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let (a, b) = (ReleaseId::parse(a)?, ReleaseId::parse(b)?);
            let diff = app.engine.read(|s| {
                let (ra, rb) = (s.releases.get(&a)?, s.releases.get(&b)?);
                let mut d = wire::ReleaseDiff {
                    added: vec![],
                    removed: vec![],
                    changed: vec![],
                    unchanged: vec![],
                };
                for (h, e) in &rb.entries {
                    match ra.entries.get(h) {
                        None => d.added.push(h.to_string()),
                        Some(old) if old.path != e.path => {
                            d.changed.push(wire::ReleaseDiffChange {
                                hostname: h.to_string(),
                                old_store_path: old.path.to_string(),
                                new_store_path: e.path.to_string(),
                            })
                        }
                        Some(_) => d.unchanged.push(h.to_string()),
                    }
                }
                d.removed = ra
                    .entries
                    .keys()
                    .filter(|h| !rb.entries.contains_key(*h))
                    .map(|h| h.to_string())
                    .collect();
                Some(d)
            });
            diff.map(|d| json(200, &d))
                .ok_or_else(|| ApiError::not_found(format!("release {a} or {b} not found")))
        }
        (["releases", id], &Method::DELETE) => {
            let op = require_role(app, parts, Role::Admin)?;
            exec(
                app,
                op.actor(),
                Command::DeleteRelease {
                    release: ReleaseId::parse(id)?,
                },
            )
            .await?;
            Ok(empty(204))
        }
        // --- rollouts
        (["rollouts"], &Method::POST) | (["rollouts", "plan"], &Method::POST) => {
            let dry_run = segs.len() == 2;
            let op = require_role(app, parts, Role::Deploy)?;
            let req: wire::CreateRolloutRequest = body_json(req).await?;
            let spec = RolloutSpec {
                release: ReleaseId::parse(&req.release_id)?,
                strategy: req.strategy,
                batch_sizes: req.batch_sizes,
                failure_threshold: req.failure_threshold,
                on_failure: req.on_failure,
                health_timeout_secs: req.health_timeout,
                target: match req.target {
                    wire::RolloutTarget::Tags(t) => Target::Tags(tags(&t)?),
                    wire::RolloutTarget::Hosts(h) => Target::Hosts(
                        h.iter()
                            .map(|x| MachineId::parse(x))
                            .collect::<Result<_, _>>()?,
                    ),
                },
                cache_url: req.cache_url,
            };
            let options = RolloutOptions {
                activation: req
                    .activation
                    .as_deref()
                    .map(|a| activation(a, "activation"))
                    .transpose()?
                    .unwrap_or(Activation::Switch),
                allow_failed_units: req.allow_failed_units.unwrap_or(false),
            };
            let seed = req.seed.unwrap_or_else(rand::random);
            let id = RolloutId::parse(&format!("r-{}", uuid::Uuid::new_v4()))?;
            let summary = |plan: &nixfleet_core::event::RolloutPlan,
                           status: &dyn Fn(usize) -> String| {
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
            };
            if dry_run {
                let plan = app.engine.read(|s| plan_rollout(s, &spec, seed))?;
                return Ok(json(200, &summary(&plan, &|_| "pending".into())));
            }
            exec(
                app,
                op.actor(),
                Command::CreateRolloutWithOptions {
                    rollout: id.clone(),
                    spec,
                    seed,
                    options,
                },
            )
            .await?;
            let body = app.engine.read(|s| {
                s.rollouts.get(&id).map(|r| {
                    summary(&r.plan, &|i| {
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
        (["rollouts"], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let status = parts.q("status").map(|s| {
                nixfleet_core::event::RolloutStatus::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "status {s:?} is not one of: {}",
                        nixfleet_core::event::RolloutStatus::choices()
                    ))
                })
            });
            let status = status.transpose()?;
            let lim = limit(parts, 100)?;
            let list: Vec<wire::RolloutDetail> = app.engine.read(|s| {
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
        (["rollouts", id], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let id = RolloutId::parse(id)?;
            // Its stream starts at its creation: the read never opens older archive segments.
            let Some(created) = app
                .engine
                .read(|s| s.rollouts.get(&id).map(|r| r.created_seq))
            else {
                return Err(ApiError::not_found(format!("rollout {id} not found")));
            };
            let timeline = app.engine.log().read_stream(
                &format!("rollout:{id}"),
                Seq(created.0.saturating_sub(1)),
                10_000,
            )?;
            let durable = app.engine.log().durable_seq();
            let timeline: Vec<_> = timeline.into_iter().filter(|r| r.seq <= durable).collect();
            app.engine
                .read(|s| s.rollouts.get(&id).map(|r| views::rollout(s, r, &timeline)))
                .map(|r| json(200, &r))
                .ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))
        }
        (["rollouts", id, action @ ("resume" | "cancel")], &Method::POST) => {
            let op = require_role(app, parts, Role::Deploy)?;
            let rollout = RolloutId::parse(id)?;
            let cmd = if *action == "resume" {
                Command::ResumeRollout {
                    rollout: rollout.clone(),
                }
            } else {
                Command::CancelRollout {
                    rollout: rollout.clone(),
                }
            };
            exec(app, op.actor(), cmd).await?;
            let status = app
                .engine
                .read(|s| s.rollouts.get(&rollout).map(|r| r.status.to_string()))
                .unwrap_or_default();
            Ok(json(
                200,
                &serde_json::json!({"rollout_id": rollout.to_string(), "status": status}),
            ))
        }
        (["rollouts", id], &Method::DELETE) => {
            let op = require_role(app, parts, Role::Admin)?;
            exec(
                app,
                op.actor(),
                Command::DeleteRollout {
                    rollout: RolloutId::parse(id)?,
                },
            )
            .await?;
            Ok(empty(204))
        }
        // --- audit and events
        (["audit"], &Method::GET) | (["audit", "export"], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let lim = limit(parts, 100)?;
            let (actor, action, target) = (parts.q("actor"), parts.q("action"), parts.q("target"));
            let rows: Vec<wire::AuditEntry> = app.engine.read(|s| {
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
            });
            if segs.len() == 1 {
                return Ok(json(200, &rows));
            }
            let mut csv = String::from("timestamp,actor,action,target,detail\n");
            for r in rows {
                let cells =
                    [r.timestamp, r.actor, r.action, r.target, r.detail].map(|c| csv_cell(&c));
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
        (["events"], &Method::GET) => {
            require_role(app, parts, Role::Readonly)?;
            let after = Seq(parts.q_num("after")?.unwrap_or(0));
            let wait = parts.q_num("wait")?.unwrap_or(0).min(EVENTS_WAIT_SECS_MAX);
            let lim = parts
                .q_num("limit")?
                .map(|l| l as usize)
                .unwrap_or(1000)
                .clamp(1, 10_000);
            let (stream, kind) = (
                parts.q("stream").map(str::to_owned),
                parts.q("kind").map(str::to_owned),
            );
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
            let mut durable = app.engine.log().durable_watch();
            loop {
                let upto = app.engine.log().durable_seq();
                let records = match &stream {
                    Some(st) => app.engine.log().read_stream(st, after, lim)?,
                    None => app.engine.log().read_after(after, lim)?,
                };
                let records: Vec<_> = records
                    .into_iter()
                    .filter(|r| {
                        r.seq <= upto && kind.as_deref().is_none_or(|k| r.event.kind() == k)
                    })
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
        _ => Err(ApiError::not_found(format!(
            "no route for {} /api/v1/{}",
            m,
            segs.join("/")
        ))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, ManualClock};
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
        for (method, pattern) in ROUTES {
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
    fn agent_times_are_read_with_any_offset_to_the_millisecond() {
        let utc = Some(Timestamp(1_767_225_600_123));
        assert_eq!(wire_time("2026-01-01T00:00:00.123Z"), utc);
        assert_eq!(wire_time("2026-01-01T00:00:00.123456789+00:00"), utc);
        assert_eq!(wire_time("2026-01-01T02:00:00.123+02:00"), utc);
        assert_eq!(wire_time("2025-12-31T23:30:00.123-00:30"), utc);
        assert_eq!(
            wire_time("2026-01-01T00:00:00Z"),
            Some(Timestamp(1_767_225_600_000))
        );
        assert_eq!(wire_time("yesterday"), None);
        assert_eq!(wire_time(""), None);
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
