//! The agent's only connection to the control plane: two routes of `api::v1`.
//!
//! HTTPS through ureq and rustls (ring), with an optional client certificate (mTLS; the control plane
//! checks that its CN equals the machine id) and an optional CA file. When a CA file is given, the
//! agent trusts exactly the certificates in it, not the public web roots: a fleet's control plane is
//! signed by the fleet CA, and pinning it keeps a public CA from impersonating the control plane.
//! Without one, the Mozilla roots (webpki-roots) are used.

use crate::config::{Config, TlsFiles};
use nixfleet_proto::api::v1::{paths, DesiredGeneration, Report};
use std::path::Path;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig};

/// Deadline of one request to the control plane.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    base: String,
    machine_id: String,
}

impl ControlPlane {
    /// Builds the client, reading the TLS files. Errors are one line naming the file.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        Self::with(
            &cfg.control_plane_url,
            &cfg.machine_id,
            &cfg.tls,
            cfg.allow_insecure,
        )
    }

    /// Builds the client from its parts.
    pub fn with(
        base: &str,
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
            .http_status_as_error(false)
            .https_only(!allow_insecure)
            .max_redirects(0)
            .user_agent(concat!("nixfleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(ControlPlane {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            machine_id: machine_id.to_owned(),
        })
    }

    /// `GET …/desired-generation`: `None` on 404 (nothing to do).
    pub fn desired_generation(&self) -> Result<Option<DesiredGeneration>, ClientError> {
        let url = format!(
            "{}{}",
            self.base,
            paths::desired_generation(&self.machine_id)
        );
        let sent = self
            .agent
            .get(&url)
            .header("accept", "application/json")
            .call();
        let (status, body) = answer("GET", &url, sent)?;
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
        let url = format!("{}{}", self.base, paths::report(&self.machine_id));
        let json = serde_json::to_string(report).expect("a Report always serializes");
        let sent = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(json);
        match answer("POST", &url, sent)? {
            (200..300, _) => Ok(()),
            (status, body) => Err(status_error("POST", url, status, &body)),
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
