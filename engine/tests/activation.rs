//! Issue 18, hole 4, over the real API (real binary, mutual TLS): rollout options round trip
//! (create → desired-generation answer → rollout detail → events), a failed-units switch report
//! judged by the gate, reboot-needed in the machine status, and bad values refused with a 400.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::{json, Value};

fn setup() -> (tempfile::TempDir, Cp, String) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let cp = Cp::start(dir.path(), &pki);
    let key = bootstrap(&cp);
    let agent = cp.client("web-01", None);
    let (s, t) = agent.post(
        "/api/v1/machines/web-01/report",
        &report("web-01", &gen("web-01", 1), true, Some(true), &["web"]),
    );
    assert_eq!(s, 200, "{t}");
    (dir, cp, key)
}

fn release(cp: &Cp, key: &str, n: u32) -> String {
    let body = json!({"entries": [{"hostname": "web-01", "store_path": gen("web-01", n)}]});
    cp.client("operator", Some(key))
        .json("POST", "/api/v1/releases", Some(&body.to_string()), 201)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rollout(cp: &Cp, key: &str, rel: &str, extra: Value) -> String {
    let mut body = json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 60});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    cp.client("operator", Some(key))
        .json("POST", "/api/v1/rollouts", Some(&body.to_string()), 201)["rollout_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// web-01's report after switching to generation `n`: health passing, and `switch` as given.
fn switch_report(n: u32, switch: Value, reboot_needed: Value) -> String {
    let mut r: Value = serde_json::from_str(&report(
        "web-01",
        &gen("web-01", n),
        true,
        Some(true),
        &["web"],
    ))
    .unwrap();
    r["message"] = json!("deployed; switched, 2 units failed");
    r["switch"] = switch;
    r["reboot_needed"] = reboot_needed;
    r.to_string()
}

#[test]
fn rollout_options_reach_the_agent_and_the_detail_and_failed_units_fail_the_gate() {
    let (_d, cp, key) = setup();
    let op = cp.client("operator", Some(&key));
    let agent = cp.client("web-01", None);

    // Failed units allowed, boot activation: the agent is asked to boot it.
    let rel = release(&cp, &key, 2);
    let id = rollout(
        &cp,
        &key,
        &rel,
        json!({"activation": "boot", "allow_failed_units": true}),
    );
    let d = agent.json(
        "GET",
        "/api/v1/machines/web-01/desired-generation",
        None,
        200,
    );
    assert_eq!(d["activation"], "boot", "{d}");
    let r = op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
    assert_eq!(
        (&r["activation"], &r["allow_failed_units"]),
        (&json!("boot"), &json!(true))
    );
    assert!(
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "options"),
        "{r}"
    );
    let (s, t) = agent.post(
        "/api/v1/machines/web-01/report",
        &switch_report(1, json!({"path": gen("web-01", 2), "activation": "boot", "outcome": "pending_reboot", "exit_code": 0}), json!([])),
    );
    assert_eq!(s, 200, "{t}");
    let r = op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
    assert_eq!(r["status"], "completed", "{r}");

    // Defaults: no activation field for the agent, and failed units fail the gate.
    let rel = release(&cp, &key, 3);
    let id = rollout(&cp, &key, &rel, json!({}));
    let d = agent.json(
        "GET",
        "/api/v1/machines/web-01/desired-generation",
        None,
        200,
    );
    assert!(d.get("activation").is_none(), "{d}");
    let (s, t) = agent.post(
        "/api/v1/machines/web-01/report",
        &switch_report(3, json!({"path": gen("web-01", 3), "activation": "switch", "outcome": "failed_units", "exit_code": 4, "failed_units": 2}), json!(["kernel"])),
    );
    assert_eq!(s, 200, "{t}");
    let r = op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
    assert_eq!(r["status"], "paused", "{r}");
    let why = r["batches"][0]["machine_health"]["web-01"]["unhealthy"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("2 units failed (exit status 4"), "{r}");

    let m = op.json("GET", "/api/v1/machines/web-01", None, 200);
    assert_eq!(m["reboot_needed"], json!(["kernel"]), "{m}");
    assert_eq!(m["last_switch"]["outcome"], "failed_units", "{m}");
}

#[test]
fn bad_activation_values_get_a_400_naming_the_choices() {
    let (_d, cp, key) = setup();
    let op = cp.client("operator", Some(&key));
    let agent = cp.client("web-01", None);
    let rel = release(&cp, &key, 2);
    let body = json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "activation": "reboot"});
    let (s, t) = op.post("/api/v1/rollouts", &body.to_string());
    assert_eq!(s, 400, "{t}");
    assert!(
        t.contains(r#"activation \"reboot\" is not one of: switch, boot, test"#),
        "{t}"
    );

    let (s, t) = agent.post(
        "/api/v1/machines/web-01/report",
        &switch_report(
            2,
            json!({"path": gen("web-01", 2), "activation": "switch", "outcome": "mostly"}),
            json!([]),
        ),
    );
    assert_eq!(s, 400, "{t}");
    assert!(
        t.contains("switch.outcome \\\"mostly\\\" is not one of: switched, failed_units"),
        "{t}"
    );
    let (s, t) = agent.post(
        "/api/v1/machines/web-01/report",
        &switch_report(1, Value::Null, json!(vec!["kernel"; 9])),
    );
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("reboot_needed holds at most 8"), "{t}");
}
