//! The one mapping from failures to HTTP statuses. A 500 never leaks its cause; it is logged.

use crate::engine::EngineError;
use crate::log::LogError;
use nixfleet_core::Rejection;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Message for the client.
    pub message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    /// 401.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        ApiError {
            status: 401,
            message: m.into(),
        }
    }
    /// 403.
    pub fn forbidden(m: impl Into<String>) -> Self {
        ApiError {
            status: 403,
            message: m.into(),
        }
    }
    /// 404.
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    /// 405.
    pub fn method_not_allowed() -> Self {
        ApiError {
            status: 405,
            message: "method not allowed on this path".into(),
        }
    }
    /// 413.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: 413,
            message: format!("request body over {limit} bytes"),
        }
    }
    /// 415.
    pub fn unsupported_media() -> Self {
        ApiError {
            status: 415,
            message: "send the body as application/json".into(),
        }
    }
    /// 422.
    pub fn unprocessable(m: impl Into<String>) -> Self {
        ApiError {
            status: 422,
            message: m.into(),
        }
    }
    /// 500, with the cause logged and not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        ApiError {
            status: 500,
            message: "internal server error".into(),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid(m) => ApiError {
                status: 400,
                message: m,
            },
            Rejection::NotFound(m) => ApiError {
                status: 404,
                message: m,
            },
            Rejection::Conflict(m) => ApiError {
                status: 409,
                message: m,
            },
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            // A shared log's database is unreachable, or the write lost a race ten times over:
            // nothing was appended, and the same request may succeed in a moment (or on another
            // control plane).
            LogError::Unavailable(_) | LogError::Conflict => {
                tracing::warn!(error = %e, "write refused: the event log is unavailable");
                ApiError {
                    status: 503,
                    message: "the event log is unavailable (its database cannot be reached); \
                              nothing was recorded, retry later or on another control plane"
                        .into(),
                }
            }
            LogError::Uncertain(_) => {
                tracing::warn!(error = %e, "write outcome unknown: the database connection broke during the commit");
                ApiError {
                    status: 503,
                    message: "commit outcome unknown: the connection to the event log's database \
                              broke during the commit, so the request may or may not have been \
                              recorded; check before sending it again"
                        .into(),
                }
            }
            e => ApiError::internal(&e),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Rejected(r) => r.into(),
            EngineError::Log(l) => l.into(),
        }
    }
}

impl From<nixfleet_core::ids::InvalidId> for ApiError {
    fn from(e: nixfleet_core::ids::InvalidId) -> Self {
        ApiError::bad_request(e.to_string())
    }
}
