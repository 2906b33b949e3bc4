//! Health checkers against real things: an HTTP listener on loopback, /bin/sh, systemctl.

use nixfleet_agent::health::{self, Check, CheckKind, HealthRunner, CONFIG_CHECK, FALLBACK_CHECK};
use nixfleet_proto::api::v1::HealthCheckResult;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Serves every connection with `status` (or holds it open without answering when `None`).
fn http_server(status: Option<u16>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            match status {
                Some(code) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                }
                None => held.push(stream),
            }
        }
    });
    format!("http://{addr}/health")
}

fn http_check(url: &str, expected_status: u16, timeout_secs: u64) -> Check {
    Check {
        name: url.to_owned(),
        kind: CheckKind::Http {
            url: url.to_owned(),
            timeout: Duration::from_secs(timeout_secs),
            expected_status,
        },
        interval: Duration::from_secs(60),
    }
}

fn command_check(name: &str, command: &str, timeout_secs: u64) -> Check {
    Check {
        name: name.to_owned(),
        kind: CheckKind::Command {
            command: command.to_owned(),
            timeout: Duration::from_secs(timeout_secs),
        },
        interval: Duration::from_secs(60),
    }
}

/// A health check file with `json` in a new temporary directory.
fn config_file(json: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("health-checks.json");
    std::fs::write(&f, json).expect("write");
    (dir, f)
}

fn message(r: &HealthCheckResult) -> &str {
    match r {
        HealthCheckResult::Fail { message, .. } => message,
        HealthCheckResult::Pass { .. } => "",
    }
}

#[test]
fn an_http_check_passes_on_the_expected_status() {
    let url = http_server(Some(200));
    let r = health::run_check(&http_check(&url, 200, 3));
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.check_name(), url);
}

#[test]
fn an_http_check_with_a_custom_expected_status_passes_only_on_that_status() {
    let url = http_server(Some(204));
    assert!(health::run_check(&http_check(&url, 204, 3)).passed());
    let r = health::run_check(&http_check(&url, 200, 3));
    assert!(!r.passed());
    assert_eq!(message(&r), "expected status 200, got 204");
}

#[test]
fn an_http_check_fails_on_a_server_error() {
    let url = http_server(Some(503));
    let r = health::run_check(&http_check(&url, 200, 3));
    assert_eq!(message(&r), "expected status 200, got 503");
}

#[test]
fn an_http_check_fails_when_nothing_listens() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let r = health::run_check(&http_check(
        &format!("http://127.0.0.1:{port}/health"),
        200,
        3,
    ));
    assert!(!r.passed());
    assert!(
        message(&r).starts_with("GET http://127.0.0.1:"),
        "{}",
        message(&r)
    );
}

#[test]
fn an_http_check_gives_up_at_its_timeout() {
    let url = http_server(None);
    let started = Instant::now();
    let r = health::run_check(&http_check(&url, 200, 1));
    assert!(!r.passed());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_command_check_passes_on_exit_zero_and_fails_with_its_stderr() {
    assert!(health::run_check(&command_check("true", "exit 0", 5)).passed());
    let r = health::run_check(&command_check("app", "echo 'app is down' >&2; exit 7", 5));
    assert!(!r.passed());
    assert_eq!(r.check_name(), "app");
    assert_eq!(message(&r), "exit status: 7: app is down");
}

#[test]
fn a_command_check_is_killed_at_its_timeout_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let late = dir.path().join("late");
    // The grandchild would create the file after 3 s if the process group survived the kill.
    let cmd = format!("(sleep 3; touch {}) & sleep 30", late.display());
    let started = Instant::now();
    let r = health::run_check(&command_check("slow", &cmd, 1));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        message(&r),
        "/bin/sh did not finish within 1 s and was killed"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !late.exists(),
        "the check's background child was killed too"
    );
}

#[test]
fn a_systemd_check_fails_with_a_clear_message_where_systemd_is_not_running() {
    // This machine has no systemd as PID 1; systemctl is installed and says so.
    let r = health::run_check(&Check {
        name: "nginx.service".into(),
        kind: CheckKind::Systemd {
            unit: "nginx.service".into(),
        },
        interval: Duration::from_secs(60),
    });
    assert!(!r.passed());
    assert_eq!(r.check_name(), "nginx.service");
    assert!(!message(&r).is_empty());
}

#[test]
fn a_missing_config_falls_back_to_the_system_running_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checks = health::load_checks(&dir.path().join("absent.json"), Duration::from_secs(60));
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].name, FALLBACK_CHECK);
    assert_eq!(checks[0].kind, CheckKind::SystemRunning);
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "{}").expect("write");
    assert_eq!(
        health::load_checks(&empty, Duration::from_secs(60))[0].name,
        FALLBACK_CHECK
    );
}

#[test]
fn an_unparsable_config_is_a_failing_check_not_a_silent_fallback() {
    let (_dir, f) = config_file("{\"http\": [ {\"url\": 3} ]}");
    let mut runner = HealthRunner::new(f.clone(), Duration::from_secs(60));
    let report = runner.run_due(Instant::now(), false);
    assert!(!report.all_passed);
    assert_eq!(report.results[0].check_name(), CONFIG_CHECK);
    assert!(message(&report.results[0])
        .starts_with(&format!("cannot read health config {}", f.display())));
}

#[test]
fn the_config_of_the_module_is_read_with_names_and_intervals() {
    let (_dir, f) = config_file(
        r#"{"systemd":[{"units":["nginx.service","postgresql.service"]}],
            "http":[{"url":"http://localhost/health","expectedStatus":204,"interval":10}],
            "command":[{"name":"disk","command":"true","timeout":2,"interval":5}]}"#,
    );
    let checks = health::load_checks(&f, Duration::from_secs(60));
    let names: Vec<_> = checks
        .iter()
        .map(|c| (c.name.as_str(), c.interval.as_secs()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("nginx.service", 60),
            ("postgresql.service", 60),
            ("http://localhost/health", 10),
            ("disk", 5)
        ]
    );
}

#[test]
fn each_check_runs_on_its_own_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count_fast = dir.path().join("fast");
    let count_slow = dir.path().join("slow");
    let f = dir.path().join("health-checks.json");
    std::fs::write(
        &f,
        format!(
            r#"{{"command":[{{"name":"fast","command":"echo x >> {}","interval":1}},
                           {{"name":"slow","command":"echo x >> {}","interval":3600}}]}}"#,
            count_fast.display(),
            count_slow.display()
        ),
    )
    .expect("write");
    let runs = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut runner = HealthRunner::new(f, Duration::from_secs(60));
    let t0 = Instant::now();
    let first = runner.run_due(t0, false);
    assert_eq!(first.results.len(), 2);
    assert_eq!(runner.next_due(t0), t0 + Duration::from_secs(1));

    let second = runner.run_due(t0 + Duration::from_secs(2), false);
    assert_eq!(
        second.results.len(),
        2,
        "the report still carries the latest result of every check"
    );
    assert_eq!((runs(&count_fast), runs(&count_slow)), (2, 1));

    runner.run_due(t0 + Duration::from_secs(2), true);
    assert_eq!(
        (runs(&count_fast), runs(&count_slow)),
        (3, 2),
        "a forced run (after a switch) runs all"
    );
}

#[test]
fn a_long_failure_message_is_cut_so_reports_stay_within_the_control_plane_limits() {
    let r = health::run_check(&command_check(
        "noisy",
        "printf 'é%.0s' $(seq 1000) >&2; exit 1",
        5,
    ));
    let m = message(&r);
    assert!(
        m.len() <= health::CHECK_MESSAGE_MAX_BYTES,
        "{} bytes",
        m.len()
    );
    assert!(m.ends_with('…'));
    assert_eq!(nixfleet_agent::truncate("short", 10), "short");
    assert_eq!(nixfleet_agent::truncate("ééééé", 7), "éé…");
}

// Issue 18, hole 3: a report's `timestamp` is when its checks ran, so the control plane can tell a
// cached result from a fresh one.
#[test]
fn cached_results_keep_the_time_they_were_measured() {
    let (_dir, f) = config_file(
        r#"{"command":[{"name":"fast","command":"true","interval":1},
                      {"name":"slow","command":"true","interval":3600}]}"#,
    );
    let time = |r: &nixfleet_proto::api::v1::HealthReport| {
        humantime::parse_rfc3339(&r.timestamp).expect("RFC 3339")
    };
    let mut runner = HealthRunner::new(f, Duration::from_secs(60));
    let t0 = Instant::now();
    let before = std::time::SystemTime::now();
    let first = runner.run_due(t0, false);
    let measured = time(&first);
    assert!(
        measured + Duration::from_millis(1) >= before,
        "stamped when the checks ran"
    );
    std::thread::sleep(Duration::from_millis(1100));
    // Nothing is due: both results are re-sent from the cache, with their own time.
    let cached = runner.run_due(t0, false);
    assert_eq!(
        cached.timestamp, first.timestamp,
        "a cached report is not dated now"
    );
    // Only "fast" is due: "slow" is still the cached result, so the report is as old as it.
    let mixed = runner.run_due(t0 + Duration::from_secs(2), false);
    assert_eq!(
        mixed.timestamp, first.timestamp,
        "the oldest result dates the report"
    );
    // All re-run: the report is fresh.
    let forced = runner.run_due(t0 + Duration::from_secs(2), true);
    assert!(
        time(&forced) >= measured + Duration::from_secs(1),
        "{} after {}",
        forced.timestamp,
        first.timestamp
    );
}
