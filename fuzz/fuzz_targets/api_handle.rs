//! The whole handler path without TLS: `api::routes::handle` on an in-memory engine with a manual
//! clock, fed arbitrary methods, paths (route patterns with arbitrary parameters, or raw text),
//! queries, principals, API keys, content types and bodies (raw bytes, or real bodies with
//! arbitrary values in every field). It never panics and never answers 5xx; a refused request
//! appends nothing; the projections always equal a replay of the log from zero.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use libfuzzer_sys::fuzz_target;
use nixfleet_core::ids::{Seq, Timestamp};
use nixfleet_engine::api::routes::{handle, Principal, ROUTES};
use nixfleet_engine::api::{metrics, App};
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_fuzz::{check_invariants, replay};
use std::sync::{Arc, OnceLock};

const METHODS: [&str; 7] = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"];

/// A value for a path parameter, query or body field.
#[derive(Arbitrary, Debug)]
enum Text {
    /// Something the setup created (a machine, the release, the rollout, a key name), so the
    /// fuzzer reaches past "not found".
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Path {
    Route(u8, Vec<Text>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    /// A real request body of one of the routes with arbitrary field values.
    Template(u8, Vec<Text>, Vec<Text>, u64, bool),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Request {
        method: u8,
        path: Path,
        query: Option<Vec<(Text, Text)>>,
        principal: u8,
        key: u8,
        content_type: u8,
        body: Body,
    },
    Advance(u16),
}

struct World {
    app: App,
    clock: Arc<ManualClock>,
    keys: [String; 3],
    known: Vec<String>,
}

impl World {
    fn text(&self, t: &Text) -> String {
        match t {
            Text::Known(i) => self.known[*i as usize % self.known.len()].clone(),
            Text::Raw(s) => s.clone(),
        }
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds")
    })
}

async fn call(app: &App, p: &Principal, req: Request<Full<Bytes>>) -> (u16, Vec<u8>) {
    let resp: Response<Full<Bytes>> = handle(app, p, req).await;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("a Full body cannot fail")
        .to_bytes()
        .to_vec();
    (status, body)
}

fn req(method: &str, uri: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .expect("setup requests are valid")
}

const GEN: &str = "/nix/store/00000000000000000000000000000001-nixos-system-web-01-1";
const GEN2: &str = "/nix/store/00000000000000000000000000000002-nixos-system-web-01-2";

/// A fresh engine with an admin, a deploy and a readonly key, two machines that reported, a
/// release and a running canary rollout.
async fn world() -> World {
    let clock = Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)));
    let app = App {
        engine: Arc::new(Engine::in_memory(clock.clone())),
        metrics: metrics::install(),
        insecure: false,
        auto_register: true,
    };
    let anon = Principal::Cert("operator".into());
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("setup answers are JSON");
    let (s, b) = call(&app, &anon, req("POST", "/api/v1/keys/bootstrap", None, r#"{"name":"admin"}"#)).await;
    assert_eq!(s, 200);
    let admin = json(&b)["key"].as_str().expect("key").to_owned();
    let mut keys = vec![admin.clone()];
    for (name, role) in [("ci", "deploy"), ("viewer", "readonly")] {
        let body = format!(r#"{{"name":"{name}","role":"{role}"}}"#);
        let (s, b) = call(&app, &anon, req("POST", "/api/v1/keys", Some(&admin), &body)).await;
        assert_eq!(s, 201);
        keys.push(json(&b)["key"].as_str().expect("key").to_owned());
    }
    for host in ["web-01", "web-02"] {
        let g = GEN.replace("web-01", host);
        let body = format!(
            r#"{{"machine_id":"{host}","current_generation":"{g}","success":true,"tags":["web"],"health":{{"results":[],"all_passed":true}}}}"#
        );
        let (s, _) = call(&app, &Principal::Cert(host.into()), req("POST", &format!("/api/v1/machines/{host}/report"), None, &body)).await;
        assert_eq!(s, 200);
    }
    let body = format!(
        r#"{{"entries":[{{"hostname":"web-01","store_path":"{GEN2}"}},{{"hostname":"web-02","store_path":"{}"}}]}}"#,
        GEN2.replace("web-01", "web-02")
    );
    let (s, b) = call(&app, &anon, req("POST", "/api/v1/releases", Some(&keys[1]), &body)).await;
    assert_eq!(s, 201);
    let release = json(&b)["id"].as_str().expect("id").to_owned();
    let body = format!(r#"{{"release_id":"{release}","strategy":"canary","target":{{"tags":["web"]}},"health_timeout":60,"seed":1}}"#);
    let (s, b) = call(&app, &anon, req("POST", "/api/v1/rollouts", Some(&keys[1]), &body)).await;
    assert_eq!(s, 201);
    let rollout = json(&b)["rollout_id"].as_str().expect("id").to_owned();
    let known = [
        "web-01", "web-02", "db-01", "web", &release, &rollout, "admin", "ci", "viewer", GEN, GEN2,
        "canary", "staged", "all_at_once", "1", "50%", "100%", "pause", "revert", "active",
        "maintenance", "decommissioned", "deploy", "readonly", "0", "60", "",
    ]
    .map(str::to_owned)
    .to_vec();
    World {
        app,
        clock,
        keys: [keys[0].clone(), keys[1].clone(), keys[2].clone()],
        known,
    }
}

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn template(w: &World, which: u8, a: &[Text], list: &[Text], n: u64, flag: bool) -> String {
    let f = |i: usize| js(&a.get(i).map(|t| w.text(t)).unwrap_or_default());
    let l = format!(
        "[{}]",
        list.iter().take(8).map(|t| js(&w.text(t))).collect::<Vec<_>>().join(",")
    );
    match which % 9 {
        0 => format!(
            r#"{{"machine_id":{},"current_generation":{},"success":{flag},"message":{},"tags":{l},"health":{{"results":[{{"status":"pass","check_name":{},"duration_ms":{n}}},{{"status":"fail","check_name":"x","duration_ms":1,"message":{}}}],"all_passed":{flag}}},"agent_version":{},"uptime_seconds":{n},"rolled_back_from":{},"dry_run":{flag}}}"#,
            f(0), f(1), f(2), f(3), f(4), f(5), f(6)
        ),
        1 => format!(
            r#"{{"entries":[{{"hostname":{},"store_path":{},"platform":{},"tags":{l}}},{{"hostname":{},"store_path":{}}}],"flake_ref":{},"flake_rev":{},"cache_url":{}}}"#,
            f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7)
        ),
        2 => format!(
            r#"{{"release_id":{},"strategy":{},"batch_sizes":{l},"failure_threshold":{},"on_failure":{},"health_timeout":{n},"target":{{"{}":{l}}},"seed":{n},"cache_url":{}}}"#,
            f(0), f(1), f(2), f(3), if flag { "tags" } else { "hosts" }, f(4)
        ),
        3 => format!(r#"{{"lifecycle":{},"tags":{l}}}"#, f(0)),
        4 => format!(r#"{{"lifecycle":{}}}"#, f(0)),
        5 => format!(r#"{{"store_path":{}}}"#, f(0)),
        6 => format!(r#"{{"name":{},"role":{}}}"#, f(0), f(1)),
        7 => format!(r#"{{"name":{}}}"#, f(0)),
        _ => "{}".into(),
    }
}

async fn step(w: &World, s: &Step) {
    let Step::Request { method, path, query, principal, key, content_type, body } = s else {
        if let Step::Advance(secs) = s {
            w.clock.advance_ms(u64::from(*secs) * 1000);
            let seq = w.app.engine.tick().expect("the memory log cannot fail");
            w.app.engine.wait_durable(seq).await.expect("durable");
        }
        return;
    };
    let method = METHODS[*method as usize % METHODS.len()];
    let mut uri = match path {
        Path::Route(i, params) => {
            let pattern = ROUTES[*i as usize % ROUTES.len()].1;
            let mut out = String::new();
            let mut n = 0;
            for (j, part) in pattern.split('{').enumerate() {
                if j == 0 {
                    out.push_str(part);
                    continue;
                }
                let (_, tail) = part.split_once('}').unwrap_or(("", part));
                out.push_str(&params.get(n).map(|t| w.text(t)).unwrap_or_else(|| "web-01".into()));
                out.push_str(tail);
                n += 1;
            }
            out
        }
        Path::Raw(p) => p.clone(),
    };
    if let Some(q) = query {
        let q: Vec<String> = q.iter().take(8).map(|(k, v)| format!("{}={}", w.text(k), w.text(v))).collect();
        uri = format!("{uri}?{}", q.join("&"));
    }
    let mut b = Request::builder().method(method).uri(uri.as_str());
    match content_type % 4 {
        0 => {}
        1 => b = b.header("content-type", "application/json"),
        2 => b = b.header("content-type", "text/plain"),
        _ => b = b.header("content-type", "application/json; charset=utf-8"),
    }
    match key % 6 {
        0 => {}
        k @ 1..=3 => b = b.header("authorization", format!("Bearer {}", w.keys[k as usize - 1])),
        4 => b = b.header("authorization", "Bearer nfk-0000"),
        _ => b = b.header("authorization", format!("Basic {}", w.keys[0])),
    }
    let body = match body {
        Body::Raw(bytes) => Bytes::from(bytes.clone()),
        Body::Template(which, a, list, n, flag) => Bytes::from(template(w, *which, a, list, *n, *flag)),
    };
    let Ok(req) = b.body(Full::new(body)) else {
        return; // not an HTTP request hyper would hand us (bad URI or header)
    };
    let principal = match principal % 5 {
        0 => Principal::Anonymous,
        1 => Principal::Cert("web-01".into()),
        2 => Principal::Cert("web-02".into()),
        3 => Principal::Cert("operator".into()),
        _ => Principal::Cert(String::new()),
    };
    let before = w.app.engine.log().last_seq();
    let (status, resp) = call(&w.app, &principal, req).await;
    let after = w.app.engine.log().last_seq();
    let text = String::from_utf8_lossy(&resp);
    assert!(status < 500, "{method} {uri} answered {status}: {text}");
    if status >= 400 {
        assert_eq!(before, after, "{method} {uri} was refused ({status}: {text}) yet appended events");
        if method != "HEAD" {
            let e: serde_json::Value = serde_json::from_slice(&resp)
                .unwrap_or_else(|e| panic!("{method} {uri}: error body is not JSON ({e}): {text}"));
            assert!(e["error"].is_string(), "{method} {uri}: error body has no message: {text}");
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    rt().block_on(async {
        let w = world().await;
        for s in steps.iter().take(16) {
            step(&w, s).await;
        }
        let log = w.app.engine.log().read_after(Seq(0), usize::MAX).expect("memory log reads");
        let envs: Vec<_> = log.into_iter().map(|r| r.into_envelope()).collect();
        let state = w.app.engine.read(|s| s.clone());
        check_invariants(&state);
        assert_eq!(replay(&envs), state, "replay from zero differs from the engine's projections");
    });
});
