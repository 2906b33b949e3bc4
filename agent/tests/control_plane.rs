//! The agent binary against the real control plane (`nixfleet-control-plane`), over mutual TLS,
//! with real Nix closures.
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or set NIXFLEET_CP_BIN).
//! The PKI is made here with rcgen. For testing only: the keys are throwaway.

mod common;

use common::running::{self, free_port, RunningAgent};
use common::standin;
use common::Machine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

fn cp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NIXFLEET_CP_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug/nixfleet-control-plane");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p nixfleet-engine` first",
        bin.display()
    );
    bin
}

/// A fleet CA with certificates `cp` (server, localhost), `operator` and `web-01` (clients).
fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).expect("pki dir");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "nixfleet agent test CA");
    let ca_key = KeyPair::generate().expect("key");
    std::fs::write(
        dir.join("ca.pem"),
        ca.self_signed(&ca_key).expect("CA").pem(),
    )
    .expect("write");
    let issuer = Issuer::new(ca, ca_key);
    for (name, server) in [("cp", true), ("operator", false), ("web-01", false)] {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        if server {
            p.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().expect("dns name")),
                SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &issuer).expect("cert");
        std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
    }
}

/// Each flag followed by its file in `pki`.
fn pki_args<const N: usize>(pki: &Path, flags: [(&str, &str); N]) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    for (flag, file) in flags {
        args.push(flag.into());
        args.push(pki.join(file).into());
    }
    args
}

struct ControlPlane {
    child: Child,
    port: u16,
    log: PathBuf,
    admin: ureq::Agent,
    key: String,
}

/// Given a fleet PKI and a control plane on a free port, in a fresh temporary directory.
fn given_a_control_plane() -> (tempfile::TempDir, u16, ControlPlane) {
    let dir = tempfile::tempdir().expect("tempdir");
    pki(&dir.path().join("pki"));
    let port = free_port();
    let cp = ControlPlane::start(dir.path(), port);
    (dir, port, cp)
}

impl ControlPlane {
    fn start(dir: &Path, port: u16) -> ControlPlane {
        let pki = dir.join("pki");
        let log = dir.join("cp.log");
        let child = Command::new(cp_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join(format!("cp-data-{port}")))
            .args(pki_args(
                &pki,
                [
                    ("--tls-cert", "cp-cert.pem"),
                    ("--tls-key", "cp-key.pem"),
                    ("--client-ca", "ca.pem"),
                ],
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the control plane");
        let certs = |f: &str| -> Vec<Certificate<'static>> {
            ureq::tls::parse_pem(&std::fs::read(pki.join(f)).expect("read pem"))
                .filter_map(|i| match i.expect("pem") {
                    PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect()
        };
        let key = PrivateKey::from_pem(&std::fs::read(pki.join("operator-key.pem")).expect("key"))
            .expect("key");
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&certs("ca.pem")))
            .client_cert(Some(ClientCert::new_with_certs(
                &certs("operator-cert.pem"),
                key,
            )))
            .build();
        let admin = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let mut cp = ControlPlane {
            child,
            port,
            log,
            admin,
            key: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cp.call("GET", "/health", None).map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "control plane did not come up: {}",
                cp.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let boot = cp.json(
            "POST",
            "/api/v1/keys/bootstrap",
            Some(r#"{"name":"test-admin"}"#),
            200,
        );
        cp.key = boot["key"].as_str().expect("key").to_owned();
        cp
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let url = format!("https://localhost:{}{path}", self.port);
        let auth = format!("Bearer {}", self.key);
        let result = match method {
            "GET" => self.admin.get(&url).header("authorization", &auth).call(),
            _ => self
                .admin
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(body.unwrap_or("{}")),
        };
        let mut resp = result.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().unwrap_or_default()))
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>, expect: u16) -> Value {
        let (status, text) = self
            .call(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert_eq!(status, expect, "{method} {path}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
        }
    }

    fn machine(&self, id: &str) -> Option<Value> {
        let list = self.json("GET", "/api/v1/machines", None, 200);
        list.as_array()
            .expect("a list")
            .iter()
            .find(|m| m["machine_id"] == id)
            .cloned()
    }

    /// Creates a release of `path` for web-01 and an all-at-once rollout of it; returns the rollout id.
    fn roll_out(&self, path: &str) -> String {
        let release = serde_json::json!({"entries": [{"hostname": "web-01", "store_path": path, "platform": "x86_64-linux", "tags": ["web"]}]});
        let rel = self.json("POST", "/api/v1/releases", Some(&release.to_string()), 201);
        let rollout = serde_json::json!({"release_id": rel["id"], "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 120});
        let r = self.json("POST", "/api/v1/rollouts", Some(&rollout.to_string()), 201);
        r["rollout_id"].as_str().expect("rollout id").to_owned()
    }

    fn wait_rollout(&self, id: &str, want: &str, secs: u64) -> Value {
        let mut last = Value::Null;
        wait_until(&format!("rollout {id} to be {want}"), secs, || {
            last = self.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
            last["status"] == want
        });
        last
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent for `m`, as web-01 of the control plane on `port`, over mTLS with the fleet PKI in `dir`,
/// polling every second.
fn start_agent(dir: &Path, port: u16, m: &Machine) -> RunningAgent {
    start_agent_polling(dir, port, m, "1")
}

/// An agent whose poll and retry intervals are `every` seconds.
fn start_agent_polling(dir: &Path, port: u16, m: &Machine, every: &str) -> RunningAgent {
    RunningAgent::spawn(
        agent_at(dir, &format!("https://localhost:{port}"), m, every),
        None,
    )
}

/// The command line of an agent for `m`, as web-01 of the control plane(s) at `url`, with the
/// fleet PKI in `dir`, polling every `every` seconds.
fn agent_at(dir: &Path, url: &str, m: &Machine, every: &str) -> Command {
    let pki = dir.join("pki");
    let mut cmd = m.agent_command(url);
    cmd.args(["--tags", "web,canary"])
        .args(pki_args(
            &pki,
            [
                ("--ca-cert", "ca.pem"),
                ("--client-cert", "web-01-cert.pem"),
                ("--client-key", "web-01-key.pem"),
            ],
        ))
        .args(["--poll-interval", every, "--retry-interval", every])
        .args(["--health-interval", "2"]);
    cmd
}

fn wait_until(what: &str, secs: u64, cond: impl FnMut() -> bool) {
    running::wait_until(what, Duration::from_secs(secs), cond)
}

#[test]
fn an_agent_started_before_the_control_plane_retries_then_registers_with_exactly_its_tags() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    let dir = tempfile::tempdir().expect("tempdir");
    pki(&dir.path().join("pki"));
    let port = free_port();
    let agent = start_agent(dir.path(), port, &m);
    wait_until("the retry line", 15, || {
        agent.saw("Initial poll failed, scheduling retry")
    });

    let cp = ControlPlane::start(dir.path(), port);
    let mut machine = None;
    wait_until("web-01 to register", 20, || {
        machine = cp.machine("web-01");
        machine.is_some()
    });
    let machine = machine.expect("registered");
    assert_eq!(
        machine["tags"],
        serde_json::json!(["canary", "web"]),
        "{machine}"
    );
    assert_eq!(machine["current_generation"], v1.as_str());
    wait_until("a health report", 20, || {
        cp.machine("web-01")
            .is_some_and(|m| m["health"] == "healthy")
    });
}

#[test]
fn a_release_is_deployed_then_an_unhealthy_one_is_rolled_back_quarantined_and_retried_only_after_resume(
) {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    let bad = m.build("nixos-system-web-01-bad", false);
    m.boot_into(&v1);
    let (dir, port, cp) = given_a_control_plane();
    let agent = start_agent(dir.path(), port, &m);
    wait_until("web-01 to register", 20, || cp.machine("web-01").is_some());

    // A healthy release: the deploy report carries its health, so the gate passes at once.
    let good = cp.roll_out(v2.as_str());
    cp.wait_rollout(&good, "completed", 60);
    assert_eq!(m.running(), v2.as_str());

    // An unhealthy one: applied, verified, rolled back to exactly v2, quarantined on both sides.
    let failing = cp.roll_out(bad.as_str());
    cp.wait_rollout(&failing, "paused", 90);
    wait_until("the control plane to quarantine the path", 30, || {
        cp.machine("web-01")
            .is_some_and(|mm| mm["quarantined"] == serde_json::json!([bad.as_str()]))
    });
    assert_eq!(m.running(), v2.as_str(), "{}", agent.dump());
    assert_eq!(m.profile_target(), v2.as_str());
    let status = cp.machine("web-01").expect("machine");
    assert_eq!(status["current_generation"], v2.as_str());
    wait_until(
        "the agent to see the control plane's quarantine",
        20,
        || agent.saw("Not applying a quarantined generation"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        m.switches(),
        vec![
            format!("switch {v2}"),
            format!("switch {bad}"),
            format!("switch {v2}")
        ],
        "the bad path was applied exactly once while the rollout stayed paused"
    );

    // Resume lifts the quarantine on the control plane: the agent tries once more, fails, rolls back.
    cp.json(
        "POST",
        &format!("/api/v1/rollouts/{failing}/resume"),
        Some("{}"),
        200,
    );
    wait_until("a second attempt and rollback", 60, || {
        m.switches().len() == 5
    });
    cp.wait_rollout(&failing, "paused", 90);
    assert_eq!(m.running(), v2.as_str());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        m.switches().len(),
        5,
        "quarantined again, not applied a third time"
    );
}

// A race on the deploy path: the operator resumes the paused rollout before the agent's next poll
// ever showed it `quarantined: true` for the path it just rolled back from. The local quarantine
// entry was never acknowledged, so the agent used to skip the path for good; the control plane's
// `decided_seq` moved on with the resume, and the agent tries the path again.
#[test]
fn a_resume_before_the_agent_saw_the_quarantine_still_retries_the_path() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let bad = m.build("nixos-system-web-01-bad", false);
    m.boot_into(&v1);
    let (dir, port, cp) = given_a_control_plane();
    // Polls 4 s apart: the resume below comes well before the agent's next poll.
    let agent = start_agent_polling(dir.path(), port, &m, "4");
    wait_until("web-01 to register", 20, || cp.machine("web-01").is_some());
    let failing = cp.roll_out(bad.as_str());
    cp.wait_rollout(&failing, "paused", 90);
    cp.json(
        "POST",
        &format!("/api/v1/rollouts/{failing}/resume"),
        Some("{}"),
        200,
    );
    assert!(
        !agent.saw("Not applying a quarantined generation"),
        "the agent polled before the resume; the race this test is about did not happen: {}",
        agent.dump()
    );
    wait_until(
        "the agent to try the path again after the resume",
        60,
        || m.switches().len() >= 4,
    );
    assert_eq!(
        m.switches(),
        vec![
            format!("switch {bad}"),
            format!("switch {v1}"),
            format!("switch {bad}"),
            format!("switch {v1}")
        ],
        "{}",
        agent.dump()
    );
    cp.wait_rollout(&failing, "paused", 90);
}

// Issue 18, hole 3: an agent already running the release path re-sends cached results; measured
// before the batch started, they must not pass it.
#[test]
fn results_cached_from_before_a_batch_started_do_not_pass_it_fresh_ones_do() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    let check = |interval: u64| {
        std::fs::write(
            &m.health_config,
            format!(
                r#"{{"command":[{{"name":"app","command":"test -e {}/healthy","timeout":5,"interval":{interval}}}]}}"#,
                m.current.display()
            ),
        )
        .expect("write health config")
    };
    // The check runs once at start and then only every hour: every later report carries that result.
    check(3600);
    let (dir, port, cp) = given_a_control_plane();
    let agent = start_agent(dir.path(), port, &m);
    wait_until("a passing health report", 20, || {
        cp.machine("web-01")
            .is_some_and(|mm| mm["health"] == "healthy")
    });
    std::thread::sleep(Duration::from_millis(1100));

    // A rollout of the path web-01 already runs, started after that result was measured.
    let release = serde_json::json!({"entries": [{"hostname": "web-01", "store_path": v1.as_str(), "platform": "x86_64-linux"}]});
    let rel = cp.json("POST", "/api/v1/releases", Some(&release.to_string()), 201);
    let rollout = serde_json::json!({"release_id": rel["id"], "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 6});
    let id = cp.json("POST", "/api/v1/rollouts", Some(&rollout.to_string()), 201)["rollout_id"]
        .as_str()
        .expect("rollout id")
        .to_owned();
    let mut d = Value::Null;
    wait_until("the batch to be decided", 30, || {
        d = cp.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
        d["status"] != "running"
    });
    assert_eq!(
        d["status"],
        "paused",
        "only cached results reached the gate, so it must time out: {d}\n{}",
        agent.dump()
    );
    assert!(
        d["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("silent past"),
        "{d}"
    );
    // The agent did report during the batch: up-to-date, with the cached result and its old time.
    let started = d["batches"][0]["started_at"].as_str().expect("started_at");
    let started_ms = humantime::parse_rfc3339_weak(started)
        .expect("time")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let (_, events) = cp
        .call(
            "GET",
            "/api/v1/events?after=0&stream=machine:web-01&kind=HealthMeasured",
            None,
        )
        .expect("events");
    let during: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|e| e["at_ms"].as_u64() > Some(started_ms))
        .collect();
    assert!(
        !during.is_empty(),
        "no health report during the batch: {}",
        agent.dump()
    );
    assert!(
        during
            .iter()
            .all(|e| e["data"]["measured_at"].as_u64() < Some(started_ms)),
        "{during:?}"
    );

    // Checks that run again after the resume give fresh results: the batch passes.
    check(1);
    cp.json(
        "POST",
        &format!("/api/v1/rollouts/{id}/resume"),
        Some("{}"),
        200,
    );
    cp.wait_rollout(&id, "completed", 30);
}

/// A machine running a healthy v1.
fn booted_machine() -> Machine {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    m
}

/// Waits until web-01 is registered on `cp` with a passing health report.
fn wait_registered_and_healthy(cp: &ControlPlane, agent: &RunningAgent) {
    wait_until("web-01 to register and report healthy", 30, || {
        cp.machine("web-01")
            .is_some_and(|m| m["health"] == "healthy")
    });
    let machine = cp.machine("web-01").expect("registered");
    assert_eq!(
        machine["tags"],
        serde_json::json!(["canary", "web"]),
        "{machine}\n{}",
        agent.dump()
    );
}

#[test]
fn with_a_first_control_plane_that_refuses_connections_the_agent_registers_and_reports_through_the_second_and_stays_with_it(
) {
    let m = booted_machine();
    let (dir, port, cp) = given_a_control_plane();
    let closed = format!("https://localhost:{}", free_port());
    let second = format!("https://localhost:{port}");
    // The flag repeated.
    let mut cmd = agent_at(dir.path(), &closed, &m, "1");
    cmd.args(["--control-plane-url", &second]);
    let agent = RunningAgent::spawn(cmd, None);
    wait_registered_and_healthy(&cp, &agent);
    let line = agent.wait_for_log(
        &format!("control plane {closed} unreachable ("),
        Duration::from_secs(5),
    );
    assert!(line.contains(&format!("), trying {second}")), "{line}");
    // Sticky: the polls and reports of the next seconds go to the second control plane directly.
    let polls = agent.count("Health report sent");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        agent.count("Health report sent") > polls,
        "{}",
        agent.dump()
    );
    assert_eq!(
        agent.count("unreachable ("),
        1,
        "the agent went back to the refusing control plane:\n{}",
        agent.dump()
    );
    assert!(!agent.saw("Poll failed"), "{}", agent.dump());
}

#[test]
fn with_a_first_control_plane_that_answers_503_the_agent_registers_through_the_second() {
    let m = booted_machine();
    let (dir, port, cp) = given_a_control_plane();
    let (standby, asked) = standin::serve(standin::Reply::Unavailable("standing by"));
    let first = format!("http://127.0.0.1:{standby}");
    let second = format!("https://localhost:{port}");
    // A comma-separated list; the plain http:// stand-in needs --allow-insecure.
    let mut cmd = agent_at(dir.path(), &format!("{first},{second}"), &m, "1");
    cmd.arg("--allow-insecure");
    let agent = RunningAgent::spawn(cmd, None);
    wait_registered_and_healthy(&cp, &agent);
    let line = agent.wait_for_log(
        &format!("control plane {first} unreachable (HTTP 503: standing by), trying {second}"),
        Duration::from_secs(5),
    );
    assert!(!line.is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(asked.load(Ordering::SeqCst), 1, "{}", agent.dump());
}

#[test]
fn when_the_control_plane_in_use_stops_the_agent_wraps_around_to_the_first_one() {
    let m = booted_machine();
    let (dir, second_port, second) = given_a_control_plane();
    let first_port = free_port();
    let (first_url, second_url) = (
        format!("https://localhost:{first_port}"),
        format!("https://localhost:{second_port}"),
    );
    let cmd = agent_at(dir.path(), &format!("{first_url},{second_url}"), &m, "1");
    let agent = RunningAgent::spawn(cmd, None);
    wait_registered_and_healthy(&second, &agent);

    // The second stops and the first comes up (with its own log): the agent goes round to it.
    drop(second);
    let first = ControlPlane::start(dir.path(), first_port);
    wait_registered_and_healthy(&first, &agent);
    agent.wait_for_log(
        &format!("control plane {second_url} unreachable ("),
        Duration::from_secs(5),
    );
    assert!(
        agent.saw(&format!("), trying {first_url}")),
        "{}",
        agent.dump()
    );
}
