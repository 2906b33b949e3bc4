//! Several control plane URLs: a request that cannot reach one goes to the next (real binaries:
//! the CLI and a control plane on loopback with mutual TLS; the first URL is a closed port, or a
//! stand-in that answers 503 or drops the connection).
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or NIXFLEET_CP_BIN).

mod common;
#[path = "../../agent/tests/common/standin.rs"]
mod standin;

use common::cp::*;
use common::*;
use standin::Reply;
use std::sync::atomic::Ordering;

/// A control plane with its first key saved, and its URL.
fn given_a_control_plane(s: &Scratch) -> (ControlPlane, String) {
    let cp = start(s);
    nf_ok(s, &["bootstrap", "--name", "admin"]);
    let url = format!("https://127.0.0.1:{}", cp.port);
    (cp, url)
}

fn closed_url() -> String {
    let [port] = nixfleet_cli::launch::free_ports().expect("free port");
    format!("https://127.0.0.1:{port}")
}

/// `nixfleet --control-plane-url URLS keys create --name ci`.
fn create_ci(s: &Scratch, urls: &str) -> std::process::Output {
    nf(
        s,
        &[
            "--control-plane-url",
            urls,
            "keys",
            "create",
            "--name",
            "ci",
        ],
    )
}

fn key_names(s: &Scratch, args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.extend(["keys", "list"]);
    json(s, &all)
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|k| k["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn with_the_first_url_refusing_connections_commands_go_to_the_second_flag_repeated_or_in_the_project_file(
) {
    let s = Scratch::new("foclosed");
    let (_cp, url) = given_a_control_plane(&s);
    let closed = closed_url();

    let out = nf(
        &s,
        &[
            "--control-plane-url",
            &closed,
            "--control-plane-url",
            &url,
            "machines",
            "list",
        ],
    );
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        format!("warning: control plane {closed} unreachable (io: Connection refused (os error 111)), trying {url}"),
    );
    // A write that never reached the first control plane is sent to the second.
    let out = create_ci(&s, &format!("{closed},{url}"));
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&format!("trying {url}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(key_names(&s, &[]), ["admin", "ci"]);

    // The project file's url may be a list (the saved key is found under the second URL).
    std::fs::write(
        s.join(".nixfleet.toml"),
        format!("[control-plane]\nurl = [\"{closed}\", \"{url}\"]\nca-cert = \"pki/ca.pem\"\n\n[tls]\nclient-cert = \"pki/operator-cert.pem\"\nclient-key = \"pki/operator-key.pem\"\n"),
    )
    .expect("write settings");
    let config = json(&s, &["config"]);
    assert_eq!(
        config["control-plane-urls"],
        serde_json::json!([closed, url])
    );
    let out = nf(&s, &["machines", "list"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("unreachable (io: Connection refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn with_the_first_url_answering_503_reads_and_writes_go_to_the_second() {
    let s = Scratch::new("fo503");
    let (_cp, url) = given_a_control_plane(&s);
    let (port, asked) = standin::serve(Reply::Unavailable("standing by"));
    let standby = format!("http://127.0.0.1:{port}");
    let list = format!("{standby},{url}");

    let out = run(nixfleet(&s, &s.path)
        .env("NIXFLEET_CONTROL_PLANE_URL", &list)
        .args(["keys", "create", "--name", "ci"]));
    assert_exit(&out, 0);
    let warning = format!(
        "warning: control plane {standby} unreachable (HTTP 503: standing by), trying {url}"
    );
    assert_eq!(stderr(&out).lines().next(), Some(warning.as_str()));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        key_names(&s, &["--control-plane-url", &list]),
        ["admin", "ci"]
    );
}

#[test]
fn a_write_that_may_have_reached_the_first_control_plane_is_not_resent_a_read_is() {
    let s = Scratch::new("fodrop");
    let (_cp, url) = given_a_control_plane(&s);
    // Reads the request, then drops the connection without an answer: it may have been applied.
    let (port, asked) = standin::serve(Reply::Close);
    let dropping = format!("http://127.0.0.1:{port}");
    let list = format!("{dropping},{url}");

    let out = create_ci(&s, &list);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the control plane at {dropping}: "
        )),
        "{err}"
    );
    assert!(err.contains("may have been applied"), "{err}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // The second control plane never saw it; a read is resent there.
    assert_eq!(key_names(&s, &["--control-plane-url", &list]), ["admin"]);
    assert_eq!(asked.load(Ordering::SeqCst), 2);

    // The control plane's own 503 for a request that outlived its deadline: also not resent.
    let (port, _) = standin::serve(Reply::Unavailable("request timed out"));
    let timed_out = format!("http://127.0.0.1:{port}");
    let out = create_ci(&s, &format!("{timed_out},{url}"));
    assert_exit(&out, 5);
    assert!(!stderr(&out).contains("trying"), "{}", stderr(&out));
    assert_eq!(key_names(&s, &[]), ["admin"]);

    // A shared log's database connection broke during the commit: the write may be in the log.
    let (port, _) = standin::serve(Reply::Unavailable(
        "commit outcome unknown: the connection to the event log's database broke during the commit",
    ));
    let uncertain = format!("http://127.0.0.1:{port}");
    let out = create_ci(&s, &format!("{uncertain},{url}"));
    assert_exit(&out, 5);
    assert!(!stderr(&out).contains("trying"), "{}", stderr(&out));
    assert_eq!(key_names(&s, &[]), ["admin"]);
}

#[test]
fn a_bad_url_in_the_list_is_one_line_naming_it_with_exit_2() {
    let s = Scratch::new("fobad");
    for args in [
        vec![
            "--control-plane-url",
            "https://cp-a:8080,cp-b:8080",
            "machines",
            "list",
        ],
        vec![
            "--control-plane-url",
            "https://cp-a:8080",
            "--control-plane-url",
            "cp-b:8080",
            "machines",
            "list",
        ],
    ] {
        let out = nf(&s, &args);
        assert_exit(&out, 2);
        assert_eq!(
            stderr(&out),
            "error: control plane URL \"cp-b:8080\" is not an http(s) URL; use e.g. https://cp.example:8080\n"
        );
    }
}

#[test]
fn a_client_stays_with_the_control_plane_that_answered_until_it_fails() {
    let s = Scratch::new("fosticky");
    let (_cp, url) = given_a_control_plane(&s);
    let key = nf_ok(&s, &["keys", "create", "--name", "sticky"]);
    let (port, asked) = standin::serve(Reply::Unavailable("standing by"));
    let args = nixfleet_cli::settings::GlobalArgs {
        control_plane_url: vec![format!("http://127.0.0.1:{port}"), url],
        api_key: Some(key.trim().to_string()),
        ca_cert: None,
        client_cert: None,
        client_key: None,
        json: false,
        config: Some(s.join(".nixfleet.toml")),
        verbose: 0,
    };
    let settings = nixfleet_cli::settings::Settings::resolve(&args).expect("settings");
    let client = nixfleet_cli::client::Client::new(&settings).expect("client");
    for _ in 0..3 {
        client
            .get::<serde_json::Value>("/api/v1/machines")
            .expect("answered by the second control plane");
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the client went back to the control plane that answered 503"
    );
}
