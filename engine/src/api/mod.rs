//! The HTTPS front end: hyper over rustls with mutual TLS, bounded in every dimension.
//!
//! Only this module knows HTTP. Each connection's client certificate CN becomes its
//! [`auth::Principal`]; [`routes::handle`] does the rest.

pub mod auth;
mod conn;
pub mod error;
pub mod handlers;
pub mod http;
pub mod input;
pub mod metrics;
pub mod routes;
pub mod tls;
pub use nixfleet_eventlog::views;

use crate::engine::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use routes::Principal;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Most connections served at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 16_384;
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send request headers (slow clients are cut off), and the longest a kept-alive
/// connection may stay idle between requests.
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
    // Each connection holds a receiver; SIGTERM sends, then waits for all of them to be dropped.
    let (stop, _) = tokio::sync::watch::channel(false);
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
        let stopped = stop.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    // The handshake, then the TLS stream (about 1.2 KiB), live in boxes: moved
                    // by pointer, they take no room in this task's own state.
                    let accept = Box::pin(acceptor.accept(tcp));
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(s)) => Box::new(s),
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
                    conn::serve(conn::Shared::new(app, principal), tls, stopped, peer).await;
                }
                None => {
                    let shared = conn::Shared::new(app, Principal::Anonymous);
                    conn::serve(shared, tcp, stopped, peer).await
                }
            }
        });
    }
    tracing::info!("shutting down: no new connections");
    stop.send_replace(true);
    tokio::select! {
        _ = stop.closed() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("open connections did not finish within 10 s"),
    }
    Ok(())
}
