//! The control plane over real mutual TLS on loopback: transport security, principals, roles,
//! bad input, and whole rollout life cycles driven by simulated agents.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn setup(machines: &[&str]) -> (tempfile::TempDir, Pki, Cp, String) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), machines);
    let cp = Cp::start(dir.path(), &pki);
    let key = bootstrap(&cp);
    (dir, pki, cp, key)
}

fn events(c: &Client, query: &str) -> Vec<Value> {
    let (s, t) = c.get(&format!("/api/v1/events?{query}"));
    assert_eq!(s, 200, "{t}");
    t.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kinds(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_handshake_fails_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &[]);
    let cp = Cp::start(dir.path(), &pki);
    let anon = Client::with_identity(cp.port, &pki.dir, None, None);
    assert!(
        anon.try_call("GET", "/health", None).is_err(),
        "no certificate, no HTTP"
    );
    assert!(anon
        .try_call("POST", "/api/v1/machines/web-01/report", Some("{}"))
        .is_err());
    assert_eq!(
        cp.client("operator", None).get("/health"),
        (200, "ok".into()),
        "positive control"
    );
}

#[test]
fn certificates_from_another_ca_or_expired_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &[]);
    pki.issue("web-01-expired", false, true);
    let other = Pki::new(&dir.path().join("other"), "another CA");
    other.issue("web-01", false, false);
    let cp = Cp::start(dir.path(), &pki);
    let foreign = Client::with_identity(
        cp.port,
        &pki.dir,
        Some((other.dir.clone(), "web-01".into())),
        None,
    );
    assert!(
        foreign.try_call("GET", "/health", None).is_err(),
        "a certificate of another CA must fail the handshake"
    );
    let expired = cp.client("web-01-expired", None);
    assert!(
        expired.try_call("GET", "/health", None).is_err(),
        "an expired certificate must fail the handshake"
    );
}

#[test]
fn an_agent_may_act_only_for_the_machine_named_by_its_certificate() {
    let (_d, _p, cp, _key) = setup(&["web-01", "unauth"]);
    let intruder = cp.client("unauth", None);
    let body = report("web-01", &gen("web-01", 1), true, None, &[]);
    assert_eq!(
        intruder.post("/api/v1/machines/web-01/report", &body).0,
        403
    );
    assert_eq!(
        intruder.get("/api/v1/machines/web-01/desired-generation").0,
        403
    );
    assert_eq!(
        intruder
            .post(
                "/api/v1/machines/unauth/report",
                &report("unauth", &gen("unauth", 1), true, None, &[])
            )
            .0,
        200
    );
    let web = cp.client("web-01", None);
    assert_eq!(
        web.post(
            "/api/v1/machines/web-01/report",
            &report("unauth", "", true, None, &[])
        )
        .0,
        403,
        "body must name the same machine"
    );
    assert_eq!(web.post("/api/v1/machines/web-01/report", &body).0, 200);
    assert_eq!(
        web.get("/api/v1/machines/web-01/desired-generation").0,
        404,
        "no desired generation yet"
    );
}

#[test]
fn bootstrap_works_once_and_then_answers_409() {
    let (_d, _p, cp, key) = setup(&[]);
    assert!(key.starts_with("nfk-") && key.len() == 68);
    let (s, t) = cp
        .client("operator", None)
        .post("/api/v1/keys/bootstrap", "{}");
    assert_eq!(s, 409);
    assert!(t.contains("API keys already exist"));
    let keys = cp
        .client("operator", Some(&key))
        .json("GET", "/api/v1/keys", None, 200);
    assert_eq!(keys.as_array().unwrap().len(), 1);
}

#[test]
fn each_role_reaches_exactly_its_routes_and_a_revoked_key_fails_at_once() {
    let (_d, _p, cp, admin_key) = setup(&[]);
    let admin = cp.client("operator", Some(&admin_key));
    let ro = admin.json(
        "POST",
        "/api/v1/keys",
        Some(r#"{"name":"viewer","role":"readonly"}"#),
        201,
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dep = admin.json(
        "POST",
        "/api/v1/keys",
        Some(r#"{"name":"ci","role":"deploy"}"#),
        201,
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let ro = cp.client("operator", Some(&ro));
    let dep = cp.client("operator", Some(&dep));
    let release = format!(
        r#"{{"entries":[{{"hostname":"web-01","store_path":"{}"}}]}}"#,
        gen("web-01", 1)
    );
    assert_eq!(ro.get("/api/v1/machines").0, 200);
    assert_eq!(ro.get("/api/v1/audit").0, 200);
    assert_eq!(ro.post("/api/v1/releases", &release).0, 403);
    assert_eq!(ro.post("/api/v1/machines/web-01/register", "{}").0, 403);
    let rel = dep.json("POST", "/api/v1/releases", Some(&release), 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rel.starts_with("rel-"));
    assert_eq!(
        dep.call("DELETE", &format!("/api/v1/releases/{rel}"), None)
            .0,
        403,
        "delete is admin only"
    );
    assert_eq!(dep.post("/api/v1/machines/web-01/register", "{}").0, 403);
    assert_eq!(dep.get("/api/v1/keys").0, 403);
    assert_eq!(
        admin
            .post("/api/v1/machines/web-01/register", r#"{"tags":["web"]}"#)
            .0,
        201
    );
    assert_eq!(
        admin
            .call("DELETE", &format!("/api/v1/releases/{rel}"), None)
            .0,
        204
    );
    assert_eq!(
        cp.client("operator", Some("nfk-0000"))
            .get("/api/v1/machines")
            .0,
        401
    );
    assert_eq!(cp.client("operator", None).get("/api/v1/machines").0, 401);
    assert_eq!(admin.call("DELETE", "/api/v1/keys/ci", None).0, 204);
    assert_eq!(
        dep.get("/api/v1/machines").0,
        401,
        "revoked keys fail at once"
    );
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let admin = cp.client("operator", Some(&key));
    let before = events(&admin, "after=0").len();
    // The server closes the connection after a 413 (the body is not read): a separate client.
    let (s, t) = cp
        .client("operator", Some(&key))
        .post("/api/v1/releases", &"x".repeat(2 << 20));
    assert_eq!(s, 413, "{t}");
    let long = "a".repeat(129);
    assert_eq!(
        admin
            .post(&format!("/api/v1/machines/{long}/register"), "{}")
            .0,
        400
    );
    let (s, t) = admin.post("/api/v1/releases", "{not json");
    assert_eq!(s, 400, "{t}");
    let (s, t) = admin.post("/api/v1/releases", r#"{"flake_ref":"x"}"#);
    assert_eq!(s, 422);
    assert!(t.contains("entries"), "names the missing field: {t}");
    let (s, t) = admin.post(
        "/api/v1/releases",
        r#"{"entries":[{"hostname":"web-01","store_path":"/nix/store/x;rm -rf /"}]}"#,
    );
    assert_eq!(s, 400, "{t}");
    let (s, t) = admin.post("/api/v1/releases", r#"{"entries":[]}"#);
    assert_eq!(s, 400, "{t}");
    let (s, t) = cp.client("web-01", None).post(
        "/api/v1/machines/web-01/report",
        &report("web-01", "/etc/passwd", true, None, &[]),
    );
    assert_eq!(s, 400, "{t}");
    assert_eq!(
        events(&admin, "after=0").len(),
        before,
        "no event was appended"
    );
}

#[test]
fn an_early_refusal_reaches_a_client_still_sending_a_large_body() {
    // Given a control plane, and requests that are refused before their body matters: a report
    // under another machine's certificate (403) and a release without a key (401)
    let (_d, _p, cp, key) = setup(&["web-01", "web-02"]);
    let admin = cp.client("operator", Some(&key));
    let before = events(&admin, "after=0").len();
    let big = format!(r#"{{"entries":[],"pad":"{}"}}"#, "x".repeat(600 << 10));
    for round in 0..10 {
        // When each is sent with a 600 kB body on a fresh connection
        let (s, t) = cp
            .client("web-02", None)
            .try_call("POST", "/api/v1/machines/web-01/report", Some(&big))
            .unwrap_or_else(|e| panic!("round {round}: the 403 was lost: {e}"));
        // Then the refusal arrives every time, not a connection reset
        assert_eq!(s, 403, "round {round}: {t}");
        let (s, t) = cp
            .client("operator", None)
            .try_call("POST", "/api/v1/releases", Some(&big))
            .unwrap_or_else(|e| panic!("round {round}: the 401 was lost: {e}"));
        assert_eq!(s, 401, "round {round}: {t}");
    }
    // And nothing was appended
    assert_eq!(events(&admin, "after=0").len(), before);
}

#[test]
fn a_body_over_the_cap_gets_413_not_a_reset_and_the_connection_stays_usable() {
    // Given a control plane and an operator with a key
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let admin = cp.client("operator", Some(&key));
    let before = events(&admin, "after=0").len();
    let huge = "x".repeat(3 << 20);
    for round in 0..10 {
        // When a 3 MiB release body is sent (the cap is 1 MiB)
        let (s, t) = admin
            .try_call("POST", "/api/v1/releases", Some(&huge))
            .unwrap_or_else(|e| panic!("round {round}: the 413 was lost: {e}"));
        // Then the 413 arrives every time, naming the cap
        assert_eq!(s, 413, "round {round}: {t}");
        assert!(t.contains("1048576"), "{t}");
        // And the same client (a kept-alive connection) goes on working
        assert_eq!(admin.get("/api/v1/machines").0, 200, "round {round}");
    }
    assert_eq!(
        events(&admin, "after=0").len(),
        before,
        "nothing was appended"
    );
}

fn fleet_with_release(cp: &Cp, key: &str, hosts: &[&str]) -> String {
    for h in hosts {
        let (s, t) = cp.client(h, None).post(
            &format!("/api/v1/machines/{h}/report"),
            &report(h, &gen(h, 1), true, Some(true), &["web"]),
        );
        assert_eq!(s, 200, "{t}");
    }
    let entries: Vec<Value> = hosts.iter().map(|h| serde_json::json!({"hostname": h, "store_path": gen(h, 2), "platform": "x86_64-linux"})).collect();
    let body = serde_json::json!({"entries": entries}).to_string();
    cp.client("operator", Some(key))
        .json("POST", "/api/v1/releases", Some(&body), 201)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two web hosts on a control plane started with `env`, a release for them and a running canary
/// rollout (health timeout 60 s): the directory, PKI, control plane, admin key and rollout id.
fn canary_fleet(env: &[(&str, &str)]) -> (tempfile::TempDir, Pki, Cp, String, String) {
    let hosts = ["web-01", "web-02"];
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &hosts);
    let cp = Cp::start_env(dir.path().join("data"), &pki, free_port(), env);
    let key = bootstrap(&cp);
    let rel = fleet_with_release(&cp, &key, &hosts);
    let id = rollout(
        &cp,
        &key,
        serde_json::json!({"release_id": rel, "strategy": "canary", "target": {"tags": ["web"]}, "health_timeout": 60}),
    );
    (dir, pki, cp, key, id)
}

fn rollout(cp: &Cp, key: &str, body: Value) -> String {
    let v = cp.client("operator", Some(key)).json(
        "POST",
        "/api/v1/rollouts",
        Some(&body.to_string()),
        201,
    );
    v["rollout_id"].as_str().unwrap().to_owned()
}

fn status(cp: &Cp, key: &str, id: &str) -> Value {
    cp.client("operator", Some(key))
        .json("GET", &format!("/api/v1/rollouts/{id}"), None, 200)
}

fn wait_status(cp: &Cp, key: &str, id: &str, want: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("rollout {id} to be {want}"), secs, || {
        last = status(cp, key, id);
        last["status"] == want
    });
    last
}

#[test]
fn a_canary_rollout_completes_when_every_machine_reports_healthy() {
    let hosts = ["web-01", "web-02"];
    let (_d, _p, cp, key) = setup(&hosts);
    let rel = fleet_with_release(&cp, &key, &hosts);
    let plan = cp.client("operator", Some(&key)).json(
        "POST",
        "/api/v1/rollouts/plan",
        Some(&serde_json::json!({"release_id": rel, "strategy": "canary", "target": {"tags": ["web"]}, "seed": 7}).to_string()),
        200,
    );
    let id = rollout(
        &cp,
        &key,
        serde_json::json!({"release_id": rel, "strategy": "canary", "target": {"tags": ["web"]}, "health_timeout": 60, "seed": 7}),
    );
    let d = status(&cp, &key, &id);
    assert_eq!(
        d["batches"][0]["machine_ids"], plan["batches"][0]["machine_ids"],
        "the plan predicted the batches"
    );
    for b in 0..2 {
        let h = d["batches"][b]["machine_ids"][0]
            .as_str()
            .unwrap()
            .to_owned();
        let agent = cp.client(&h, None);
        let desired = agent.json(
            "GET",
            &format!("/api/v1/machines/{h}/desired-generation"),
            None,
            200,
        );
        assert_eq!(desired["hash"], gen(&h, 2));
        assert_eq!(desired["poll_hint"], 5);
        agent.post(
            &format!("/api/v1/machines/{h}/report"),
            &report(&h, &gen(&h, 2), true, Some(true), &["web"]),
        );
    }
    let d = wait_status(&cp, &key, &id, "completed", 10);
    assert_eq!(
        d["batches"][1]["machine_health"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap(),
        "healthy"
    );
    let evs = events(
        &cp.client("operator", Some(&key)),
        &format!("after=0&stream=rollout:{id}"),
    );
    assert_eq!(
        kinds(&evs),
        [
            "RolloutCreated",
            "BatchStarted",
            "BatchSucceeded",
            "BatchStarted",
            "BatchSucceeded",
            "RolloutCompleted"
        ]
    );
}

#[test]
fn a_silent_machine_pauses_the_rollout_at_the_health_timeout_and_resume_recovers() {
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let rel = fleet_with_release(&cp, &key, &["web-01"]);
    let started = Instant::now();
    let id = rollout(
        &cp,
        &key,
        serde_json::json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 2}),
    );
    let d = wait_status(&cp, &key, &id, "paused", 10);
    assert!(started.elapsed() >= Duration::from_secs(2));
    let failed = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "batch_failed")
        .unwrap();
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains(r#""unhealthy":1"#),
        "{failed}"
    );
    assert!(cp.log_text().contains("Health timeout elapsed"));
    let admin = cp.client("operator", Some(&key));
    let evs = events(&admin, &format!("after=0&stream=rollout:{id}"));
    assert_eq!(
        kinds(&evs),
        [
            "RolloutCreated",
            "BatchStarted",
            "BatchFailed",
            "RolloutPaused"
        ]
    );
    assert_eq!(evs[2]["data"]["reason"], "Timeout");
    let machine_reports = events(&admin, "after=0&stream=machine:web-01&kind=ReportReceived");
    assert_eq!(
        machine_reports.len(),
        1,
        "only the report from before the rollout"
    );
    // Resume: a fresh start point; a passing report afterwards completes the rollout.
    let r = admin.json(
        "POST",
        &format!("/api/v1/rollouts/{id}/resume"),
        Some("{}"),
        200,
    );
    assert_eq!(r["status"], "running");
    assert_eq!(
        admin.post(&format!("/api/v1/rollouts/{id}/resume"), "{}").0,
        409,
        "not paused any more"
    );
    cp.client("web-01", None).post(
        "/api/v1/machines/web-01/report",
        &report("web-01", &gen("web-01", 2), true, Some(true), &[]),
    );
    wait_status(&cp, &key, &id, "completed", 10);
}

#[test]
fn revert_sends_every_machine_back_to_its_observed_generation() {
    let hosts = ["web-01", "web-02"];
    let (_d, _p, cp, key) = setup(&hosts);
    let rel = fleet_with_release(&cp, &key, &hosts);
    let id = rollout(
        &cp,
        &key,
        serde_json::json!({"release_id": rel, "strategy": "staged", "batch_sizes": ["1", "1"], "on_failure": "revert", "target": {"tags": ["web"]}, "health_timeout": 30}),
    );
    let d = status(&cp, &key, &id);
    let first = d["batches"][0]["machine_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let second = d["batches"][1]["machine_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    cp.client(&first, None).post(
        &format!("/api/v1/machines/{first}/report"),
        &report(&first, &gen(&first, 2), true, Some(true), &[]),
    );
    wait_until("second batch to start", 10, || {
        status(&cp, &key, &id)["batches"][1]["status"] != "pending"
    });
    cp.client(&second, None).post(
        &format!("/api/v1/machines/{second}/report"),
        &report(&second, &gen(&second, 2), true, Some(false), &[]),
    );
    let d = wait_status(&cp, &key, &id, "reverted", 10);
    assert_eq!(
        d["batches"][0]["previous_generations"][&first],
        gen(&first, 1)
    );
    for h in [&first, &second] {
        let m = cp.client("operator", Some(&key)).json(
            "GET",
            &format!("/api/v1/machines/{h}"),
            None,
            200,
        );
        assert_eq!(
            m["desired_generation"],
            gen(h, 1),
            "{h} is sent back, the failed batch included"
        );
    }
}

#[test]
fn a_control_plane_killed_mid_rollout_continues_from_its_log() {
    let (dir, pki, mut cp, key, id) = canary_fleet(&[]);
    let d = status(&cp, &key, &id);
    let first = d["batches"][0]["machine_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let second = d["batches"][1]["machine_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    cp.client(&first, None).post(
        &format!("/api/v1/machines/{first}/report"),
        &report(&first, &gen(&first, 2), true, Some(true), &[]),
    );
    let before = events(&cp.client("operator", Some(&key)), "after=0");
    cp.kill9();
    let cp = Cp::start_at(dir.path().join("data"), &pki, cp.port);
    let after = events(&cp.client("operator", Some(&key)), "after=0");
    assert_eq!(
        after, before,
        "every acknowledged event survived the SIGKILL"
    );
    assert_eq!(status(&cp, &key, &id)["batches"][1]["status"], "deploying");
    cp.client(&second, None).post(
        &format!("/api/v1/machines/{second}/report"),
        &report(&second, &gen(&second, 2), true, Some(true), &[]),
    );
    wait_status(&cp, &key, &id, "completed", 10);
    let ready = cp.client("operator", None).json("GET", "/ready", None, 200);
    assert_eq!(ready["ready"], true);
}

#[test]
fn with_most_of_its_log_archived_the_control_plane_serves_and_restarts_on_the_whole_log() {
    // Segments of 16 records: the rollout's own events, and the reports around them, end up in
    // sealed segment files while the control plane runs.
    let env = [("NIXFLEET_CP_LOG_SEGMENT_RECORDS", "16")];
    let (dir, pki, mut cp, key, id) = canary_fleet(&env);
    let d = status(&cp, &key, &id);
    for b in 0..2 {
        let h = d["batches"][b]["machine_ids"][0]
            .as_str()
            .unwrap()
            .to_owned();
        for _ in 0..30 {
            cp.client(&h, None).post(
                &format!("/api/v1/machines/{h}/report"),
                &report(&h, &gen(&h, 2), true, Some(true), &["web"]),
            );
        }
    }
    wait_status(&cp, &key, &id, "completed", 10);
    let admin = cp.client("operator", Some(&key));
    let all = events(&admin, "after=0&limit=10000");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let archive = dir.path().join("data/log/archive");
    wait_until("the archive to hold segments", 10, || {
        std::fs::read_dir(&archive).map(|d| d.count()).unwrap_or(0) >= 2
    });
    let timeline = status(&cp, &key, &id)["events"].clone();
    assert_eq!(timeline.as_array().unwrap().len(), 6, "{timeline}");
    // The rollout's first events are in a sealed segment, not in sled.
    let created = events(&admin, &format!("after=0&stream=rollout:{id}"))[0]["seq"]
        .as_u64()
        .unwrap();
    let archived_to = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?
                .split_once('-')?
                .1
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert!(
        created <= archived_to,
        "RolloutCreated ({created}) is archived (to {archived_to})"
    );
    cp.kill9();

    let cp = Cp::start_env(dir.path().join("data"), &pki, cp.port, &env);
    let admin = cp.client("operator", Some(&key));
    assert_eq!(
        events(&admin, "after=0&limit=10000"),
        all,
        "the events API reads the archive and sled as one log"
    );
    let d = status(&cp, &key, &id);
    assert_eq!(d["status"], "completed");
    assert_eq!(
        d["events"], timeline,
        "the rollout's timeline reads its archived events"
    );
    let evs = events(&admin, &format!("after=0&stream=rollout:{id}"));
    assert_eq!(
        kinds(&evs).first().map(String::as_str),
        Some("RolloutCreated")
    );
    assert_eq!(
        kinds(&evs).last().map(String::as_str),
        Some("RolloutCompleted")
    );
}

#[test]
fn the_plan_endpoint_writes_nothing() {
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let rel = fleet_with_release(&cp, &key, &["web-01"]);
    let admin = cp.client("operator", Some(&key));
    let n = events(&admin, "after=0").len();
    let plan = admin.json("POST", "/api/v1/rollouts/plan", Some(&serde_json::json!({"release_id": rel, "strategy": "all_at_once", "target": {"tags": ["web"]}}).to_string()), 200);
    assert_eq!(plan["total_machines"], 1);
    assert_eq!(events(&admin, "after=0").len(), n);
    assert!(admin
        .json("GET", "/api/v1/rollouts", None, 200)
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_long_poll_on_the_events_api_returns_as_soon_as_an_event_is_appended() {
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let admin = cp.client("operator", Some(&key));
    let last = events(&admin, "after=0").last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let port = cp.port;
    let pki_dir = cp.pki_dir.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Client::new(port, &pki_dir, Some("web-01"), None).post(
            "/api/v1/machines/web-01/report",
            &report("web-01", "", true, None, &[]),
        );
    });
    let start = Instant::now();
    let evs = events(&admin, &format!("after={last}&wait=20"));
    let waited = start.elapsed();
    t.join().unwrap();
    assert!(!evs.is_empty());
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "it did wait: {waited:?}"
    );
}

#[test]
fn metrics_are_right_straight_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let mut cp = Cp::start(dir.path(), &pki);
    let key = bootstrap(&cp);
    let _ = fleet_with_release(&cp, &key, &["web-01"]);
    cp.kill9();
    let cp = Cp::start_at(dir.path().join("data"), &pki, cp.port);
    let (s, m) = cp.client("operator", None).get("/metrics");
    assert_eq!(s, 200);
    assert!(m.contains("nixfleet_fleet_size 1"), "{m}");
    assert!(m.contains("nixfleet_rollouts_total"), "{m}");
    assert!(
        m.contains(r#"nixfleet_machines_by_health{health="healthy"} 1"#),
        "{m}"
    );
}

#[test]
fn audit_export_neutralises_formulas() {
    let (_d, _p, cp, key) = setup(&[]);
    let admin = cp.client("operator", Some(&key));
    admin.post("/api/v1/machines/web-01/register", r#"{"tags":["web"]}"#);
    let (s, csv) = admin.get("/api/v1/audit/export");
    assert_eq!(s, 200);
    assert!(csv.starts_with("timestamp,actor,action,target,detail\n"));
    assert!(csv.contains("\"register\""), "{csv}");
    assert_eq!(
        nixfleet_engine::api::routes::csv_cell("=cmd|' /C calc'!A0"),
        "\"'=cmd|' /C calc'!A0\""
    );
    assert_eq!(
        nixfleet_engine::api::routes::csv_cell("@SUM(1)"),
        "\"'@SUM(1)\""
    );
}

/// A poll report of `host` running `generation`, with one passing check measured at `measured`
/// and the report built at `sent` (RFC 3339, the agent's clock).
fn report_measured(host: &str, generation: &str, measured: &str, sent: &str) -> String {
    serde_json::json!({"machine_id": host, "current_generation": generation, "success": true,
        "message": "up-to-date", "timestamp": sent, "tags": ["web"], "agent_version": "test",
        "uptime_seconds": 1, "health": {"results": [{"status": "pass", "check_name": "http",
        "duration_ms": 1}], "all_passed": true, "timestamp": measured}})
    .to_string()
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

// Issue 18, hole 3: a cached pass measured before the batch started must not pass it.
#[test]
fn a_pass_measured_before_the_batch_started_does_not_let_it_succeed() {
    let (_d, _p, cp, key) = setup(&["web-01"]);
    let rel = fleet_with_release(&cp, &key, &["web-01"]);
    let agent = cp.client("web-01", None);
    let path = "/api/v1/machines/web-01/report";
    // web-01 already runs the release path and its checks pass, measured now.
    let measured = rfc3339_now();
    let (s, t) = agent.post(
        path,
        &report_measured("web-01", &gen("web-01", 2), &measured, &rfc3339_now()),
    );
    assert_eq!(s, 200, "{t}");
    std::thread::sleep(Duration::from_millis(20));
    let id = rollout(
        &cp,
        &key,
        serde_json::json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 60}),
    );
    // The agent re-sends that cached result after the batch started.
    std::thread::sleep(Duration::from_millis(20));
    let (s, t) = agent.post(
        path,
        &report_measured("web-01", &gen("web-01", 2), &measured, &rfc3339_now()),
    );
    assert_eq!(s, 200, "{t}");
    std::thread::sleep(Duration::from_millis(300));
    let d = status(&cp, &key, &id);
    assert_eq!(
        d["status"], "running",
        "a stale pass decided the batch: {d}"
    );
    assert_eq!(
        d["batches"][0]["machine_health"]["web-01"], "pending",
        "{d}"
    );
    // The log says when those results were measured, right before the results it dates.
    let admin = cp.client("operator", Some(&key));
    let evs = events(&admin, "after=0&stream=machine:web-01");
    let k = kinds(&evs);
    assert_eq!(
        &k[k.len() - 3..],
        ["ReportReceived", "HealthMeasured", "HealthReported"],
        "{k:?}"
    );
    // A fresh result (measured after the batch started) passes it.
    let (s, t) = agent.post(
        path,
        &report_measured("web-01", &gen("web-01", 2), &rfc3339_now(), &rfc3339_now()),
    );
    assert_eq!(s, 200, "{t}");
    wait_status(&cp, &key, &id, "completed", 10);
}

#[test]
fn an_unreadable_health_time_is_a_400_naming_the_field() {
    let (_d, _p, cp, _key) = setup(&["web-01"]);
    let (s, t) = cp.client("web-01", None).post(
        "/api/v1/machines/web-01/report",
        &report_measured("web-01", &gen("web-01", 1), "yesterday", &rfc3339_now()),
    );
    assert_eq!(s, 400, "{t}");
    assert!(
        t.contains("health.timestamp") && t.contains("RFC 3339"),
        "{t}"
    );
}
