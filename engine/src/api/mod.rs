//! The HTTPS front end: hyper over rustls with mutual TLS, bounded in every dimension.
//!
//! Only this module knows HTTP. Each connection's client certificate CN becomes its
//! [`auth::Principal`]; [`routes::handle`] does the rest.

pub mod auth;
pub mod error;
pub mod handlers;
pub mod http;
pub mod input;
pub mod metrics;
pub mod routes;
pub mod tls;
pub use nixfleet_eventlog::views;

use crate::engine::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use routes::Principal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Most connections served at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 16_384;
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send request headers (slow clients are cut off).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one request, long polls excepted.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What handlers share.
pub struct App {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Renders /metrics.
    pub metrics: PrometheusHandle,
    /// Plain HTTP without client certificates (development only).
    pub insecure: bool,
    /// Agents register themselves on their first report.
    pub auto_register: bool,
}

/// Serves until `shutdown` resolves, then lets open requests finish (up to 10 s).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let principal = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| {
                            tls::common_name(c.as_ref())
                                .map(Principal::Cert)
                                .unwrap_or(Principal::Cert(String::new()))
                        })
                        .unwrap_or(Principal::Anonymous);
                    serve_conn(app, principal, TokioIo::new(tls), watcher, peer).await;
                }
                None => {
                    serve_conn(app, Principal::Anonymous, TokioIo::new(tcp), watcher, peer).await
                }
            }
        });
    }
    tracing::info!("shutting down: no new connections");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("open connections did not finish within 10 s"),
    }
    Ok(())
}

async fn serve_conn<I>(
    app: Arc<App>,
    principal: Principal,
    io: I,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let principal = Arc::new(principal);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, principal) = (app.clone(), principal.clone());
        async move {
            let long_poll = req.uri().path() == "/api/v1/events";
            let limit = if long_poll {
                Duration::from_secs(routes::EVENTS_WAIT_SECS_MAX + 10)
            } else {
                REQUEST_TIMEOUT
            };
            let resp =
                match tokio::time::timeout(limit, routes::handle(&app, &principal, req)).await {
                    Ok(r) => r,
                    Err(_) => hyper::Response::builder()
                        .status(503)
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            b"{\"error\":\"request timed out\"}",
                        )))
                        .expect("static response parts are valid"),
                };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(io, svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
