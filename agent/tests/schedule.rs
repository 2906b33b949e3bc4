//! Poll scheduling: retry after failures, the control plane's hint, and jitter.

use clap::Parser;
use nixfleet_agent::config::{Args, Config};
use nixfleet_agent::run::{jitter, poll_delay, POLL_JITTER};
use std::time::Duration;

fn config() -> Config {
    Config::from_args(Args::parse_from([
        "nixfleet-agent",
        "--control-plane-url",
        "https://cp.example:8080/",
        "--machine-id",
        "web-01",
        "--poll-interval",
        "60",
        "--retry-interval",
        "30",
        "--tags",
        "web, canary,,web",
    ]))
    .expect("valid")
}

fn within(d: Duration, base_secs: f64) -> bool {
    let s = d.as_secs_f64();
    s >= base_secs * (1.0 - POLL_JITTER) - 1e-9 && s <= base_secs * (1.0 + POLL_JITTER) + 1e-9
}

#[test]
fn jitter_stays_within_ten_percent_either_way() {
    assert_eq!(
        jitter(Duration::from_secs(60), -1.0),
        Duration::from_secs(54)
    );
    assert_eq!(
        jitter(Duration::from_secs(60), 1.0),
        Duration::from_secs(66)
    );
    assert_eq!(
        jitter(Duration::from_secs(60), 0.0),
        Duration::from_secs(60)
    );
    assert_eq!(
        jitter(Duration::from_secs(60), 7.0),
        Duration::from_secs(66),
        "out-of-range input is clamped"
    );
}

#[test]
fn a_failed_poll_waits_the_retry_interval_and_a_good_one_the_hint_or_the_poll_interval() {
    let cfg = config();
    for _ in 0..50 {
        assert!(within(poll_delay(&cfg, false, Some(5)), 30.0));
        assert!(within(poll_delay(&cfg, true, Some(5)), 5.0));
        assert!(within(poll_delay(&cfg, true, None), 60.0));
    }
}

#[test]
fn a_fleet_does_not_poll_in_step() {
    let cfg = config();
    let delays: std::collections::BTreeSet<Duration> =
        (0..20).map(|_| poll_delay(&cfg, true, None)).collect();
    assert!(
        delays.len() > 10,
        "20 agents got only {} distinct delays",
        delays.len()
    );
}

#[test]
fn tags_are_trimmed_and_deduplicated_and_the_url_loses_its_trailing_slash() {
    let cfg = config();
    assert_eq!(cfg.tags, vec!["web", "canary"]);
    assert_eq!(cfg.control_plane_urls, vec!["https://cp.example:8080"]);
}

#[test]
fn control_plane_urls_come_from_repeated_flags_and_comma_lists_in_order_without_duplicates() {
    let cfg = Config::from_args(Args::parse_from([
        "nixfleet-agent",
        "--control-plane-url",
        "https://a:8080/, https://b:8080,",
        "--control-plane-url",
        "https://c:8080",
        "--control-plane-url",
        "https://a:8080",
        "--machine-id",
        "web-01",
    ]))
    .expect("valid");
    assert_eq!(
        cfg.control_plane_urls,
        vec!["https://a:8080", "https://b:8080", "https://c:8080"]
    );
}
