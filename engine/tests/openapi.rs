//! `docs/openapi.yaml` is the API's contract for people and for schemathesis: these tests keep it
//! in step with the dispatcher (`ROUTES`) and with the statuses the handlers really return.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use nixfleet_core::ids::Timestamp;
use nixfleet_engine::api::routes::{handle, Principal, ROUTES};
use nixfleet_engine::api::App;
use nixfleet_engine::engine::{Engine, ManualClock};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// (METHOD, path pattern) → documented status codes.
fn documented(spec: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                let codes = op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{m} {path} has no responses"))
                    .keys()
                    .map(|c| c.parse::<u16>().unwrap())
                    .collect();
                out.insert((m.to_uppercase(), path.clone()), codes);
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_the_dispatcher_serves() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.0"));
    let doc: BTreeSet<(String, String)> = documented(&spec).into_keys().collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.yaml and ROUTES differ: undocumented {missing:?}, not served {extra:?}"
    );
}

#[test]
fn every_schema_reference_resolves_and_operator_routes_need_the_bearer_key() {
    let spec = spec();
    let text = serde_json::to_string(&spec).unwrap();
    for piece in text.split("\"$ref\":\"#/").skip(1) {
        let target = piece.split('"').next().unwrap();
        let mut node = &spec;
        for seg in target.split('/') {
            node = node
                .get(seg)
                .unwrap_or_else(|| panic!("dangling $ref #/{target}"));
        }
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
    assert_eq!(spec["security"], json!([{"apiKey": []}]));
    let open: BTreeSet<(String, String)> = documented(&spec)
        .into_keys()
        .filter(|(m, p)| spec["paths"][p][m.to_lowercase()].get("security") == Some(&json!([])))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/keys/bootstrap"),
        ("GET", "/api/v1/machines/{id}/desired-generation"),
        ("POST", "/api/v1/machines/{id}/report"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(
        open, want,
        "only these routes go without an API key (agents use their certificate)"
    );
}

/// The ROUTES pattern a concrete path matches.
fn pattern_of(method: &str, path: &str) -> String {
    let segs: Vec<&str> = path.split('?').next().unwrap().split('/').collect();
    ROUTES
        .iter()
        .filter(|(m, _, _)| *m == method)
        .map(|(_, p, _)| *p)
        .find(|p| {
            let ps: Vec<&str> = p.split('/').collect();
            ps.len() == segs.len()
                && ps
                    .iter()
                    .zip(&segs)
                    .all(|(a, b)| a == b || a.starts_with('{'))
        })
        .unwrap_or_else(|| panic!("{method} {path} matches no route"))
        .to_string()
}

struct Driver {
    app: App,
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl Driver {
    async fn call(
        &mut self,
        principal: &str,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (u16, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = handle(&self.app, &Principal::Cert(principal.into()), req).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        self.seen
            .entry((method.to_string(), pattern_of(method, path)))
            .or_default()
            .insert(status);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn json(&mut self, method: &str, path: &str, key: Option<&str>, body: Value) -> u16 {
        self.call(
            "operator",
            method,
            path,
            key,
            Some("application/json"),
            body.to_string(),
        )
        .await
        .0
    }
}

fn store_path(n: u32) -> String {
    format!("/nix/store/{n:032}-nixos-system-web-01")
}

#[tokio::test]
async fn the_statuses_key_handlers_return_are_documented() {
    let app = App {
        engine: Arc::new(Engine::in_memory(Arc::new(ManualClock::new(Timestamp(
            1_764_000_000_000,
        ))))),
        metrics: nixfleet_engine::api::metrics::install(),
        insecure: false,
        auto_register: true,
    };
    let mut d = Driver {
        app,
        seen: BTreeMap::new(),
    };
    let j = Some("application/json");

    // Bootstrap: 200 once, then 409; bad bodies 400/413/415/422.
    let (s, v) = d
        .call(
            "operator",
            "POST",
            "/api/v1/keys/bootstrap",
            None,
            j,
            "{not json",
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = d
        .call(
            "operator",
            "POST",
            "/api/v1/keys/bootstrap",
            None,
            j,
            r#"{"name":5}"#,
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = d
        .call(
            "operator",
            "POST",
            "/api/v1/keys/bootstrap",
            None,
            Some("text/plain"),
            "{}",
        )
        .await;
    assert_eq!(s, 415);
    let (s, _) = d
        .call(
            "operator",
            "POST",
            "/api/v1/keys/bootstrap",
            None,
            j,
            vec![b' '; 2 << 20],
        )
        .await;
    assert_eq!(s, 413);
    let (s, v) = d
        .call("operator", "POST", "/api/v1/keys/bootstrap", None, j, "{}")
        .await;
    assert_eq!(s, 200);
    let admin = v["key"].as_str().unwrap().to_owned();
    let admin = Some(admin.as_str());
    let (s, _) = d
        .call("operator", "POST", "/api/v1/keys/bootstrap", None, j, "{}")
        .await;
    assert_eq!(s, 409);

    // Keys: 401 without a key, 201, 409 on a duplicate, 400 on a bad role, 403 for a low role.
    let ro = json!({"name": "viewer", "role": "readonly"});
    assert_eq!(d.json("POST", "/api/v1/keys", None, ro.clone()).await, 401);
    let (s, v) = d
        .call("operator", "POST", "/api/v1/keys", admin, j, ro.to_string())
        .await;
    assert_eq!(s, 201);
    let viewer = v["key"].as_str().unwrap().to_owned();
    assert_eq!(d.json("POST", "/api/v1/keys", admin, ro).await, 409);
    let bad_role = json!({"name": "x", "role": "root"});
    assert_eq!(d.json("POST", "/api/v1/keys", admin, bad_role).await, 400);
    assert_eq!(
        d.json("GET", "/api/v1/keys", Some(&viewer), json!({}))
            .await,
        403
    );
    assert_eq!(d.json("GET", "/api/v1/keys", admin, json!({})).await, 200);
    assert_eq!(
        d.json("DELETE", "/api/v1/keys/nobody", admin, json!({}))
            .await,
        404
    );
    assert_eq!(
        d.json("DELETE", "/api/v1/keys/viewer", admin, json!({}))
            .await,
        204
    );
    assert_eq!(
        d.json("DELETE", "/api/v1/keys/viewer", admin, json!({}))
            .await,
        409
    );

    // Agent report: 200, 403 for another machine's certificate, 400 for a bad path, 422, 400 for a bad id.
    let report = |g: &str| {
        json!({"machine_id": "web-01", "current_generation": g, "success": true,
               "health": {"results": [{"status": "pass", "check_name": "http", "duration_ms": 1}], "all_passed": true}})
        .to_string()
    };
    let rp = "/api/v1/machines/web-01/report";
    assert_eq!(
        d.call("web-01", "POST", rp, None, j, report(&store_path(1)))
            .await
            .0,
        200
    );
    assert_eq!(
        d.call("db-01", "POST", rp, None, j, report(&store_path(1)))
            .await
            .0,
        403
    );
    assert_eq!(
        d.call("web-01", "POST", rp, None, j, report("/etc/passwd"))
            .await
            .0,
        400
    );
    assert_eq!(
        d.call("web-01", "POST", rp, None, j, r#"{"machine_id":"web-01"}"#)
            .await
            .0,
        422
    );
    // A malformed id is a 400 only for a caller whose certificate names it; anyone else is
    // refused for who they are first (403).
    let long_id = "a".repeat(129);
    let long = format!("/api/v1/machines/{long_id}/report");
    assert_eq!(
        d.call(&long_id, "POST", &long, None, j, report("")).await.0,
        400
    );
    assert_eq!(
        d.call("web-01", "POST", &long, None, j, report("")).await.0,
        403
    );
    let dg = "/api/v1/machines/web-01/desired-generation";
    assert_eq!(d.call("web-01", "GET", dg, None, None, "").await.0, 404);
    assert_eq!(d.call("db-01", "GET", dg, None, None, "").await.0, 403);

    // Releases and rollouts: 201, 400, 404, 409, 200.
    let release = json!({"entries": [{"hostname": "web-01", "store_path": store_path(2)}]});
    let (s, v) = d
        .call(
            "operator",
            "POST",
            "/api/v1/releases",
            admin,
            j,
            release.to_string(),
        )
        .await;
    assert_eq!(s, 201);
    let rel = v["id"].as_str().unwrap().to_owned();
    let empty = json!({"entries": []});
    assert_eq!(d.json("POST", "/api/v1/releases", admin, empty).await, 400);
    let ro_body = |rel: &str| json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}});
    assert_eq!(
        d.json("POST", "/api/v1/rollouts/plan", admin, ro_body(&rel))
            .await,
        200
    );
    assert_eq!(
        d.json("POST", "/api/v1/rollouts", admin, ro_body("rel-none"))
            .await,
        404
    );
    let (s, v) = d
        .call(
            "operator",
            "POST",
            "/api/v1/rollouts",
            admin,
            j,
            ro_body(&rel).to_string(),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let rid = v["rollout_id"].as_str().unwrap().to_owned();
    assert_eq!(
        d.json("POST", "/api/v1/rollouts", admin, ro_body(&rel))
            .await,
        409
    );
    let resume = format!("/api/v1/rollouts/{rid}/resume");
    assert_eq!(d.json("POST", &resume, admin, json!({})).await, 409);
    assert_eq!(d.call("web-01", "GET", dg, None, None, "").await.0, 200);
    let rel_path = format!("/api/v1/releases/{rel}");
    assert_eq!(d.json("DELETE", &rel_path, admin, json!({})).await, 409);
    let cancel = format!("/api/v1/rollouts/{rid}/cancel");
    assert_eq!(d.json("POST", &cancel, admin, json!({})).await, 200);
    assert_eq!(
        d.json("GET", "/api/v1/rollouts/r-none", admin, json!({}))
            .await,
        404
    );
    assert_eq!(
        d.json("GET", &format!("/api/v1/rollouts/{rid}"), admin, json!({}))
            .await,
        200
    );
    assert_eq!(
        d.json("GET", "/api/v1/events?after=x", admin, json!({}))
            .await,
        400
    );
    assert_eq!(
        d.json("GET", "/api/v1/events?after=0", admin, json!({}))
            .await,
        200
    );

    // Machines and audit: 201, 200, 400.
    let reg = "/api/v1/machines/db-01/register";
    assert_eq!(
        d.json("POST", reg, admin, json!({"tags": ["db"]})).await,
        201
    );
    assert_eq!(
        d.json("POST", reg, admin, json!({"lifecycle": "gone"}))
            .await,
        400
    );
    let lc = "/api/v1/machines/db-01/lifecycle";
    assert_eq!(
        d.json("PATCH", lc, admin, json!({"lifecycle": "maintenance"}))
            .await,
        200
    );
    assert_eq!(
        d.json("GET", "/api/v1/machines?tag=db", admin, json!({}))
            .await,
        200
    );
    assert_eq!(
        d.json("GET", "/api/v1/machines?tag=a%20b", admin, json!({}))
            .await,
        400
    );
    assert_eq!(
        d.json("GET", "/api/v1/machines/nope", admin, json!({}))
            .await,
        404
    );
    assert_eq!(
        d.json("GET", "/api/v1/audit?limit=5", admin, json!({}))
            .await,
        200
    );

    let doc = documented(&spec());
    for (route, statuses) in &d.seen {
        let listed = doc
            .get(route)
            .unwrap_or_else(|| panic!("{route:?} is not documented"));
        let undocumented: Vec<_> = statuses.difference(listed).collect();
        assert!(
            undocumented.is_empty(),
            "{} {} returned {undocumented:?}, which docs/openapi.yaml does not list ({listed:?})",
            route.0,
            route.1
        );
    }
    assert!(
        d.seen.len() >= 15,
        "the scenario exercised {} routes",
        d.seen.len()
    );
}
