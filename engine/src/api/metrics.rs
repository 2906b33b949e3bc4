//! Prometheus metrics. Fleet gauges and rollout counters are computed from the projections at
//! scrape time, so they are right immediately after a restart, not only after the first report.

use super::App;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nixfleet_core::event::{Lifecycle, RolloutStatus};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several servers): keep ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples pile up in the recorder until upkeep drains them into buckets;
            // a scrape does that too, but a control plane nobody scrapes would grow by 8 bytes
            // per request forever (found by the 10-minute soak, docs/reliability.md).
            let h = handle.clone();
            let upkeep = std::thread::Builder::new()
                .name("nixfleet-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    h.run_upkeep();
                });
            if let Err(e) = upkeep {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

/// Renders the metrics text.
pub fn render(app: &App) -> String {
    app.engine.read(|s| {
        metrics::gauge!("nixfleet_fleet_size").set(s.machines.len() as f64);
        for lc in Lifecycle::ALL {
            let n = s.machines.values().filter(|m| m.lifecycle == *lc).count();
            metrics::gauge!("nixfleet_machines_by_lifecycle", "lifecycle" => lc.as_str())
                .set(n as f64);
        }
        let (mut healthy, mut unhealthy, mut unknown) = (0, 0, 0);
        for m in s.machines.values() {
            match m.latest_health() {
                Some(h) if h.all_passed => healthy += 1,
                Some(_) => unhealthy += 1,
                None => unknown += 1,
            }
        }
        for (state, n) in [
            ("healthy", healthy),
            ("unhealthy", unhealthy),
            ("unknown", unknown),
        ] {
            metrics::gauge!("nixfleet_machines_by_health", "health" => state).set(n as f64);
        }
        let active = s
            .rollouts
            .values()
            .filter(|r| r.status == RolloutStatus::Running)
            .count();
        metrics::gauge!("nixfleet_rollouts_active").set(active as f64);
        for st in RolloutStatus::ALL
            .iter()
            .filter(|s| **s != RolloutStatus::Running)
        {
            let n = s.rollouts_reached.get(st).copied().unwrap_or(0);
            metrics::counter!("nixfleet_rollouts_total", "status" => st.as_str()).absolute(n);
        }
        metrics::gauge!("nixfleet_log_last_seq").set(s.last_seq.0 as f64);
    });
    app.metrics.render()
}
