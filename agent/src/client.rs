//! The agent's only connection to the control plane: two routes of `api::v1`.
//!
//! HTTPS through ureq and rustls (ring), with an optional client certificate (mTLS; the control plane
//! checks that its CN equals the machine id) and an optional CA file. When a CA file is given, the
//! agent trusts exactly the certificates in it, not the public web roots: a fleet's control plane is
//! signed by the fleet CA, and pinning it keeps a public CA from impersonating the control plane.
//! Without one, the Mozilla roots (webpki-roots) are used.
//!
//! Several control planes may be given. A request goes to the one that answered last (sticky); on a
//! connection failure (refused, TLS handshake failure, timeout, reset before an answer) or an HTTP
//! 503 it goes to the next, in order, wrapping around, at most once to each; when all fail, the
//! last failure is returned as with one control plane. Both requests are safe to send twice: the
//! GET reads, and a report is a snapshot of the machine (applied twice, it leaves the projections
//! as once, apart from one more health history entry and audit row; see docs/agent.md).

use crate::config::{Config, TlsFiles};
use nixfleet_proto::api::v1::{paths, DesiredGeneration, ErrorBody, Report};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig};

/// Deadline of one request to the control plane.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of the connection (TCP and TLS handshake) to one control plane, so an unreachable one
/// costs less than a whole request's deadline before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read from the control plane.
const BODY_LIMIT_BYTES: u64 = 1024 * 1024;

/// A failed exchange with the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection, TLS or protocol failure.
    #[error("{method} {url}: {source}")]
    Transport {
        /// GET or POST.
        method: &'static str,
        /// The URL.
        url: String,
        /// The cause.
        source: Box<ureq::Error>,
    },
    /// An unexpected status.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        /// GET or POST.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A 200 whose body is not the expected JSON.
    #[error("GET {url}: unexpected body: {error}")]
    Body {
        /// The URL.
        url: String,
        /// The parse error.
        error: String,
    },
}

/// The control plane as the agent sees it.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    agent: ureq::Agent,
    bases: Vec<String>,
    /// Index in `bases` of the control plane the next request goes to first.
    current: Cell<usize>,
    machine_id: String,
}

impl ControlPlane {
    /// Builds the client, reading the TLS files. Errors are one line naming the file.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        Self::with(
            &cfg.control_plane_urls,
            &cfg.machine_id,
            &cfg.tls,
            cfg.allow_insecure,
        )
    }

    /// Builds the client from its parts; `bases` holds at least one URL.
    pub fn with(
        bases: &[String],
        machine_id: &str,
        tls: &TlsFiles,
        allow_insecure: bool,
    ) -> Result<Self, String> {
        let mut tls_cfg = TlsConfig::builder();
        if let Some(ca) = &tls.ca_cert {
            let certs = read_certs(ca, "--ca-cert")?;
            tls_cfg = tls_cfg.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let Some((cert, key)) = &tls.client {
            let chain = read_certs(cert, "--client-cert")?;
            let key = read_key(key)?;
            tls_cfg = tls_cfg.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls_cfg.build())
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .https_only(!allow_insecure)
            .max_redirects(0)
            .user_agent(concat!("nixfleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        if bases.is_empty() {
            return Err("no control plane URL".into());
        }
        Ok(ControlPlane {
            agent,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            current: Cell::new(0),
            machine_id: machine_id.to_owned(),
        })
    }

    /// Sends `send(agent, url)` for `path` to the current control plane, then on a connection
    /// failure or a 503 to each next one in turn (see the module docs). The URL that gave the
    /// answer, its status and body, or the last failure.
    fn exchange(
        &self,
        method: &'static str,
        path: &str,
        send: impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(String, u16, String), ClientError> {
        let count = self.bases.len();
        let first = self.current.get() % count;
        let mut tried = 0;
        loop {
            let at = (first + tried) % count;
            let url = format!("{}{}", self.bases[at], path);
            let outcome = answer(method, &url, send(&self.agent, &url));
            let why = match &outcome {
                Err(ClientError::Transport { source, .. }) => connection_failure(source),
                Ok((503, body)) => {
                    // The control plane's JSON error, else the start of the body.
                    let said = serde_json::from_str::<ErrorBody>(body).map(|b| b.error);
                    Some(format!(
                        "HTTP 503: {}",
                        said.unwrap_or_else(|_| excerpt(body))
                    ))
                }
                Ok(_) | Err(_) => None,
            };
            tried += 1;
            match why {
                Some(why) if tried < count => {
                    let next = (at + 1) % count;
                    tracing::warn!(
                        "control plane {} unreachable ({why}), trying {}",
                        self.bases[at],
                        self.bases[next]
                    );
                    self.current.set(next);
                }
                _ => return outcome.map(|(status, body)| (url, status, body)),
            }
        }
    }

    /// `GET …/desired-generation`: `None` on 404 (nothing to do).
    pub fn desired_generation(&self) -> Result<Option<DesiredGeneration>, ClientError> {
        let path = paths::desired_generation(&self.machine_id);
        let (url, status, body) = self.exchange("GET", &path, |agent, url| {
            agent.get(url).header("accept", "application/json").call()
        })?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ClientError::Body {
                    url,
                    error: e.to_string(),
                }),
            404 => Ok(None),
            _ => Err(status_error("GET", url, status, &body)),
        }
    }

    /// `POST …/report`.
    pub fn report(&self, report: &Report) -> Result<(), ClientError> {
        let json = serde_json::to_string(report).expect("a Report always serializes");
        let path = paths::report(&self.machine_id);
        let sent = self.exchange("POST", &path, |agent, url| {
            agent
                .post(url)
                .header("content-type", "application/json")
                .send(&json)
        })?;
        match sent {
            (_, 200..300, _) => Ok(()),
            (url, status, body) => Err(status_error("POST", url, status, &body)),
        }
    }
}

/// The status and body (at most [`BODY_LIMIT_BYTES`]) of the answer to `method url`, or the
/// transport failure.
fn answer(
    method: &'static str,
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), ClientError> {
    let mut resp = sent.map_err(|e| ClientError::Transport {
        method,
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT_BYTES)
        .read_to_string()
        .unwrap_or_default();
    Ok((resp.status().as_u16(), body))
}

/// Why `e` means the control plane could not be reached (so the next one is tried): a refused,
/// reset or timed-out connection, or a failed TLS handshake. `None` for anything else.
fn connection_failure(e: &ureq::Error) -> Option<String> {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::TimedOut
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable
                // rustls' handshake failures and alerts.
                | K::InvalidData
        )
        .then(|| io.to_string()),
        ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => Some(e.to_string()),
        _ => None,
    }
}

fn status_error(method: &'static str, url: String, status: u16, body: &str) -> ClientError {
    ClientError::Status {
        method,
        url,
        status,
        body: excerpt(body),
    }
}

fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(300).collect()
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<Certificate<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot parse {flag} {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{flag} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<ureq::tls::PrivateKey<'static>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read --client-key {}: {e}", path.display()))?;
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::PrivateKey(k)) => return Ok(k),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot parse --client-key {}: {e}", path.display())),
        }
    }
    Err(format!(
        "--client-key {} holds no PEM private key",
        path.display()
    ))
}
