//! The control plane's configuration and connection limits, through the real binary:
//! `--check-config` validates without IO, bad settings get one clear line, `--insecure` serves
//! plain HTTP, `--log-format json` logs JSON lines, and slow clients are cut off.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nixfleet-control-plane");

fn check(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn check_config_accepts_a_good_config_without_touching_tls_files_or_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data-not-created");
    let file = dir.path().join("cp.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:8443\"\ndata_dir = \"{}\"\ntls_cert = \"/nonexistent/cp.pem\"\ntls_key = \"/nonexistent/cp-key.pem\"\nclient_ca = \"/nonexistent/ca.pem\"\nlog_format = \"json\"\nauto_register = false\n",
            data.display()
        ),
    )
    .unwrap();
    let o = check(&["--config", file.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("configuration ok"), "{out}");
    assert!(out.contains("mutual TLS"), "{out}");
    assert!(
        !data.exists(),
        "--check-config must not create the data dir"
    );

    let o = check(&[
        "--listen",
        "[::1]:9000",
        "--data-dir",
        data.to_str().unwrap(),
        "--tls-cert",
        "/nonexistent/a",
        "--tls-key",
        "/nonexistent/b",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!data.exists());
}

#[test]
fn check_config_refuses_each_bad_setting_with_one_clear_line() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tls-cert", "/x/cp.pem"], "--tls-key"),
        (vec!["--tls-key", "/x/cp-key.pem"], "--tls-cert"),
        (vec!["--insecure", "--listen", "not-an-address"], "listen"),
        (vec!["--insecure", "--listen", "127.0.0.1"], "HOST:PORT"),
        (vec!["--insecure", "--log-format", "xml"], "log format"),
        (
            vec!["--insecure", "--log-segment-records", "3"],
            "log segment records 3 must be between 16",
        ),
        (
            vec!["--insecure", "--log-retention-days", "0"],
            "log retention 0 days must be between 1 and 36500",
        ),
        (vec![], "--insecure"),
        (
            vec!["--insecure", "--log-backend", "etcd"],
            "log backend \"etcd\" must be sled or postgres",
        ),
        (
            vec!["--insecure", "--log-backend", "postgres"],
            "--log-backend postgres needs --log-postgres-url",
        ),
        (
            vec![
                "--insecure",
                "--log-backend",
                "postgres",
                "--log-postgres-url",
                "postgres://db/nixfleet",
                "--executor-lease-secs",
                "1",
            ],
            "executor lease 1 s must be between 2 and 3600",
        ),
    ];
    for (args, names) in cases {
        assert_one_clear_line(&args, names);
    }
}

#[test]
fn an_unknown_key_in_the_toml_file_is_refused_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "listen_port = 8443\n").unwrap();
    assert_one_clear_line(&["--config", unknown.to_str().unwrap()], "listen_port");
    let wrong_type = dir.path().join("wrong-type.toml");
    std::fs::write(&wrong_type, "insecure = \"yes\"\n").unwrap();
    assert_one_clear_line(&["--config", wrong_type.to_str().unwrap()], "insecure");
}

fn assert_one_clear_line(args: &[&str], names: &str) {
    let o = check(args);
    let lines = stderr_lines(&o);
    assert!(!o.status.success(), "{args:?} was accepted");
    assert_ne!(o.status.code(), Some(101), "{args:?} panicked: {lines:?}");
    assert_eq!(
        lines.len(),
        1,
        "{args:?} must fail with one line saying what to fix, got {lines:#?}"
    );
    assert!(
        lines[0].starts_with("nixfleet-control-plane: ") && lines[0].contains(names),
        "{args:?}: the line must name {names:?}: {}",
        lines[0]
    );
}

/// A running control plane started with `args`, stderr to a file.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        let log = dir.join(format!("cp-{}.log", free_port()));
        let child = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running { child, log }
    }

    /// A plain-HTTP (`--insecure`) control plane on a free loopback port, with `extra` flags,
    /// once it answers `/health`; and its port.
    fn insecure(dir: &Path, extra: &[&str]) -> (Running, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--insecure", "--listen", &listen];
        args.extend_from_slice(extra);
        let cp = Running::start(dir, &args);
        wait_plain_health(&cp, port);
        (cp, port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plain_get(port: u16, path: &str) -> Result<(u16, String), ureq::Error> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()?;
    Ok((r.status().as_u16(), r.body_mut().read_to_string()?))
}

fn wait_plain_health(cp: &Running, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while plain_get(port, "/health").map(|r| r.0).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "control plane did not come up: {}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn insecure_serves_plain_http_with_a_loud_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, port) = Running::insecure(dir.path(), &[]);
    assert_eq!(plain_get(port, "/health").unwrap(), (200, "ok".into()));
    let (s, body) = plain_get(port, "/api/v1/machines").unwrap();
    assert_eq!(s, 401, "operator routes still need a key: {body}");
    let log = cp.log();
    assert!(
        log.contains("PLAIN HTTP") && log.contains("--insecure"),
        "the warning is loud: {log}"
    );
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _) = Running::insecure(dir.path(), &["--log-format", "json"]);
    let log = cp.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "startup logs something: {log}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["timestamp"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("listening")),
        "the listen line is among them: {log}"
    );
}

/// Seconds until the server closes a connection that stays silent after sending `first`.
fn seconds_until_closed(port: u16, first: &[u8]) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(first).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("still open after 30 s")
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => panic!("still open after 30 s"),
            Err(_) => break,
        }
    }
    started.elapsed().as_secs_f64()
}

#[test]
fn a_client_sending_a_partial_request_head_is_cut_off_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, port) = Running::insecure(dir.path(), &[]);
    let secs = seconds_until_closed(port, b"GET /health HTTP/1.1\r\nHost: local");
    let limit = nixfleet_engine::api::HEADER_TIMEOUT.as_secs_f64();
    assert!(
        secs >= limit - 1.0 && secs < limit + 5.0,
        "closed after {secs:.1} s; the header timeout is {limit} s"
    );
    assert_eq!(
        plain_get(port, "/health").unwrap().0,
        200,
        "the server still serves others"
    );
}

#[test]
fn a_tls_connection_that_never_sends_a_client_hello_is_closed_by_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &[]);
    let cp = Cp::start(dir.path(), &pki);
    let secs = seconds_until_closed(cp.port, b"");
    let limit = nixfleet_engine::api::HANDSHAKE_TIMEOUT.as_secs_f64();
    assert!(
        secs >= limit - 1.0 && secs < limit + 5.0,
        "closed after {secs:.1} s; the handshake timeout is {limit} s"
    );
    assert_eq!(cp.client("operator", None).get("/health").0, 200);
}
