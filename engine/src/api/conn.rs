//! One client connection, holding hyper's buffers only while a request is in progress.
//!
//! Agents keep one keep-alive connection open and send a request every few seconds, so most
//! connections are idle most of the time. A hyper connection keeps its read buffer (8 KiB or
//! more), its write buffer (8 KiB) and its dispatcher for as long as it lives, so a connection
//! here is served by a run of short-lived hyper connections on the same stream:
//!
//! 1. Idle: the task waits for the next request's first bytes with no buffer of its own (they
//!    are read onto the stack and kept in a [`Bytes`] of their size), for at most
//!    [`HEADER_TIMEOUT`], as hyper's own keep-alive wait did.
//! 2. A hyper connection serves the stream, those bytes given back to it first. Each request
//!    head must be in within [`HEADER_TIMEOUT`] of hyper starting to wait for it (so a request
//!    whose first bytes ended a long idle wait gets its own [`HEADER_TIMEOUT`] for the rest).
//! 3. Once every request it was handed has had its body read to the end and its response
//!    written and flushed, hyper is between requests. After [`LINGER`] without a new request it
//!    is told to stop (`graceful_shutdown`, which at that point ends it at once, the response
//!    having gone out with `keep-alive`), its shutdown of the stream is skipped, and the bytes it
//!    had read beyond the last request (a pipelined request, or part of one) are kept for step 2.
//!    The linger keeps a busy connection on one hyper connection: a new one for every request
//!    cost about 5 µs a report flat out (docs/benchmarks.md).
//!
//! In every other case (the client asked for `Connection: close`, a body was left unread, a
//! timeout, an error, SIGTERM) hyper ends the connection itself exactly as it would without
//! this, shutting the stream down.

use super::{routes, App, HEADER_TIMEOUT, REQUEST_TIMEOUT};
use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use routes::Principal;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes read at most, onto the stack, when an idle connection becomes readable.
const IDLE_READ_BYTES: usize = 2048;
/// How long a connection keeps its hyper connection after a response: a client sending its next
/// request sooner (a busy one, or one under load) is served without a new one.
const LINGER: Duration = Duration::from_millis(100);

/// What a connection's task, its service and its stream share.
pub(super) struct Shared {
    app: Arc<App>,
    principal: Principal,
    /// Requests handed to the service, and responses hyper has dropped (written or abandoned).
    started: AtomicU32,
    finished: AtomicU32,
    /// The last request's body has not been read to its end.
    body_open: AtomicBool,
    /// hyper wrote to the stream and has not flushed it since.
    unflushed: AtomicBool,
    /// hyper was stopped between requests: its shutdown of the stream is skipped.
    handing_over: AtomicBool,
}

impl Shared {
    pub(super) fn new(app: Arc<App>, principal: Principal) -> Arc<Shared> {
        Arc::new(Shared {
            app,
            principal,
            started: AtomicU32::new(0),
            finished: AtomicU32::new(0),
            body_open: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
        })
    }
}

/// Serves one connection until the client closes it, it idles past [`HEADER_TIMEOUT`], hyper
/// ends it, or `stop` changes (SIGTERM: requests in progress finish first).
pub(super) async fn serve<T>(
    shared: Arc<Shared>,
    io: T,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = Stream {
        io,
        kept: Bytes::new(),
        shared: shared.clone(),
    };
    loop {
        if io.kept.is_empty() {
            // hyper's keep-alive wait: the next request must start within HEADER_TIMEOUT.
            let next =
                tokio::time::timeout(HEADER_TIMEOUT, std::future::poll_fn(|cx| io.poll_fill(cx)));
            let why = tokio::select! {
                biased;
                _ = stop.changed() => {
                    let _ = io.io.shutdown().await;
                    return;
                }
                r = next => match r {
                    Ok(Ok(true)) => None,
                    Ok(Ok(false)) => return,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("idle past the header timeout".to_owned()),
                },
            };
            if let Some(why) = why {
                tracing::debug!(%peer, error = %why, "connection ended");
                return;
            }
        }
        match serve_requests(&shared, io, &mut stop, peer).await {
            Some(next) => io = next,
            None => return,
        }
    }
}

/// Runs one hyper connection on `io` until it is between requests (then gives `io` back, with
/// the bytes hyper had read beyond them) or hyper ends the connection (`None`).
async fn serve_requests<T>(
    shared: &Arc<Shared>,
    io: Stream<T>,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) -> Option<Stream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            shared.started.fetch_add(1, Relaxed);
            shared.body_open.store(!req.body().is_end_stream(), Relaxed);
            let shared = shared.clone();
            async move {
                let req = req.map(|body| Watched {
                    body,
                    shared: shared.clone(),
                });
                let resp = respond(&shared, req).await;
                Ok::<_, Infallible>(resp.map(|body| Counted { body, shared }))
            }
        })
    };
    shared.handing_over.store(false, Relaxed);
    let finished_before = shared.finished.load(Relaxed);
    static HTTP1: OnceLock<http1::Builder> = OnceLock::new();
    let http1 = HTTP1.get_or_init(|| {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true);
        b
    });
    // Boxed, so an idle connection's task does not hold room for it.
    let mut conn = Box::pin(http1.serve_connection(TokioIo::new(io), svc));
    let mut handing_over = false;
    let mut stopping = false;
    let stopped = stop.changed();
    let mut stopped = std::pin::pin!(stopped);
    let mut linger = std::pin::pin!(tokio::time::sleep(LINGER));
    let mut idle_after = finished_before;
    let ended = std::future::poll_fn(|cx| {
        if !stopping && !handing_over && stopped.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        let polled = conn.as_mut().poll(cx);
        if polled.is_pending() && !handing_over && !stopping {
            let finished = shared.finished.load(Relaxed);
            if finished != finished_before
                && finished == shared.started.load(Relaxed)
                && !shared.body_open.load(Relaxed)
                && !shared.unflushed.load(Relaxed)
            {
                // Between requests since the last response: after LINGER, hyper is stopped
                // (at this point it ends at once).
                if idle_after != finished {
                    idle_after = finished;
                    linger.as_mut().reset(Instant::now() + LINGER);
                }
                if linger.as_mut().poll(cx).is_ready() {
                    handing_over = true;
                    shared.handing_over.store(true, Relaxed);
                    conn.as_mut().graceful_shutdown();
                    return conn.as_mut().poll(cx);
                }
            }
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        return None;
    }
    if !handing_over {
        return None;
    }
    let parts = Pin::into_inner(conn).into_parts();
    let mut io = parts.io.into_inner();
    if !parts.read_buf.is_empty() {
        // Copied, so that hyper's read buffer, which it is a slice of, is freed.
        io.kept = [&parts.read_buf[..], &io.kept[..]].concat().into();
    }
    Some(io)
}

/// Answers one request within its time limit.
async fn respond<B>(shared: &Shared, req: hyper::Request<B>) -> super::http::Resp
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let long_poll = req.uri().path() == "/api/v1/events";
    let limit = if long_poll {
        Duration::from_secs(routes::EVENTS_WAIT_SECS_MAX + 10)
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, routes::handle(&shared.app, &shared.principal, req)).await {
        Ok(r) => r,
        Err(_) => hyper::Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(
                b"{\"error\":\"request timed out\"}",
            )))
            .expect("static response parts are valid"),
    }
}

/// The connection's stream: bytes kept from the last hyper connection are read first; writes
/// not yet flushed, and whether hyper may shut it down, are told through [`Shared`].
struct Stream<T> {
    io: T,
    kept: Bytes,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> Stream<T> {
    /// Waits for the stream to have bytes, reads what it has (up to [`IDLE_READ_BYTES`]) into
    /// `kept`; `false` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut buf = [0u8; IDLE_READ_BYTES];
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.kept = Bytes::copy_from_slice(read.filled());
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.kept.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.kept.len().min(buf.remaining());
        buf.put_slice(&this.kept[..n]);
        this.kept.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.shared.unflushed.store(true, Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.shared.unflushed.store(true, Relaxed);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.shared.unflushed.store(false, Relaxed);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.shared.handing_over.load(Relaxed) {
            // hyper flushed its last bytes before asking; the stream stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A request body that says when it has been read to its end.
struct Watched {
    body: Incoming,
    shared: Arc<Shared>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || this.body.is_end_stream() {
            this.shared.body_open.store(false, Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that counts itself finished when hyper drops it (written, or abandoned).
struct Counted {
    body: Full<Bytes>,
    shared: Arc<Shared>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.finished.fetch_add(1, Relaxed);
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
