//! Logging setup and the optional Prometheus endpoint.
//!
//! Metrics are recorded through the `metrics` facade everywhere; they cost nothing unless
//! `--metrics-port` installs the Prometheus recorder. The endpoint is a tiny blocking HTTP/1.0
//! responder on a std `TcpListener`: the exporter's own listener would pull hyper and tokio into an
//! agent that otherwise needs neither.

use crate::config::LogFormat;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// The agent's states, as the `state` label of `nixfleet_agent_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the next poll or health run.
    Idle,
    /// Asking the control plane.
    Checking,
    /// Fetching a closure.
    Fetching,
    /// Setting the profile and switching.
    Applying,
    /// Running health checks after a switch.
    Verifying,
    /// Sending a report.
    Reporting,
    /// Switching back after a failure.
    RollingBack,
}

impl State {
    const ALL: [State; 7] = [
        State::Idle,
        State::Checking,
        State::Fetching,
        State::Applying,
        State::Verifying,
        State::Reporting,
        State::RollingBack,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Fetching => "fetching",
            State::Applying => "applying",
            State::Verifying => "verifying",
            State::Reporting => "reporting",
            State::RollingBack => "rolling_back",
        }
    }
}

/// Sets `nixfleet_agent_state{state}` to 1 for `state` and 0 for every other state.
pub fn set_state(state: State) {
    for s in State::ALL {
        metrics::gauge!("nixfleet_agent_state", "state" => s.label()).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG`, default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        // Colours only for a person at a terminal, never in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests) is harmless; keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// stderr that never fails. When the log stream breaks (journald restarted during a switch, a
/// closed pipe), tracing-subscriber would report the write error with `eprintln!`, which panics on
/// the same broken stream and would take the agent down in the middle of a deploy. Losing a log line
/// is the lesser harm.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// How long the metrics responder waits for a scraper's request.
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head read from a scraper.
const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder and serves `/metrics` on `0.0.0.0:port` in a background thread.
/// Returns the bound address (useful when `port` is 0).
pub fn serve_metrics(port: u16) -> Result<std::net::SocketAddr, String> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("cannot listen on metrics port {port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("metrics listener: {e}"))?;
    let handle = {
        let mut slot = HANDLE
            .lock()
            .map_err(|_| "metrics handle lock poisoned".to_owned())?;
        match slot.as_ref() {
            Some(h) => h.clone(),
            None => {
                let h = PrometheusBuilder::new()
                    .install_recorder()
                    .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
                *slot = Some(h.clone());
                h
            }
        }
    };
    describe();
    set_state(State::Idle);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = respond(stream, &handle) {
                    tracing::debug!(error = %e, "Metrics scrape failed");
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    tracing::info!(%addr, "Serving Prometheus metrics");
    Ok(addr)
}

fn describe() {
    metrics::describe_gauge!(
        "nixfleet_agent_state",
        "1 for the agent's current state, 0 for the others"
    );
    metrics::describe_histogram!(
        "nixfleet_agent_poll_duration_seconds",
        "Duration of a poll cycle"
    );
    metrics::describe_gauge!(
        "nixfleet_agent_last_poll_timestamp_seconds",
        "Unix time of the last poll"
    );
    metrics::describe_gauge!(
        "nixfleet_agent_health_check_status",
        "1 when the check passed on its last run"
    );
    metrics::describe_histogram!(
        "nixfleet_agent_health_check_duration_seconds",
        "Duration of a health check"
    );
}

fn respond(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SCRAPE_READ_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_MAX_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) =
        if method == "GET" && (target == "/metrics" || target.starts_with("/metrics?")) {
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        } else {
            (
                "404 Not Found",
                "text/plain",
                "not found: GET /metrics\n".to_owned(),
            )
        };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
