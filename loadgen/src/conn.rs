//! One keep-alive HTTP/1.1 connection over mutual TLS, bound to one client certificate.
//!
//! An agent's identity is its certificate, so connections are never shared between agents: each
//! simulated agent owns one [`Conn`] and reconnects it (a new handshake) if the server drops it.

use crate::pki::Identity;
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where the control plane is.
#[derive(Clone)]
pub struct Target {
    /// Socket address.
    pub addr: SocketAddr,
    /// TLS server name (and Host header).
    pub host: String,
    /// Roots that sign the server's certificate.
    pub roots: Arc<RootCertStore>,
}

impl Target {
    /// A target trusting the CA certificates in `ca_pem`.
    pub fn new(addr: SocketAddr, host: &str, ca_pem: &Path) -> Result<Target> {
        let pem =
            std::fs::read(ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(c.with_context(|| format!("{} is not PEM", ca_pem.display()))?)
                .with_context(|| format!("{} holds an unusable certificate", ca_pem.display()))?;
        }
        if roots.is_empty() {
            return Err(anyhow!("{} holds no certificate", ca_pem.display()));
        }
        Ok(Target {
            addr,
            host: host.to_string(),
            roots: Arc::new(roots),
        })
    }

    /// A client TLS configuration presenting `id`.
    pub fn client_config(&self, id: Identity) -> Result<Arc<ClientConfig>> {
        let cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(self.roots.clone())
                .with_client_auth_cert(vec![id.cert], id.key)?;
        Ok(Arc::new(cfg))
    }
}

/// A keep-alive connection with one identity.
pub struct Conn {
    target: Target,
    tls: Arc<ClientConfig>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Handshakes made (1 plus reconnects).
    pub handshakes: u64,
}

/// A response: status, headers and the whole body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Conn {
    /// A connection that connects on first use.
    pub fn new(target: Target, tls: Arc<ClientConfig>) -> Conn {
        Conn {
            target,
            tls,
            sender: None,
            handshakes: 0,
        }
    }

    /// Opens the TCP + TLS + HTTP/1.1 connection now, unless open.
    pub async fn connect(&mut self) -> Result<()> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.target.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.target.host.clone())
            .map_err(|_| anyhow!("{:?} is not a valid TLS server name", self.target.host))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.handshakes += 1;
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request (JSON body if given) and reads the whole answer. A failed connection
    /// is dropped, so the next call reconnects.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.target.host);
        if let Some(k) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        self.connect().await?;
        let result = self.send(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Sends `req` on the open connection and reads the whole answer.
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer> {
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| anyhow!("not connected"))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }
}
