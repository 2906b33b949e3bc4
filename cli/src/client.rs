//! The control plane HTTP client: ureq over rustls (ring), extra CA, client certificate, API key.
//!
//! Every response is classified here, once: 2xx is decoded, 4xx becomes [`CliError::Rejected`]
//! carrying the server's own message, 5xx becomes [`CliError::Server`], and transport failures
//! become [`CliError::Unreachable`] with a hint about which setting to check.
//!
//! With several control plane URLs, a request goes first to the one that answered last (sticky),
//! and on a connection failure or a 503 to the next, in order, wrapping around, at most once to
//! each; a line on stderr says so. A GET is resent after any such failure. A write (POST, PATCH,
//! DELETE) is resent only when it cannot have reached the control plane (connection refused or
//! timed out, TLS handshake refused, a 503 other than the front end's request timeout): a write
//! whose connection broke or timed out after it was sent may have been applied, so it fails as
//! with one control plane and says to check before running it again (docs/cli.md).

use crate::error::{CliError, Result};
use crate::settings::Settings;
use nixfleet_proto::api::v1::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// How long one request may take end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting (TCP and TLS) to one control plane may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The error of the control plane's own 503 when a request outlives its deadline: the command may
/// still be applied, so a write is not resent after it.
const REQUEST_TIMED_OUT: &str = "request timed out";
/// How the control plane's 503 begins when its database connection broke during a commit: the
/// write may have been recorded, so it is not resent either.
const COMMIT_UNCERTAIN: &str = "commit outcome unknown";
/// System roots, added next to `--ca-cert` so a public CA keeps working.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A configured client for one control plane.
pub struct Client {
    agent: ureq::Agent,
    bases: Vec<String>,
    /// Index in `bases` of the control plane the next request goes to first.
    current: AtomicUsize,
    api_key: Option<String>,
    verbose: u8,
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Client {
    /// Builds a client from the resolved settings. Fails on unreadable or half-given TLS files.
    pub fn new(settings: &Settings) -> Result<Client> {
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &settings.ca_cert {
            let mut roots = read_certs(ca, "--ca-cert")?;
            if roots.is_empty() {
                return Err(CliError::usage(format!(
                    "--ca-cert {}: no certificate in the file",
                    ca.display()
                )));
            }
            if let Ok(bundle) = std::fs::read(
                std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_BUNDLE.into()),
            ) {
                roots.extend(parse_certs(&bundle));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&roots));
        }
        match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--client-cert")?;
                if chain.is_empty() {
                    return Err(CliError::usage(format!("--client-cert {}: no certificate in the file", cert.display())));
                }
                let key = read_key(key)?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::usage(
                    "--client-cert and --client-key go together; give both (or [tls] client-cert and client-key) or neither",
                ))
            }
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .tls_config(tls.build())
            .user_agent(concat!("nixfleet/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            bases: settings.control_plane_urls.clone(),
            current: AtomicUsize::new(0),
            api_key: settings.api_key.clone(),
            verbose: settings.verbose,
        })
    }

    /// Sends a request and returns (status, body) for any 2xx; errors otherwise. Goes to the next
    /// control plane when this one cannot be reached (see the module docs).
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String)> {
        let payload = body.map(|b| serde_json::to_vec(b).expect("a JSON value always serializes"));
        let count = self.bases.len().max(1);
        let first = self.current.load(Ordering::Relaxed) % count;
        let mut tried = 0;
        loop {
            let at = (first + tried) % count;
            tried += 1;
            let base = &self.bases[at];
            let outcome = self.send_to(base, method, path, payload.as_deref());
            let why = match &outcome {
                Err(Failure::Transport(e)) => unreachable_why(e, method == Method::Get),
                Ok((503, text)) => {
                    let server = server_message(text);
                    let maybe_applied =
                        server == REQUEST_TIMED_OUT || server.starts_with(COMMIT_UNCERTAIN);
                    (method == Method::Get || !maybe_applied).then(|| format!("HTTP 503: {server}"))
                }
                Ok(_) | Err(Failure::Body(_)) => None,
            };
            if let (Some(why), true) = (why, tried < count) {
                let next = (at + 1) % count;
                eprintln!(
                    "warning: control plane {base} unreachable ({why}), trying {}",
                    self.bases[next]
                );
                self.current.store(next, Ordering::Relaxed);
                continue;
            }
            return match outcome {
                Ok((status @ 200..=299, text)) => Ok((status, text)),
                Ok((status, text)) => Err(self.status_error(status, &text)),
                Err(Failure::Body(e)) => Err(CliError::Server(e)),
                Err(Failure::Transport(e)) => Err(transport_error(base, method, e)),
            };
        }
    }

    /// One request to the control plane at `base`: its status and body, or what failed.
    fn send_to(
        &self,
        base: &str,
        method: Method,
        path: &str,
        payload: Option<&[u8]>,
    ) -> std::result::Result<(u16, String), Failure> {
        let url = format!("{base}{path}");
        if self.verbose >= 2 {
            eprintln!("> {method:?} {url}");
        }
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let with_auth = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        let with_auth_b = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        let sent = match method {
            Method::Get => with_auth(self.agent.get(&url)).call(),
            Method::Delete => with_auth(self.agent.delete(&url)).call(),
            Method::Post | Method::Patch => {
                let req = match method {
                    Method::Post => self.agent.post(&url),
                    _ => self.agent.patch(&url),
                };
                let req = with_auth_b(req).header("Content-Type", "application/json");
                match payload {
                    Some(p) => req.send(p),
                    None => req.send_empty(),
                }
            }
        };
        let mut resp = sent.map_err(Failure::Transport)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| Failure::Body(format!("reading the answer of {url} failed: {e}")))?;
        if self.verbose >= 2 {
            eprintln!("< {status} ({} bytes)", text.len());
        }
        Ok((status, text))
    }

    /// GET and decode.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (_, text) = self.send(Method::Get, path, None)?;
        decode(path, &text)
    }

    /// POST a body and decode the answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let value = serde_json::to_value(body).expect("request types always serialize");
        let (_, text) = self.send(Method::Post, path, Some(&value))?;
        decode(path, &text)
    }

    /// POST a body (or none) and ignore the answer's body.
    pub fn post_unit<B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<()> {
        let value = body.map(|b| serde_json::to_value(b).expect("request types always serialize"));
        self.send(Method::Post, path, value.as_ref()).map(|_| ())
    }

    /// PATCH a body and ignore the answer's body.
    pub fn patch_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<()> {
        let value = serde_json::to_value(body).expect("request types always serialize");
        self.send(Method::Patch, path, Some(&value)).map(|_| ())
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.send(Method::Delete, path, None).map(|_| ())
    }

    fn status_error(&self, status: u16, text: &str) -> CliError {
        let server = server_message(text);
        let message = match status {
            401 => format!(
                "the control plane refused the API key (401{}); pass --api-key, set NIXFLEET_API_KEY, or save one with `nixfleet keys save`",
                if server.is_empty() { String::new() } else { format!(": {server}") }
            ),
            403 => format!("forbidden (403): {server}; use a key or certificate with the needed role"),
            _ if server.is_empty() => format!("the control plane answered {status}"),
            _ => format!("{server} ({status})"),
        };
        if status >= 500 {
            CliError::Server(format!("{message}; see the control plane's log"))
        } else {
            CliError::Rejected { status, message }
        }
    }
}

fn transport_error(base: &str, method: Method, e: ureq::Error) -> CliError {
    let text = e.to_string();
    let lower = text.to_lowercase().replace(' ', "");
    let hint = if lower.contains("certificaterequired") {
        "the control plane requires a client certificate: pass --client-cert and --client-key"
    } else if lower.contains("alert")
        && (lower.contains("unknownca")
            || lower.contains("badcertificate")
            || lower.contains("certificateunknown"))
    {
        "the control plane rejected our client certificate: use one signed by its client CA"
    } else if lower.contains("invalidpeercertificate") || lower.contains("unknownissuer") {
        "the control plane's certificate is not trusted: pass --ca-cert with the CA that signed it"
    } else {
        match &e {
            ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::Pem(_) => {
                "check --ca-cert (the CA that signed the control plane) and --client-cert/--client-key"
            }
            ureq::Error::Timeout(_) => "it did not answer in time; check that it is running and reachable",
            _ => "check --control-plane-url and that the control plane is running",
        }
    };
    // A write that may have been sent was not resent elsewhere: say so, and what to check.
    let sent = if method != Method::Get && unreachable_why(&e, false).is_none() {
        "; the request may have been applied before the connection broke, and was not sent to another control plane: check (e.g. `nixfleet rollout list`) before running it again"
    } else {
        ""
    };
    CliError::Unreachable(format!(
        "cannot reach the control plane at {base}: {text}; {hint}{sent}"
    ))
}

/// What went wrong with one request, short of an answer.
enum Failure {
    /// No answer: connection, TLS, timeout.
    Transport(ureq::Error),
    /// An answer whose body could not be read.
    Body(String),
}

/// Why `e` means the control plane could not be reached, so the request may go to the next one;
/// `None` when it may not. A failure before the request could be sent (refused, unreachable,
/// connect timeout, TLS handshake) always qualifies; one after it may have been sent (reset,
/// end of stream, timeout while waiting for the answer) only when `resendable`.
fn unreachable_why(e: &ureq::Error, resendable: bool) -> Option<String> {
    use std::io::ErrorKind as K;
    let before_sending = match e {
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::NotConnected
            // rustls: a failed handshake, or the server's alert refusing our certificate.
            | K::InvalidData => true,
            K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::TimedOut => false,
            _ => return None,
        },
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => true,
        ureq::Error::Timeout(_) => false,
        _ => return None,
    };
    (before_sending || resendable).then(|| e.to_string())
}

/// The `error` of a JSON error body, else the start of the text.
fn server_message(text: &str) -> String {
    serde_json::from_str::<ErrorBody>(text)
        .map(|b| b.error)
        .unwrap_or_else(|_| text.trim().chars().take(300).collect())
}

fn decode<T: DeserializeOwned>(path: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        CliError::Server(format!(
            "unexpected answer from {path}: {e}; is the control plane the same version as this CLI ({})?",
            env!("CARGO_PKG_VERSION")
        ))
    })
}

fn parse_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<Certificate<'static>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::usage(format!("{flag} {}: {e}", path.display())))?;
    Ok(parse_certs(&bytes))
}

fn read_key(path: &Path) -> Result<PrivateKey<'static>> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::usage(format!("--client-key {}: {e}", path.display())))?;
    PrivateKey::from_pem(&bytes).map_err(|e| {
        CliError::usage(format!(
            "--client-key {}: not a PEM private key ({e})",
            path.display()
        ))
    })
}

/// Checks an id by its one rule (`parse`, from nixfleet-ids: `MachineId::parse`, `KeyName::parse`, …)
/// before it becomes a URL path segment.
pub fn path_id<T>(
    what: &str,
    id: &str,
    parse: fn(&str) -> std::result::Result<T, nixfleet_ids::InvalidId>,
) -> Result<String> {
    match parse(id) {
        Ok(_) => Ok(id.to_string()),
        Err(e) => Err(CliError::usage(format!("{what} {id:?}: {}", e.why))),
    }
}

/// Percent-encodes a query value.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Builds `?a=1&b=2` from pairs, skipping nothing; empty when no pairs.
pub fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", query_value(v)))
        .collect();
    format!("?{}", parts.join("&"))
}
