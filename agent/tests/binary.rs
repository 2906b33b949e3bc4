//! The `nixfleet-agent` binary: flag validation, the main loop against a recording stand-in for the
//! control plane (the real control plane lands in the engine crate; an end-to-end test against it
//! follows), signals, and the metrics endpoint.

mod common;

use common::running::{agent_command, free_port, signal, wait_until, RunningAgent, AGENT};
use nixfleet_proto::api::v1::{DesiredGeneration, Report};
use rustix::process::Signal;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RUNNING: &str = "/nix/store/0c5arqvvcm6n9a3xm1z2b8lvl8k7yq8q-nixos-system-web-01";

/// Runs the agent with `args` and returns (exit code, stderr lines).
fn refused(args: &[&str]) -> (i32, Vec<String>) {
    let out = Command::new(AGENT)
        .args(args)
        .env_clear()
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code().expect("exit code"), stderr)
}

fn assert_one_line_refusal(args: &[&str], code: i32, needle: &str) {
    let (got, stderr) = refused(args);
    assert_eq!(got, code, "{stderr:?}");
    assert_eq!(stderr.len(), 1, "exactly one line: {stderr:?}");
    assert!(stderr[0].starts_with("nixfleet-agent: "), "{stderr:?}");
    assert!(
        stderr[0].contains(needle),
        "{:?} should contain {needle:?}",
        stderr[0]
    );
}

#[test]
fn plain_http_is_refused_unless_insecure_is_allowed() {
    assert_one_line_refusal(
        &["--control-plane-url", "http://cp:8080", "--machine-id", "web-01"],
        2,
        "refusing insecure HTTP connection to control plane http://cp:8080: use https:// or pass --allow-insecure",
    );
}

#[test]
fn a_client_certificate_without_its_key_is_refused() {
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp:8080",
            "--machine-id",
            "web-01",
            "--client-cert",
            "/etc/c.pem",
        ],
        2,
        "--client-cert was given without --client-key",
    );
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp:8080",
            "--machine-id",
            "web-01",
            "--client-key",
            "/etc/k.pem",
        ],
        2,
        "--client-key was given without --client-cert",
    );
}

#[test]
fn an_invalid_machine_id_is_refused() {
    let long = "a".repeat(129);
    for bad in [
        "web 01",
        "../web-01",
        "web/01",
        "",
        "..",
        long.as_str(),
        "wéb",
        // The control plane's MachineId rule (one rule, nixfleet-ids): no leading '.'.
        ".web-01",
    ] {
        assert_one_line_refusal(
            &["--control-plane-url", "https://cp", "--machine-id", bad],
            2,
            "invalid --machine-id",
        );
    }
}

#[test]
fn missing_required_settings_and_bad_values_are_one_line_each() {
    assert_one_line_refusal(
        &["--machine-id", "web-01"],
        2,
        "missing --control-plane-url (or NIXFLEET_CONTROL_PLANE_URL)",
    );
    assert_one_line_refusal(
        &["--control-plane-url", "https://cp"],
        2,
        "missing --machine-id",
    );
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp",
            "--machine-id",
            "w",
            "--switch-mode",
            "sometimes",
        ],
        2,
        "invalid value 'sometimes' for '--switch-mode",
    );
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp",
            "--machine-id",
            "w",
            "--poll-interval",
            "0",
        ],
        2,
        "--poll-interval",
    );
    assert_one_line_refusal(
        &["--control-plane-url", "ftp://cp", "--machine-id", "w"],
        2,
        "it must start with https://",
    );
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp",
            "--machine-id",
            "w",
            "--cache-url=-oops",
        ],
        2,
        "--cache-url",
    );
}

#[test]
fn a_bad_url_in_a_list_of_control_planes_is_one_line_naming_it() {
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp-a:8080,ftp://cp-b:8080",
            "--machine-id",
            "w",
        ],
        2,
        "invalid --control-plane-url \"ftp://cp-b:8080\": it must start with https://",
    );
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp-a:8080",
            "--control-plane-url",
            "http://cp-b:8080",
            "--machine-id",
            "w",
        ],
        2,
        "refusing insecure HTTP connection to control plane http://cp-b:8080",
    );
}

#[test]
fn an_unreadable_ca_file_stops_the_agent_with_one_line() {
    let (code, stderr) = refused(&[
        "--control-plane-url",
        "https://cp",
        "--machine-id",
        "w",
        "--ca-cert",
        "/nonexistent/ca.pem",
        "--log-format",
        "human",
    ]);
    assert_eq!(code, 1);
    let last = stderr.last().expect("a line");
    assert_eq!(last, "nixfleet-agent: cannot read --ca-cert /nonexistent/ca.pem: No such file or directory (os error 2)");
}

#[test]
fn a_busy_metrics_port_or_an_unusable_state_dir_stops_the_agent_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let busy = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let state = dir.path().join("state").display().to_string();
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp",
            "--machine-id",
            "w",
            "--state-dir",
            &state,
            "--metrics-port",
            &port,
        ],
        1,
        &format!("cannot listen on metrics port {port}: Address already in use"),
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let below_file = file.join("state").display().to_string();
    assert_one_line_refusal(
        &[
            "--control-plane-url",
            "https://cp",
            "--machine-id",
            "w",
            "--state-dir",
            &below_file,
        ],
        1,
        "cannot create --state-dir",
    );
}

/// A recording stand-in for the control plane's two agent routes.
#[derive(Clone, Default)]
struct StubCp {
    desired: Arc<Mutex<Option<DesiredGeneration>>>,
    polls: Arc<Mutex<Vec<Instant>>>,
    reports: Arc<Mutex<Vec<Report>>>,
}

impl StubCp {
    /// Starts a stand-in on an ephemeral loopback port.
    fn start() -> (StubCp, u16) {
        let cp = StubCp::default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        cp.serve(listener);
        (cp, port)
    }

    fn serve(&self, listener: TcpListener) {
        let me = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.handle(stream));
            }
        });
    }

    fn handle<S: Read + Write>(&self, stream: S) {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        let _ = reader.read_exact(&mut body);
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, reply) = match (method, path) {
            ("GET", "/api/v1/machines/web-01/desired-generation") => {
                self.polls.lock().expect("lock").push(Instant::now());
                match self.desired.lock().expect("lock").clone() {
                    Some(d) => ("200 OK", serde_json::to_string(&d).expect("json")),
                    None => (
                        "404 Not Found",
                        r#"{"error":"no desired generation"}"#.to_owned(),
                    ),
                }
            }
            ("POST", "/api/v1/machines/web-01/report") => {
                let report: Report =
                    serde_json::from_slice(&body).expect("the agent sends a valid Report");
                self.reports.lock().expect("lock").push(report);
                ("200 OK", String::new())
            }
            _ => ("404 Not Found", r#"{"error":"no such route"}"#.to_owned()),
        };
        let mut stream = reader.into_inner();
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
    }

    /// Answers polls with `path`, not quarantined, with this poll hint.
    fn desire(&self, path: &str, poll_hint: Option<u64>) {
        *self.desired.lock().expect("lock") = Some(DesiredGeneration {
            poll_hint,
            ..common::desired(path, None)
        });
    }

    /// Waits up to `within` for at least `n` reports.
    fn wait_reports(&self, n: usize, within: Duration) {
        wait_until(&format!("{n} reports"), within, || {
            self.reports().len() >= n
        });
    }

    fn reports(&self) -> Vec<Report> {
        self.reports.lock().expect("lock").clone()
    }

    fn polls(&self) -> usize {
        self.polls.lock().expect("lock").len()
    }
}

/// The agent as web-01 of the control plane at `url`, with its state, current-system link and
/// health check file in `dir`.
fn agent_in(dir: &Path, url: &str) -> Command {
    agent_command(
        url,
        &dir.join("state"),
        &dir.join("current-system"),
        &dir.join("health-checks.json"),
    )
}

/// Starts an agent against the stand-in on `port` (plain HTTP), running [`RUNNING`], with a passing
/// command check and an ordinary `PATH`.
fn start_agent(port: u16, extra: &[&str]) -> RunningAgent {
    start_agent_with(port, extra, PASSING_COMMAND_CHECK, Some("/usr/bin:/bin"))
}

/// Starts an agent against the stand-in on `port` (plain HTTP), running [`RUNNING`], with these
/// health checks, and `PATH` set to `env_path` (or unset).
fn start_agent_with(
    port: u16,
    extra: &[&str],
    health_json: &str,
    env_path: Option<&str>,
) -> RunningAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(RUNNING, dir.path().join("current-system")).expect("symlink");
    std::fs::write(dir.path().join("health-checks.json"), health_json)
        .expect("write health config");
    let mut cmd = agent_in(dir.path(), &format!("http://127.0.0.1:{port}"));
    cmd.arg("--allow-insecure")
        .args(["--tags", "web,canary,eu-west"])
        .args(extra);
    if !extra.contains(&"--retry-interval") {
        cmd.args(["--retry-interval", "1"]);
    }
    match env_path {
        Some(p) => cmd.env("PATH", p),
        None => cmd.env_remove("PATH"),
    };
    RunningAgent::spawn(cmd, Some(dir))
}

const PASSING_COMMAND_CHECK: &str = r#"{"command":[{"name":"app","command":"test -d /"}]}"#;

#[test]
fn an_agent_started_before_the_control_plane_logs_the_retry_line_then_reports_with_exactly_its_tags(
) {
    let port = free_port();
    let agent = start_agent(port, &[]);
    let line = agent.wait_for_log(
        "Initial poll failed, scheduling retry",
        Duration::from_secs(10),
    );
    assert!(line.starts_with('{'), "logs are JSON by default: {line}");
    agent.wait_for_log("NixFleet agent starting", Duration::from_secs(1));

    let cp = StubCp::default();
    cp.serve(TcpListener::bind(("127.0.0.1", port)).expect("bind the CP port"));
    cp.wait_reports(1, Duration::from_secs(10));

    let report = &cp.reports()[0];
    assert_eq!(report.machine_id, "web-01");
    assert_eq!(report.tags, vec!["web", "canary", "eu-west"]);
    assert_eq!(report.current_generation, RUNNING);
    assert!(report.success);
    assert_eq!(report.message, "no desired generation");
    assert!(report.health.as_ref().expect("health attached").all_passed);
    assert_eq!(agent.terminate(), 0);
}

/// An agent whose first poll failed (the control plane not up yet) polls as soon as a periodic
/// health report gets through, instead of sleeping out its retry interval: a rollout started
/// meanwhile would otherwise wait up to `--retry-interval` (30 s by default) for it, past a short
/// health timeout (seen in vm-fleet-timeout when the agent started before the control plane).
#[test]
fn a_control_plane_that_comes_back_is_polled_at_once_not_after_the_retry_interval() {
    let port = free_port();
    let agent = start_agent(
        port,
        &["--retry-interval", "3600", "--health-interval", "1"],
    );
    agent.wait_for_log(
        "Initial poll failed, scheduling retry",
        Duration::from_secs(10),
    );

    let cp = StubCp::default();
    cp.serve(TcpListener::bind(("127.0.0.1", port)).expect("bind the CP port"));
    wait_until(
        "a poll once the control plane answers",
        Duration::from_secs(10),
        || cp.polls() >= 1,
    );
    agent.wait_for_log("Control plane reachable again", Duration::from_secs(1));
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn a_command_check_works_without_any_path_because_it_runs_the_absolute_bin_sh() {
    let (cp, port) = StubCp::start();
    cp.desire(RUNNING, None);
    // No PATH at all, like a bare systemd unit: a relative "sh" would fail with ENOENT.
    let agent = start_agent_with(port, &[], PASSING_COMMAND_CHECK, None);
    cp.wait_reports(1, Duration::from_secs(10));
    let report = &cp.reports()[0];
    assert_eq!(report.message, "up-to-date");
    let health = report
        .health
        .as_ref()
        .expect("up-to-date reports carry health");
    assert!(health.all_passed, "{health:?}");
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn the_poll_hint_of_the_control_plane_shortens_polling() {
    let (cp, port) = StubCp::start();
    cp.desire(RUNNING, Some(1));
    let agent = start_agent(port, &["--poll-interval", "3600"]);
    wait_until(
        "three polls at the hinted interval",
        Duration::from_secs(8),
        || cp.polls() >= 3,
    );
    agent.wait_for_log(
        "Adjusting poll interval from CP hint",
        Duration::from_secs(1),
    );
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn periodic_health_reports_follow_the_health_interval() {
    let (cp, port) = StubCp::start();
    let agent = start_agent(port, &["--health-interval", "1", "--poll-interval", "3600"]);
    wait_until(
        "two periodic health reports",
        Duration::from_secs(8),
        || {
            cp.reports()
                .iter()
                .filter(|r| r.message == "health-check")
                .count()
                >= 2
        },
    );
    let r = cp
        .reports()
        .into_iter()
        .find(|r| r.message == "health-check")
        .expect("one");
    assert!(r.success);
    assert_eq!(r.health.expect("health").results[0].check_name(), "app");
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn sigint_also_ends_the_agent_cleanly() {
    let (cp, port) = StubCp::start();
    let mut agent = start_agent(port, &["--log-format", "human"]);
    cp.wait_reports(1, Duration::from_secs(10));
    signal(&agent.child, Signal::INT);
    let status = agent.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    agent.wait_for_log(
        "Received SIGINT, exiting gracefully",
        Duration::from_secs(2),
    );
}

#[test]
fn metrics_are_served_in_prometheus_format_on_the_metrics_port() {
    let (cp, port) = StubCp::start();
    let agent = start_agent(port, &["--metrics-port", "0"]);
    let line = agent.wait_for_log("Serving Prometheus metrics", Duration::from_secs(10));
    let metrics_port: u16 = line
        .split("0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"));
    cp.wait_reports(1, Duration::from_secs(10));
    let mut text = String::new();
    wait_until("the poll metrics", Duration::from_secs(5), || {
        text = scrape(metrics_port);
        text.contains("nixfleet_agent_last_poll_timestamp_seconds")
    });
    for needle in [
        "nixfleet_agent_state{state=\"idle\"}",
        "nixfleet_agent_state{state=\"rolling_back\"} 0",
        "nixfleet_agent_poll_duration_seconds",
        "nixfleet_agent_health_check_status{check_name=\"app\"} 1",
        "nixfleet_agent_health_check_duration_seconds",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let mut s = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    write!(s, "GET /other HTTP/1.0\r\n\r\n").expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.0 404"), "{reply}");
    assert_eq!(agent.terminate(), 0);
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
    reply
}

/// Test PKI: a fleet CA, a server certificate for localhost, a client certificate with CN web-01,
/// and an unrelated CA. For testing only: the keys are generated per test and never leave the temp dir.
struct Pki {
    dir: tempfile::TempDir,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    client_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "nixfleet test fleet CA");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");

        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "web-01");
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client cert");

        let mut other_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        other_params
            .distinguished_name
            .push(DnType::CommonName, "some other CA");
        let other = CertifiedIssuer::self_signed(other_params, KeyPair::generate().expect("key"))
            .expect("other CA");

        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other.pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        }
        Pki {
            server_chain: vec![server.der().clone(), ca.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            ca_der: ca.der().clone(),
            client_der: client.der().clone(),
            dir,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Serves the stand-in control plane over TLS, requiring a client certificate signed by the fleet
/// CA, and records each client's leaf certificate.
fn serve_mtls(cp: &StubCp, pki: &Pki) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("add CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (cp, seen) = (cp.clone(), peers.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (cp, seen, config) = (cp.clone(), seen.clone(), config.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(config).expect("server connection");
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return; // Handshake refused: no certificate, or an untrusted one.
                    }
                }
                if let Some(leaf) = tls.conn.peer_certificates().and_then(|c| c.first()) {
                    seen.lock().expect("lock").push(leaf.to_vec());
                }
                cp.handle(tls);
            });
        }
    });
    (port, peers)
}

/// An agent over TLS to the stand-in on `port`, trusting the CA in `pki`'s file `ca`, and presenting
/// `pki`'s client certificate when `client_cert`.
fn start_tls_agent(port: u16, pki: &Pki, ca: &str, client_cert: bool) -> RunningAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = agent_in(dir.path(), &format!("https://localhost:{port}"));
    cmd.args(["--retry-interval", "1", "--ca-cert", &pki.file(ca)]);
    if client_cert {
        cmd.args(["--client-cert", &pki.file("client.pem")])
            .args(["--client-key", &pki.file("client.key")]);
    }
    RunningAgent::spawn(cmd, Some(dir))
}

#[test]
fn the_agent_authenticates_with_its_client_certificate_and_trusts_the_fleet_ca() {
    let pki = Pki::new();
    let cp = StubCp::default();
    let (port, peers) = serve_mtls(&cp, &pki);
    let agent = start_tls_agent(port, &pki, "ca.pem", true);
    cp.wait_reports(1, Duration::from_secs(10));
    assert!(cp.polls() >= 1);
    assert_eq!(
        peers.lock().expect("lock")[0],
        pki.client_der.to_vec(),
        "the agent presented its certificate"
    );
    assert_eq!(
        cp.reports()[0].current_generation,
        "",
        "no current-system link: reported as empty"
    );
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn without_a_client_certificate_the_handshake_fails_and_the_agent_retries() {
    let pki = Pki::new();
    let cp = StubCp::default();
    let (port, _) = serve_mtls(&cp, &pki);
    let agent = start_tls_agent(port, &pki, "ca.pem", false);
    agent.wait_for_log(
        "Initial poll failed, scheduling retry",
        Duration::from_secs(10),
    );
    agent.wait_for_log("Poll failed, scheduling retry", Duration::from_secs(5));
    assert!(cp.reports().is_empty());
    assert_eq!(cp.polls(), 0);
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn a_control_plane_certificate_from_another_ca_is_not_trusted() {
    let pki = Pki::new();
    let cp = StubCp::default();
    let (port, peers) = serve_mtls(&cp, &pki);
    let agent = start_tls_agent(port, &pki, "other-ca.pem", true);
    let line = agent.wait_for_log("Cannot get the desired generation", Duration::from_secs(10));
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert!(peers.lock().expect("lock").is_empty());
    assert!(cp.reports().is_empty());
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn a_desired_path_that_exists_nowhere_is_logged_with_the_line_the_seed_greps_and_nothing_changes() {
    let (cp, port) = StubCp::start();
    let missing = "/nix/store/1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-nixos-system-fabricated";
    cp.desire(missing, None);
    let agent = start_agent(port, &[]);
    let line = agent.wait_for_log(
        "not found locally and no cache URL configured",
        Duration::from_secs(10),
    );
    assert!(line.contains(missing), "{line}");
    cp.wait_reports(1, Duration::from_secs(5));
    let report = &cp.reports()[0];
    assert!(!report.success);
    assert_eq!(
        report.message,
        format!("store path {missing} not found locally and no cache URL configured")
    );
    assert_eq!(
        report.current_generation, RUNNING,
        "current-system still points where it did"
    );
    agent.wait_for_log(
        "Initial poll failed, scheduling retry",
        Duration::from_secs(2),
    );
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn a_broken_log_stream_does_not_stop_the_agent() {
    let (cp, port) = StubCp::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // stderr is a pipe whose reading end is already closed: every log line fails with EPIPE, as
    // when the journal stream breaks. tracing-subscriber's eprintln! fallback used to panic here.
    let (read_end, write_end) = std::io::pipe().expect("pipe");
    drop(read_end);
    let mut agent = agent_in(dir.path(), &format!("http://127.0.0.1:{port}"))
        .args(["--allow-insecure", "--poll-interval", "1"])
        .stderr(write_end)
        .spawn()
        .expect("spawn");
    cp.wait_reports(2, Duration::from_secs(10));
    assert!(agent.try_wait().expect("wait").is_none(), "the agent died");
    signal(&agent, Signal::TERM);
    assert_eq!(agent.wait().expect("wait").code(), Some(0));
}

#[test]
fn an_agent_killed_during_a_switch_finishes_the_deploy_after_its_restart_by_rolling_back() {
    let m = common::Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    // Flips the link at once, then keeps activating for 5 s: the window in which the agent dies.
    let slow = format!(
        "#!/bin/sh\nout=$(dirname \"$(dirname \"$0\")\")\nln -sfn \"$out\" {}\necho \"switch $out\" >> {}\nsleep 5",
        m.current.display(),
        m.marker.display()
    );
    let bad = m.build_with_switch("nixos-system-web-01-slow-bad", false, &slow);
    let (cp, port) = StubCp::start();
    cp.desire(bad.as_str(), None);
    let spawn = || {
        m.agent_command(&format!("http://127.0.0.1:{port}"))
            .arg("--allow-insecure")
            .args(["--poll-interval", "1", "--retry-interval", "1"])
            .args(["--switch-timeout", "30"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent")
    };

    let mut first = spawn();
    wait_until(
        "the switch to flip the link",
        Duration::from_secs(15),
        || m.running() == bad.as_str(),
    );
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let record = m.state_dir.join(nixfleet_agent::inflight::FILE_NAME);
    assert!(record.exists(), "the deploy record survives the kill");
    assert!(cp.reports().iter().all(|r| r.rolled_back_from.is_none()));

    let mut second = spawn();
    wait_until(
        "the restarted agent to roll back",
        Duration::from_secs(40),
        || {
            cp.reports()
                .iter()
                .any(|r| r.rolled_back_from.as_deref() == Some(bad.as_str()))
        },
    );
    assert_eq!(
        m.running(),
        v1.as_str(),
        "back on the generation that ran before the killed deploy"
    );
    assert_eq!(m.profile_target(), v1.as_str());
    assert!(!record.exists());
    let report = cp
        .reports()
        .into_iter()
        .find(|r| r.rolled_back_from.is_some())
        .expect("rollback report");
    assert!(
        report
            .message
            .starts_with("rolled back: health checks failed"),
        "{}",
        report.message
    );
    signal(&second, Signal::TERM);
    assert_eq!(second.wait().expect("wait").code(), Some(0));
}

#[test]
fn a_desired_generation_built_to_traverse_or_reach_a_shell_is_refused_and_runs_nothing() {
    // Given every program the agent could run (nix, nix-store, nix-env, systemd-run, systemctl,
    // sh) replaced by a shim that records its arguments, and a marker file an injection would create
    let (cp, port) = StubCp::start();
    let shims = tempfile::tempdir().expect("tempdir");
    let calls = shims.path().join("calls");
    let marker = shims.path().join("pwned");
    for prog in [
        "nix",
        "nix-store",
        "nix-env",
        "nix-copy-closure",
        "systemd-run",
        "systemctl",
        "sh",
        "bash",
    ] {
        let p = shims.path().join(prog);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{prog} $*\" >> {}\nexit 1\n",
                calls.display()
            ),
        )
        .expect("write shim");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let h = "0123456789abcdfghijklmnpqrsvwxyz";
    let m = marker.display();
    let hostile = [
        format!("/nix/store/{h}-x;touch {m}"),
        format!("/nix/store/{h}-$(touch {m})"),
        format!("/nix/store/{h}-`touch {m}`"),
        format!("/nix/store/{h}-x|touch {m}"),
        format!("/nix/store/{h}-x\ntouch {m}"),
        format!("/nix/store/{h}-x && touch {m}"),
        format!("/nix/store/{h}-x/../../../tmp"),
        format!("/nix/store/{h}-x/bin/switch-to-configuration"),
        format!("/nix/store/{h}-.."),
        "/nix/store/../../bin/sh".to_owned(),
        format!("{m}"),
        "--help".to_owned(),
    ];
    let agent = start_agent_with(
        port,
        &["--poll-interval", "1"],
        r#"{}"#,
        Some(&shims.path().display().to_string()),
    );
    for (i, path) in hostile.iter().enumerate() {
        // When the control plane asks for it
        *cp.desired.lock().expect("lock") = Some(DesiredGeneration {
            hash: path.clone(),
            cache_url: Some(format!("https://cache.example/$(touch {m})")),
            poll_hint: None,
            quarantined: false,
            decided_seq: None,
            activation: None,
        });
        // Then the agent reports a refusal that names the value
        wait_until(
            &format!("the refusal of {path:?}"),
            Duration::from_secs(15),
            || {
                cp.reports().iter().any(|r| {
                    !r.success
                        && r.message.starts_with("invalid desired generation")
                        && r.message.contains(&format!("{path:?}"))
                })
            },
        );
        assert!(!marker.exists(), "case {i} {path:?} ran a command");
    }
    // And it ran no program with the value (only the default health check, systemctl
    // is-system-running), nothing created the marker, and it still runs
    let ran = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        ran.lines().all(|l| l == "systemctl is-system-running"),
        "the agent ran: {ran}"
    );
    assert!(!marker.exists());
    assert!(cp.reports().iter().all(|r| r.current_generation == RUNNING));
    assert_eq!(agent.terminate(), 0);
}
