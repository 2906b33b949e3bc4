//! Latency samples and error counts, merged across workers and summarised as percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

/// What one worker (or all of them, merged) observed.
#[derive(Default)]
pub struct Stats {
    /// Latencies of successful requests, in microseconds.
    pub micros: Vec<u64>,
    /// Failures by HTTP status or error kind.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Records a success.
    pub fn ok(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    /// Records a failure.
    pub fn fail(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    /// Adds another's samples.
    pub fn merge(&mut self, other: Stats) {
        self.micros.extend(other.micros);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The `p`-th percentile (0..=100) in milliseconds, nearest rank; None without samples.
    pub fn percentile_ms(sorted_micros: &[u64], p: f64) -> Option<f64> {
        if sorted_micros.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * sorted_micros.len() as f64).ceil() as usize;
        let i = rank.clamp(1, sorted_micros.len()) - 1;
        Some(sorted_micros[i] as f64 / 1000.0)
    }

    /// `p50 … p99 … max …` for a report line.
    pub fn summary(&mut self) -> String {
        self.micros.sort_unstable();
        let f = |p: f64| {
            Self::percentile_ms(&self.micros, p)
                .map(|v| format!("{v:.2} ms"))
                .unwrap_or_else(|| "-".into())
        };
        format!("p50 {} p99 {} max {}", f(50.0), f(99.0), f(100.0))
    }

    /// `none` or `403: 2, io: 1`.
    pub fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(Stats::percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(Stats::percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(Stats::percentile_ms(&v, 100.0), Some(100.0));
        assert_eq!(Stats::percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn merged_errors_add_up_by_kind() {
        let mut a = Stats::default();
        a.fail("403".into());
        let mut b = Stats::default();
        b.fail("403".into());
        b.fail("io".into());
        b.ok(Duration::from_millis(2));
        a.merge(b);
        assert_eq!(a.errors_line(), "403: 2, io: 1");
        assert_eq!(a.micros, vec![2000]);
    }
}
