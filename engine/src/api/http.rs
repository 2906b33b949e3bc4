//! The HTTP side of a request: responses, the bounded body read, the query string, and [`Ctx`],
//! the one thing every handler receives.

use super::auth::{self, Operator, Principal};
use super::error::ApiError;
use super::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::Response;
use nixfleet_core::decide::Command;
use nixfleet_core::event::{Actor, Role};
use nixfleet_core::ids::MachineId;
use nixfleet_proto::api::v1 as wire;
use std::collections::HashMap;
use std::time::Instant;

/// Request bodies above this are refused with 413.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// A body over [`BODY_BYTES_MAX`] is read on and thrown away, up to this many more bytes and
/// for at most [`BODY_DRAIN_TIME`], so that a client still sending it receives the 413 instead of a
/// connection reset (the server would otherwise close with unread data in its receive buffer).
pub const BODY_DRAIN_MAX: usize = 16 << 20;
/// See [`BODY_DRAIN_MAX`].
pub const BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// Pages of lists are at most this long.
pub const PAGE_MAX: usize = 500;

/// Every answer.
pub type Resp = Response<Full<Bytes>>;

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: u16, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    text(status, "application/json", body)
}

/// An answer of another content type.
pub fn text(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// An answer without a body.
pub fn empty(status: u16) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

/// 200 with `v`, or 404 with `missing()` when there is nothing.
pub fn found<T: serde::Serialize>(
    v: Option<T>,
    missing: impl FnOnce() -> String,
) -> Result<Resp, ApiError> {
    v.map(|v| json(200, &v))
        .ok_or_else(|| ApiError::not_found(missing()))
}

/// The error answer: `{"error": ...}`, with `WWW-Authenticate` on a 401.
pub fn error(e: ApiError) -> Resp {
    let mut r = json(e.status, &wire::ErrorBody { error: e.message });
    if e.status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Why a body was not read: the refusal, and whether the connection may be reused.
pub struct BodyRefused {
    /// The answer.
    pub error: ApiError,
    /// The rest of the body was read and thrown away, so the connection may be reused.
    pub drained: bool,
}

/// The whole request body, at most [`BODY_BYTES_MAX`] bytes (else 413).
pub async fn read_body<B>(body: B) -> Result<Bytes, BodyRefused>
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

/// The query string, decoded by `form_urlencoded` (`+` is a space, `%XX` a byte, invalid
/// UTF-8 replaced); a key may repeat (`?tag=a&tag=b`).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    /// Parses the query part of a URI (`None`: no query).
    pub fn parse(q: Option<&str>) -> Query {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            out.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Query(out)
    }

    /// The first value of `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every value of `k`.
    pub fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The first value of `k` as a whole number (else 400).
    pub fn num(&self, k: &str) -> Result<Option<u64>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("query parameter {k} must be a whole number"))
                })
            })
            .transpose()
    }

    /// `limit`, between 1 and [`PAGE_MAX`], or `default`.
    pub fn limit(&self, default: usize) -> Result<usize, ApiError> {
        Ok(self
            .num("limit")?
            .map(|l| (l as usize).clamp(1, PAGE_MAX))
            .unwrap_or(default))
    }
}

/// One request as a handler sees it: the body already read, the path parameters taken out in
/// the order of the route's pattern, and the caller still to be checked (each handler does that
/// first, through [`Ctx::operator`] or [`Ctx::agent`]).
pub struct Ctx<'a> {
    /// What handlers share.
    pub app: &'a App,
    /// The connection's client certificate.
    pub principal: &'a Principal,
    /// The path parameters (`{id}`, `{name}`, `{a}`, `{b}`), as sent.
    pub params: Vec<String>,
    /// The query string.
    pub query: Query,
    /// The request headers.
    pub headers: hyper::HeaderMap,
    /// The request body (at most [`BODY_BYTES_MAX`]).
    pub body: Bytes,
}

impl Ctx<'_> {
    /// Path parameter `i`, as sent ("" if the pattern has fewer).
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }

    /// The operator calling, whose API key must have at least `role` (else 401 or 403).
    pub fn operator(&self, role: Role) -> Result<Operator, ApiError> {
        auth::require_role(self.app, &self.headers, role)
    }

    /// The machine of path parameter 0, which the caller's certificate must name (else 403);
    /// checked before the id itself, so a stranger learns nothing from a malformed one.
    pub fn agent(&self) -> Result<MachineId, ApiError> {
        auth::require_agent(self.app, self.principal, self.param(0))?;
        Ok(MachineId::parse(self.param(0))?)
    }

    /// The body as JSON of type `T` (415 for another content type, 400 for broken JSON, 422 for
    /// JSON of the wrong shape).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if let Some(ct) = self.headers.get("content-type") {
            let ct = ct.to_str().unwrap_or("");
            if !ct.is_empty() && !ct.starts_with("application/json") {
                return Err(ApiError::unsupported_media());
            }
        }
        serde_json::from_slice(&self.body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::unprocessable(format!("invalid request body: {e}"))
            }
            _ => ApiError::bad_request(format!("malformed JSON: {e}")),
        })
    }

    /// Decides and appends `cmd` for `actor`, returning once it is durable.
    pub async fn exec(
        &self,
        actor: Actor,
        cmd: Command,
    ) -> Result<crate::engine::Submitted, ApiError> {
        let started = Instant::now();
        let r = self.app.engine.execute(actor, &cmd).await?;
        metrics::histogram!("nixfleet_append_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_plus_percent_and_repeated_keys_as_the_old_hand_written_decoder_did() {
        let q = Query::parse(Some("tag=a+b&tag=c%2Fd&&flag&bad=%zz%4&utf=%C3%A9&limit=7"));
        assert_eq!(q.all("tag"), ["a b", "c/d"]);
        assert_eq!(
            q.get("flag"),
            Some(""),
            "a key without = has an empty value"
        );
        assert_eq!(
            q.get("bad"),
            Some("%zz%4"),
            "an invalid escape stays as sent"
        );
        assert_eq!(q.get("utf"), Some("é"));
        assert_eq!(q.num("limit").unwrap_or_default(), Some(7));
        assert_eq!(q.get("missing"), None);
        assert!(q.all("missing").is_empty());
        assert_eq!(Query::parse(None).get("tag"), None);
        let e = Query::parse(Some("limit=x"))
            .num("limit")
            .err()
            .map(|e| e.status);
        assert_eq!(e, Some(400));
        assert_eq!(
            Query::parse(Some("limit=9999")).limit(20).ok(),
            Some(PAGE_MAX)
        );
        assert_eq!(Query::parse(Some("limit=0")).limit(20).ok(), Some(1));
        assert_eq!(Query::parse(None).limit(20).ok(), Some(20));
    }
}
