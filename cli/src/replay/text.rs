//! Words for times: UTC times, elapsed times, and the parsing of `--since`/`--until` values.
//! Events in words are `nixfleet_core::describe`'s (one line per event: `describe::line`).

use crate::error::{CliError, Result};
use nixfleet_core::ids::Timestamp;
use std::time::{Duration, UNIX_EPOCH};

/// `2025-11-24 16:00:05` (UTC, to the second).
pub fn utc(t: Timestamp) -> String {
    let s = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t.0)).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

/// `2025-11-24T16:00:05.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    nixfleet_eventlog::views::rfc3339(t)
}

/// Time from `from` to `to` as `+0s`, `+45s`, `+2m05s`, `+1h02m`.
pub fn elapsed(from: Timestamp, to: Timestamp) -> String {
    let secs = to.0.saturating_sub(from.0) / 1000;
    match secs {
        0..=59 => format!("+{secs}s"),
        60..=3599 => format!("+{}m{:02}s", secs / 60, secs % 60),
        _ => format!("+{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A duration in words: `45s`, `2m05s`, `1h02m`.
pub fn duration(from: Timestamp, to: Timestamp) -> String {
    elapsed(from, to).trim_start_matches('+').to_string()
}

/// Parses a time given on the command line: RFC 3339 (`2025-11-24T16:00:05Z`), or the form the
/// tables print (`2025-11-24 16:00:05`, UTC), optionally with fractional seconds.
pub fn parse_time(flag: &str, s: &str) -> Result<Timestamp> {
    humantime::parse_rfc3339_weak(s.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| Timestamp(d.as_millis() as u64))
        .ok_or_else(|| {
            CliError::usage(format!(
                "{flag} {s:?}: not a time; use UTC like 2025-11-24T16:00:05Z or \"2025-11-24 16:00:05\""
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_and_elapsed_times_are_short() {
        let t = Timestamp(1_764_000_005_123);
        assert_eq!(utc(t), "2025-11-24 16:00:05");
        assert_eq!(
            parse_time("--until", "2025-11-24 16:00:05").ok(),
            Some(Timestamp(1_764_000_005_000))
        );
        assert_eq!(
            parse_time("--until", "2025-11-24T16:00:05.123Z").ok(),
            Some(t)
        );
        assert!(parse_time("--until", "yesterday").is_err());
        assert_eq!(elapsed(Timestamp(0), Timestamp(45_000)), "+45s");
        assert_eq!(elapsed(Timestamp(0), Timestamp(125_000)), "+2m05s");
        assert_eq!(elapsed(Timestamp(0), Timestamp(3_720_000)), "+1h02m");
    }
}
