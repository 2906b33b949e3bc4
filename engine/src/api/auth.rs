//! Who is calling: the connection's [`Principal`] (agents: certificate CN = the machine in the
//! path), the [`Operator`] behind a bearer API key (role readonly < deploy < admin), and the
//! minting of new keys (only their SHA-256 is ever stored).

use super::error::ApiError;
use super::App;
use nixfleet_core::event::{Actor, Role};
use nixfleet_core::ids::KeyName;
use sha2::{Digest, Sha256};

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
    /// The actor its commands are logged under (`apikey:NAME`).
    pub fn actor(&self) -> Actor {
        Actor::Key(self.name.clone())
    }
}

/// Agent routes: the certificate's CN must be the machine in the path, compared as sent, before
/// the id is parsed (a CN is never a malformed id, so a malformed one is someone else's: 403).
pub fn require_agent(app: &App, principal: &Principal, id: &str) -> Result<(), ApiError> {
    match principal {
        Principal::Cert(cn) if cn == id => Ok(()),
        Principal::Cert(cn) => Err(ApiError::forbidden(format!(
            "certificate CN {cn} may not act for machine {id}"
        ))),
        Principal::Anonymous if app.insecure => Ok(()),
        Principal::Anonymous => Err(ApiError::forbidden("a client certificate is required")),
    }
}

/// Operator routes: a bearer API key with at least `role` (401 without a known key, 403 below
/// the role).
pub fn require_role(
    app: &App,
    headers: &hyper::HeaderMap,
    role: Role,
) -> Result<Operator, ApiError> {
    let header = headers
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

/// A new API key (`nfk-` and 64 hex digits of 32 random bytes) and its SHA-256.
pub fn new_key() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "nfk-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let hash = Sha256::digest(key.as_bytes()).into();
    (key, hash)
}
