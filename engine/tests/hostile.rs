//! Hostile input against the real control plane binary over real mutual TLS: keys used beyond
//! their role, oversized and trickled bodies, slow and idle clients holding connections, ids, tags
//! and store paths built to traverse paths or reach a shell, and certificates named to confuse.
//! Each test also proves that nothing was appended. (Expired and foreign certificates, another
//! machine's CN and revoked keys are in `api.rs`; a damaged log is in `log_at_start.rs`.)
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setup(machines: &[&str]) -> (tempfile::TempDir, Pki, Cp, String) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), machines);
    let cp = Cp::start(dir.path(), &pki);
    let key = bootstrap(&cp);
    (dir, pki, cp, key)
}

/// Number of records in the log, read through the events API.
fn event_count(cp: &Cp, admin: &str) -> usize {
    let (s, t) = cp
        .client("operator", Some(admin))
        .get("/api/v1/events?after=0&limit=100000");
    assert_eq!(s, 200, "{t}");
    t.lines().count()
}

fn new_key(cp: &Cp, admin: &str, name: &str, role: &str) -> String {
    cp.client("operator", Some(admin)).json(
        "POST",
        "/api/v1/keys",
        Some(&format!(r#"{{"name":"{name}","role":"{role}"}}"#)),
        201,
    )["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A raw TLS connection presenting `<cert>-cert.pem` of `pki`, for requests ureq will not send.
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn raw_tls(port: u16, pki: &Path, cert: Option<&str>) -> Tls {
    use rustls::pki_types::ServerName;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(pki.join("ca.pem")).unwrap()[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(name) => {
            let pem = std::fs::read(pki.join(format!("{name}-cert.pem"))).unwrap();
            let chain = rustls_pemfile::certs(&mut &pem[..])
                .map(|c| c.unwrap())
                .collect();
            let key = std::fs::read(pki.join(format!("{name}-key.pem"))).unwrap();
            let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Reads what the server sends until it closes the connection (or 60 s pass); returns the text
/// and the seconds it took.
fn read_until_closed(s: &mut impl Read) -> (String, f64) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "still open after 60 s; received {:?}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(_) => break, // reset, or TLS closed without close_notify: closed either way
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed().as_secs_f64(),
    )
}

/// Reads one HTTP response (head and Content-Length body), or what arrived before the server
/// closed the connection.
fn read_response(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Open file descriptors of the control plane (its sockets among them).
fn open_fds(cp: &Cp) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", cp.child.id()))
        .unwrap()
        .count()
}

/// Each route of `docs/openapi.yaml` whose summary says "Role <role>.", as (METHOD, pattern).
fn documented_routes_of_role(role: &str) -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let spec: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for (p, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "put", "delete"] {
            let summary = item[m]["summary"].as_str().unwrap_or("");
            if summary.contains(&format!("Role {role}.")) {
                out.push((m.to_uppercase(), p.clone()));
            }
        }
    }
    out
}

/// A plausible body for each route that takes one, so a refusal cannot be blamed on the body.
fn body_for(method: &str, pattern: &str, release: &str) -> Option<String> {
    let g = gen("web-01", 2);
    let b = match (method, pattern) {
        ("POST", "/api/v1/keys") => r#"{"name":"intruder","role":"admin"}"#.to_owned(),
        ("POST", "/api/v1/machines/{id}/register") => r#"{"tags":["web"]}"#.to_owned(),
        ("PATCH", "/api/v1/machines/{id}/lifecycle") => r#"{"lifecycle":"maintenance"}"#.to_owned(),
        ("POST", "/api/v1/machines/{id}/notify-deploy") => format!(r#"{{"store_path":"{g}"}}"#),
        ("POST", "/api/v1/releases") => {
            format!(r#"{{"entries":[{{"hostname":"web-01","store_path":"{g}"}}]}}"#)
        }
        ("POST", "/api/v1/rollouts") | ("POST", "/api/v1/rollouts/plan") => format!(
            r#"{{"release_id":"{release}","strategy":"all_at_once","target":{{"hosts":["web-01"]}}}}"#
        ),
        ("GET", _) | ("DELETE", _) => return None,
        _ => "{}".to_owned(),
    };
    Some(b)
}

fn fill(pattern: &str, release: &str, rollout: &str) -> String {
    pattern
        .replace("{name}", "ci")
        .replace("{a}", release)
        .replace("{b}", release)
        .replace(
            "{id}",
            if pattern.starts_with("/api/v1/releases") {
                release
            } else if pattern.starts_with("/api/v1/rollouts") {
                rollout
            } else {
                "web-01"
            },
        )
}

#[test]
fn a_deploy_key_is_refused_on_every_admin_route_and_a_readonly_key_on_every_deploy_route() {
    // Given a fleet with a machine, a release, a paused-able rollout, and a key of each role
    let (_d, _p, cp, admin) = setup(&["web-01"]);
    let web = cp.client("web-01", None);
    assert_eq!(
        web.post(
            "/api/v1/machines/web-01/report",
            &report("web-01", &gen("web-01", 1), true, Some(true), &["web"])
        )
        .0,
        200
    );
    let deploy = new_key(&cp, &admin, "ci", "deploy");
    let readonly = new_key(&cp, &admin, "viewer", "readonly");
    let a = cp.client("operator", Some(&admin));
    let release = a.json(
        "POST",
        "/api/v1/releases",
        body_for("POST", "/api/v1/releases", "").as_deref(),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rollout = a.json(
        "POST",
        "/api/v1/rollouts",
        body_for("POST", "/api/v1/rollouts", &release).as_deref(),
        201,
    )["rollout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_routes = documented_routes_of_role("admin");
    let deploy_routes = documented_routes_of_role("deploy");
    assert!(
        admin_routes.len() >= 7 && deploy_routes.len() >= 6,
        "the document names each route's role: admin {admin_routes:?}, deploy {deploy_routes:?}"
    );
    let before = event_count(&cp, &admin);
    let mut tried = 0;
    // When a deploy key calls each admin route, and a readonly key each admin and deploy route
    for (key, role, routes) in [
        (&deploy, "deploy", admin_routes.clone()),
        (&readonly, "readonly", admin_routes.clone()),
        (&readonly, "readonly", deploy_routes.clone()),
    ] {
        let c = cp.client("operator", Some(key));
        for (m, pattern) in &routes {
            let path = fill(pattern, &release, &rollout);
            let body = body_for(m, pattern, &release);
            let (s, t) = c.call(m, &path, body.as_deref());
            // Then each answers 403 and names the role it needs
            assert_eq!(s, 403, "{role} key on {m} {path}: {s} {t}");
            assert!(t.contains("role"), "{m} {path}: {t}");
            tried += 1;
        }
    }
    // And nothing was appended
    assert_eq!(
        event_count(&cp, &admin),
        before,
        "{tried} refused calls appended events"
    );
    // And the same calls with the admin key are not refused for their role (positive control)
    let (s, t) = a.call("GET", "/api/v1/keys", None);
    assert_eq!(s, 200, "{t}");
}

#[test]
fn an_oversized_body_is_refused_with_413_on_agent_and_operator_routes_chunked_or_not() {
    // Given a control plane with a machine and an admin key
    let (_d, pki, cp, admin) = setup(&["web-01"]);
    let before = event_count(&cp, &admin);
    let huge = format!(
        r#"{{"machine_id":"web-01","message":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    // When an agent posts a 2 MiB report with a Content-Length
    let (s, t) = cp
        .client("web-01", None)
        .post("/api/v1/machines/web-01/report", &huge);
    // Then it gets 413
    assert_eq!(s, 413, "{t}");
    // When an operator streams a 2 MiB release in chunks, without a Content-Length
    let mut tls = raw_tls(cp.port, &pki.dir, Some("operator"));
    let head = format!(
        "POST /api/v1/releases HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).unwrap();
    let chunk = "y".repeat(64 << 10);
    let mut sent = 0;
    let mut refused_early = false;
    while sent < (2 << 20) {
        if tls
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .is_err()
        {
            refused_early = true; // the server answered and closed while we were still sending
            break;
        }
        sent += chunk.len();
    }
    if !refused_early {
        let _ = tls.write_all(b"0\r\n\r\n");
    }
    let reply = read_response(&mut tls);
    // Then it gets 413 (the server reads on and discards a bounded amount, so the answer is not
    // lost to a connection reset)
    assert!(
        reply.starts_with("HTTP/1.1 413"),
        "after {sent} bytes: {reply:?}"
    );
    // And nothing was appended, and the control plane still serves
    assert_eq!(event_count(&cp, &admin), before);
    assert_eq!(cp.client("operator", None).get("/health").0, 200);
}

#[test]
fn slow_clients_are_cut_off_by_the_timeouts_and_their_connections_freed() {
    // Given a control plane, and its number of open descriptors when idle
    let (_d, pki, cp, _admin) = setup(&["web-01"]);
    let idle_fds = open_fds(&cp);
    // When 100 clients connect and never send a ClientHello, 100 finish the handshake and send
    // half a request head, and 100 send a whole request and then stay silent (keep-alive)
    let silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", cp.port)).unwrap())
        .collect();
    let mut partial: Vec<Tls> = (0..100)
        .map(|_| {
            let mut s = raw_tls(cp.port, &pki.dir, Some("web-01"));
            s.write_all(b"GET /health HTTP/1.1\r\nHost: local").unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    let mut idle: Vec<Tls> = (0..100)
        .map(|_| {
            let mut s = raw_tls(cp.port, &pki.dir, Some("web-01"));
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    // Then they hold descriptors while they stall
    assert!(
        open_fds(&cp) >= idle_fds + 250,
        "{} fds with 300 slow clients, {idle_fds} idle",
        open_fds(&cp)
    );
    // And other clients are served meanwhile
    assert_eq!(cp.client("operator", None).get("/health").0, 200);
    // And every slow connection is closed by the server within its timeout (+5 s)
    let limit = nixfleet_engine::api::HANDSHAKE_TIMEOUT
        .max(nixfleet_engine::api::HEADER_TIMEOUT)
        .as_secs_f64()
        + 5.0;
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (_, _) = read_until_closed(&mut s);
    }
    for s in partial.iter_mut() {
        let (reply, _) = read_until_closed(s);
        assert!(
            !reply.contains("200 OK"),
            "a half-sent request got an answer: {reply}"
        );
    }
    for s in idle.iter_mut() {
        let (reply, _) = read_until_closed(s);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let took = started.elapsed().as_secs_f64();
    assert!(
        took < limit,
        "the last slow connection closed after {took:.1} s"
    );
    // And their descriptors are given back
    wait_until(
        "the descriptors of the slow clients to be closed",
        10,
        || open_fds(&cp) <= idle_fds + 5,
    );
    assert_eq!(cp.client("operator", None).get("/health").0, 200);
}

#[test]
fn a_client_trickling_its_body_is_cut_off_by_the_request_timeout() {
    // Given a control plane and an agent connection
    let (_d, pki, cp, admin) = setup(&["web-01"]);
    let before = event_count(&cp, &admin);
    let mut tls = raw_tls(cp.port, &pki.dir, Some("web-01"));
    tls.write_all(
        b"POST /api/v1/machines/web-01/report HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    )
    .unwrap();
    // When it sends its body one byte every two seconds
    let started = Instant::now();
    let limit = nixfleet_engine::api::REQUEST_TIMEOUT.as_secs_f64();
    let mut closed = false;
    while started.elapsed().as_secs_f64() < limit + 15.0 {
        std::thread::sleep(Duration::from_secs(2));
        if tls.write_all(b" ").and_then(|_| tls.flush()).is_err() {
            closed = true;
            break;
        }
        tls.sock
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        match tls.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                // Then it is answered 503 once the request timeout passes
                let reply = String::from_utf8_lossy(&buf[..n]);
                assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
                closed = true;
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    assert!(closed, "still sending after {took:.0} s");
    assert!(
        took >= limit - 1.0 && took < limit + 5.0,
        "cut off after {took:.1} s; the request timeout is {limit} s"
    );
    // And nothing was appended
    assert_eq!(event_count(&cp, &admin), before);
}

/// Values built to traverse paths, reach a shell, or smuggle a second argument.
const HOSTILE: &[&str] = &[
    "..",
    "../../etc/passwd",
    "web-01/../../x",
    "web-01;reboot",
    "web-01 && reboot",
    "$(reboot)",
    "`reboot`",
    "web-01|sh",
    "web-01\nreboot",
    "-oProxyCommand=sh",
    "--help",
    "web 01",
    "web-01'",
    "web-01\"",
    "*",
    "web-01>x",
    "\u{0}",
    "é",
];

/// Percent-encodes everything but unreserved characters, so a value reaches the router as is.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn store_path_variants() -> Vec<String> {
    let h = "0123456789abcdfghijklmnpqrsvwxyz";
    // A name such as "-oProxyCommand=sh" is legal in Nix and harmless after "/nix/store/<hash>-":
    // the path can never be read as an option. The others break Nix's grammar.
    let legal = |x: &str| {
        !x.starts_with('.')
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
    };
    let mut v: Vec<String> = HOSTILE
        .iter()
        .filter(|x| !legal(x))
        .map(|x| format!("/nix/store/{h}-{x}"))
        .collect();
    v.extend([
        format!("/nix/store/{h}-x/../../../etc/shadow"),
        format!("/nix/store/{h}-x/bin/sh"),
        format!("/nix/store/{h}-a..b"),
        "/nix/store/../etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        format!("/nix/store/{h}"),
        format!(" /nix/store/{h}-x"),
        format!("/nix/store/{h}-x "),
    ]);
    v
}

#[test]
fn traversal_and_shell_metacharacters_in_ids_tags_and_store_paths_are_refused_and_change_nothing() {
    // Given a fleet with one machine that reported, and an admin key
    let (_d, _p, cp, admin) = setup(&["web-01"]);
    let web = cp.client("web-01", None);
    let a = cp.client("operator", Some(&admin));
    assert_eq!(
        web.post(
            "/api/v1/machines/web-01/report",
            &report("web-01", &gen("web-01", 1), true, Some(true), &["web"])
        )
        .0,
        200
    );
    let before = event_count(&cp, &admin);
    let mut tried = 0;
    let mut refuse = |what: &str, (s, t): (u16, String)| {
        assert!(
            (400..500).contains(&s) && s != 404 || s == 404 && what.starts_with("path"),
            "{what}: answered {s}: {t}"
        );
        tried += 1;
    };
    let js = |s: &str| serde_json::to_string(s).unwrap();
    for x in HOSTILE {
        // Tags are labels that may hold '/' ("role/db"); they never become paths or arguments.
        let legal_tag = *x == "web-01/../../x";
        // When an id in the path, a tag, a hostname or a key name is hostile
        refuse(
            &format!("path id {x:?}"),
            a.call(
                "POST",
                &format!("/api/v1/machines/{}/register", pct(x)),
                Some("{}"),
            ),
        );
        refuse(
            &format!("path id {x:?} (lifecycle)"),
            a.call(
                "PATCH",
                &format!("/api/v1/machines/{}/lifecycle", pct(x)),
                Some(r#"{"lifecycle":"maintenance"}"#),
            ),
        );
        if !legal_tag {
            refuse(
                &format!("tag {x:?}"),
                a.call(
                    "POST",
                    "/api/v1/machines/web-01/register",
                    Some(&format!(r#"{{"tags":[{}]}}"#, js(x))),
                ),
            );
            refuse(
                &format!("report tag {x:?}"),
                web.call(
                    "POST",
                    "/api/v1/machines/web-01/report",
                    Some(&report("web-01", &gen("web-01", 1), true, None, &[x])),
                ),
            );
            refuse(
                &format!("rollout target tag {x:?}"),
                a.call(
                    "POST",
                    "/api/v1/rollouts",
                    Some(&format!(
                        r#"{{"release_id":"rel-x","strategy":"all_at_once","target":{{"tags":[{}]}}}}"#,
                        js(x)
                    )),
                ),
            );
        }
        refuse(
            &format!("release hostname {x:?}"),
            a.call(
                "POST",
                "/api/v1/releases",
                Some(&format!(
                    r#"{{"entries":[{{"hostname":{},"store_path":"{}"}}]}}"#,
                    js(x),
                    gen("web-01", 2)
                )),
            ),
        );
        refuse(
            &format!("key name {x:?}"),
            a.call(
                "POST",
                "/api/v1/keys",
                Some(&format!(r#"{{"name":{},"role":"readonly"}}"#, js(x))),
            ),
        );
    }
    for p in store_path_variants() {
        // When a store path is hostile, in a release, a notify-deploy or a report
        refuse(
            &format!("release store path {p:?}"),
            a.call(
                "POST",
                "/api/v1/releases",
                Some(&format!(
                    r#"{{"entries":[{{"hostname":"web-01","store_path":{}}}]}}"#,
                    js(&p)
                )),
            ),
        );
        refuse(
            &format!("notify-deploy store path {p:?}"),
            a.call(
                "POST",
                "/api/v1/machines/web-01/notify-deploy",
                Some(&format!(r#"{{"store_path":{}}}"#, js(&p))),
            ),
        );
        refuse(
            &format!("reported generation {p:?}"),
            web.call(
                "POST",
                "/api/v1/machines/web-01/report",
                Some(&report("web-01", &p, true, None, &[])),
            ),
        );
        refuse(
            &format!("rolled_back_from {p:?}"),
            web.call(
                "POST",
                "/api/v1/machines/web-01/report",
                Some(
                    &serde_json::json!({"machine_id":"web-01","current_generation":gen("web-01",1),"success":false,"rolled_back_from":p})
                        .to_string(),
                ),
            ),
        );
    }
    // Then every one was refused with a 4xx, and nothing was appended
    assert!(tried > 200, "{tried}");
    assert_eq!(event_count(&cp, &admin), before, "after {tried} attempts");
    // And the machine's record is as it was
    let m = a.json("GET", "/api/v1/machines/web-01", None, 200);
    assert_eq!(m["tags"], serde_json::json!(["web"]), "{m}");
    // And a tag with '/' and '..' is a label, stored and shown verbatim (positive control)
    let (s, t) = a.post(
        "/api/v1/machines/web-01/register",
        r#"{"tags":["web-01/../../x"]}"#,
    );
    assert_eq!(s, 201, "{t}");
    let m = a.json("GET", "/api/v1/machines/web-01", None, 200);
    assert_eq!(m["tags"], serde_json::json!(["web-01/../../x"]), "{m}");
}

#[test]
fn a_certificate_whose_cn_is_hostile_or_names_no_machine_acts_for_nothing() {
    // Given certificates of the fleet CA with hostile common names
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &[]);
    let names = ["web-01;reboot", "..", "$(reboot)", "web-01 ", "-rf", "*"];
    for n in names {
        pki.issue(n, false, false);
    }
    let cp = Cp::start(dir.path(), &pki);
    let admin = bootstrap(&cp);
    let before = event_count(&cp, &admin);
    for cn in names {
        let c = cp.client(cn, None);
        // When it reports for the machine its CN names, and for a real one
        for id in [pct(cn), "web-01".to_owned()] {
            let (s, t) = c.post(
                &format!("/api/v1/machines/{id}/report"),
                &report(cn, &gen("web-01", 1), true, None, &[]),
            );
            // Then it is refused (400 for an invalid id, 403 for someone else's machine)
            assert!(
                s == 400 || s == 403 || s == 404,
                "CN {cn:?} on {id}: {s} {t}"
            );
        }
    }
    // And nothing was appended
    assert_eq!(event_count(&cp, &admin), before);
}

/// Each route of `docs/openapi.yaml` with a parameter in its path, as (METHOD, pattern, who may
/// call it: `admin`, `deploy`, `readonly` or `agent`).
fn documented_routes_with_path_ids() -> Vec<(String, String, &'static str)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let spec: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for (p, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "put", "delete"] {
            let Some(summary) = item[m]["summary"].as_str() else {
                continue;
            };
            let who = ["admin", "deploy", "readonly"]
                .into_iter()
                .find(|r| summary.contains(&format!("Role {r}.")))
                .or(summary.starts_with("Agent route").then_some("agent"));
            if p.contains('{') {
                let who = who.unwrap_or_else(|| panic!("{m} {p}: who may call it? {summary}"));
                out.push((m.to_uppercase(), p.clone(), who));
            }
        }
    }
    out
}

#[test]
fn a_caller_is_checked_before_a_malformed_path_id_on_every_route_that_takes_one() {
    // Given a fleet with a key of each role below admin
    let (_d, _p, cp, admin) = setup(&["web-01", "web-02"]);
    let deploy = new_key(&cp, &admin, "ci", "deploy");
    let readonly = new_key(&cp, &admin, "viewer", "readonly");
    let routes = documented_routes_with_path_ids();
    assert!(routes.len() >= 15, "{routes:?}");
    let before = event_count(&cp, &admin);
    let (mut tried, mut wrong) = (0, Vec::new());
    for (m, pattern, who) in &routes {
        // When a caller without the right to call the route uses a malformed id (over 128
        // characters, or with a character no id may hold)
        let callers: Vec<(&str, Client, u16)> = match *who {
            "agent" => vec![("the CN of another machine", cp.client("web-02", None), 403)],
            role => {
                let mut c = vec![("no API key", cp.client("operator", None), 401)];
                if role != "readonly" {
                    c.push((
                        "a readonly key",
                        cp.client("operator", Some(&readonly)),
                        403,
                    ));
                }
                if role == "admin" {
                    c.push(("a deploy key", cp.client("operator", Some(&deploy)), 403));
                }
                c
            }
        };
        for bad in ["x".repeat(200), "bad%24id".to_owned()] {
            let path = pattern
                .replace("{id}", &bad)
                .replace("{name}", &bad)
                .replace("{a}", &bad)
                .replace("{b}", &bad);
            let body = body_for(m, pattern, &bad);
            for (caller, c, want) in &callers {
                let (s, t) = c.call(m, &path, body.as_deref());
                if s != *want {
                    wrong.push(format!(
                        "{caller} on {m} {pattern}: {s} (not {want}) {t:.60}"
                    ));
                }
                tried += 1;
            }
        }
    }
    // Then each is refused for who it is (401 or 403), not for the id (400)
    assert!(
        wrong.is_empty(),
        "{} of {tried} calls:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // And nothing was appended
    assert_eq!(
        event_count(&cp, &admin),
        before,
        "{tried} refused calls appended events"
    );
}
