//! The agent's main loop: poll, report, run health checks, stop on a signal.
//!
//! Everything is blocking and single-threaded apart from the signal thread, which only turns
//! SIGTERM/SIGINT into a message on the channel the loop sleeps on. A signal that arrives during a
//! cycle is handled when the cycle ends (every step of a cycle has a deadline).

use crate::client::ControlPlane;
use crate::config::Config;
use crate::cycle::{Agent, Settings};
use crate::health::HealthRunner;
use crate::inflight::Journal;
use crate::quarantine::Quarantine;
use crate::switch::Switcher;
use crate::telemetry::{self, set_state, State};
use rand::Rng;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Relative jitter applied to every poll delay, so a fleet does not poll in step.
pub const POLL_JITTER: f64 = 0.10;

/// Everything built from the configuration before the loop starts.
pub struct Runtime {
    cfg: Config,
    client: ControlPlane,
    agent: Agent,
    signals: mpsc::Receiver<i32>,
}

/// Builds the high-level objects: reads TLS files, creates the state directory, loads the quarantine,
/// starts the metrics endpoint and the signal thread. Errors are one line.
pub fn build(cfg: Config) -> Result<Runtime, String> {
    let client = ControlPlane::new(&cfg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| format!("cannot create --state-dir {}: {e}", cfg.state_dir.display()))?;
    let quarantine = Quarantine::load(&cfg.state_dir).map_err(|e| {
        format!(
            "cannot read the quarantine in {}: {e}",
            cfg.state_dir.display()
        )
    })?;
    if let Some(port) = cfg.metrics_port {
        telemetry::serve_metrics(port)?;
    }
    let (tx, signals) = mpsc::channel();
    let mut sigs = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in sigs.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let settings = Settings {
        machine_id: cfg.machine_id.clone(),
        tags: cfg.tags.clone(),
        dry_run: cfg.dry_run,
        cache_url: cfg.cache_url.clone(),
        profile: cfg.profile.clone(),
        switcher: Switcher {
            mode: cfg.switch_mode,
            current_system: cfg.current_system.clone(),
            timeout: cfg.switch_timeout,
        },
        switch_lock: crate::switch::SWITCH_LOCK.into(),
        verify_window: crate::cycle::VERIFY_WINDOW,
        gc_roots: cfg.state_dir.join("gcroots"),
    };
    let agent = Agent::new(
        settings,
        quarantine,
        Journal::new(&cfg.state_dir),
        HealthRunner::new(cfg.health_config.clone(), cfg.health_interval),
    );
    Ok(Runtime {
        cfg,
        client,
        agent,
        signals,
    })
}

/// Runs until SIGTERM or SIGINT.
pub fn run(mut rt: Runtime) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        machine_id = %rt.cfg.machine_id,
        control_plane = %rt.cfg.control_plane_urls.join(","),
        switch_mode = ?rt.cfg.switch_mode,
        dry_run = rt.cfg.dry_run,
        tags = ?rt.cfg.tags,
        "NixFleet agent starting"
    );
    let mut hint: Option<u64> = None;
    let mut first = true;
    // Whether the last poll failed to reach the control plane (not: reached it, but the deploy
    // cycle failed, which keeps its retry interval).
    let mut unreachable = false;
    let mut next_poll = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_poll {
            let previous_hint = hint;
            let (ok, reached) = poll(&mut rt, &mut hint);
            let retry_in_secs = rt.cfg.retry_interval.as_secs();
            if !ok && first {
                // Grepped by the seed's vm-fleet-poll-retry: keep the wording.
                tracing::warn!(retry_in_secs, "Initial poll failed, scheduling retry");
            } else if !ok {
                tracing::warn!(retry_in_secs, "Poll failed, scheduling retry");
            } else if hint != previous_hint {
                match hint {
                    Some(h) => tracing::info!(
                        from_secs = rt.cfg.poll_interval.as_secs(),
                        to_secs = h,
                        "Adjusting poll interval from CP hint"
                    ),
                    None => tracing::info!(
                        secs = rt.cfg.poll_interval.as_secs(),
                        "CP hint withdrawn; back to the poll interval"
                    ),
                }
            }
            first = false;
            unreachable = !reached;
            next_poll = Instant::now() + poll_delay(&rt.cfg, ok, hint);
        } else if now >= rt.agent.next_health_due(now) {
            tracing::info!("Running periodic health check");
            let report = rt.agent.health_report();
            set_state(State::Reporting);
            match rt.client.report(&report) {
                Ok(()) => {
                    tracing::info!(all_passed = report.success, "Health report sent");
                    if unreachable {
                        // The control plane answers again: ask for the desired generation now
                        // rather than after the rest of the retry interval, which a rollout
                        // started meanwhile would otherwise wait out.
                        tracing::info!("Control plane reachable again, polling now");
                        next_poll = Instant::now();
                        unreachable = false;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Health report failed"),
            }
        }
        set_state(State::Idle);
        let now = Instant::now();
        let wake = next_poll.min(rt.agent.next_health_due(now));
        match rt.signals.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(sig) => {
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                tracing::info!("Received {name}, exiting gracefully");
                return;
            }
            Err(RecvTimeoutError::Disconnected) => {
                tracing::error!("Signal thread ended; exiting");
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// One poll: ask, act, report. Whether it went well (else it is retried after the retry
/// interval), and whether the control plane answered at all.
fn poll(rt: &mut Runtime, hint: &mut Option<u64>) -> (bool, bool) {
    let started = Instant::now();
    set_state(State::Checking);
    let ok = match rt.client.desired_generation() {
        Err(e) => {
            tracing::warn!(error = %e, "Cannot get the desired generation");
            (false, false)
        }
        Ok(desired) => {
            *hint = desired
                .as_ref()
                .and_then(|d| d.poll_hint)
                .filter(|h| *h > 0);
            let outcome = rt.agent.handle_desired(desired.as_ref());
            set_state(State::Reporting);
            match rt.client.report(&outcome.report) {
                Ok(()) => (outcome.ok, true),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot send the report");
                    (false, false)
                }
            }
        }
    };
    metrics::histogram!("nixfleet_agent_poll_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics::gauge!("nixfleet_agent_last_poll_timestamp_seconds").set(unix);
    ok
}

/// The delay before the next poll: the retry interval after a failure, else the control plane's hint
/// or the poll interval; always jittered by ±[`POLL_JITTER`].
pub fn poll_delay(cfg: &Config, ok: bool, hint: Option<u64>) -> Duration {
    let base = if !ok {
        cfg.retry_interval
    } else {
        hint.map(Duration::from_secs).unwrap_or(cfg.poll_interval)
    };
    jitter(base, rand::rng().random_range(-1.0..=1.0))
}

/// Scales `base` by `1 + POLL_JITTER * unit` (`unit` in [-1, 1]), never below 100 ms.
pub fn jitter(base: Duration, unit: f64) -> Duration {
    let factor = 1.0 + POLL_JITTER * unit.clamp(-1.0, 1.0);
    base.mul_f64(factor).max(Duration::from_millis(100))
}
