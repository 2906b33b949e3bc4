//! The HTTP client's TLS: extra CA, client certificate, and the errors when either is wrong.
//!
//! The server is `openssl s_server -HTTP` requiring a client certificate from the fleet CA and
//! serving a canned HTTP response from a file, on 127.0.0.1 inside a private network
//! namespace. The certificates come from `nixfleet pki`, so this also proves they work for mTLS.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct TlsServer {
    ns: String,
    child: Child,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PKI (CA, server cert for 127.0.0.1, client cert "operator") and a server requiring mTLS.
fn start(s: &Scratch) -> TlsServer {
    let pki = common::cp::operator_pki(s);
    let root = s.join("www");
    std::fs::create_dir_all(root.join("api/v1")).expect("mkdir");
    let body = r#"[{"machine_id":"web-01","current_generation":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-01","desired_generation":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-01","agent_version":"0.2.0","system_state":"ok","uptime_seconds":5,"last_report":"2026-11-25T08:00:00Z","lifecycle":"active","tags":["web"],"seconds_since_last_report":3,"health":"healthy","quarantined":[]}]"#;
    // s_server -HTTP sends the file as the complete response, headers included.
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::fs::write(root.join("api/v1/machines"), response).expect("write");
    let ns = format!(
        "nfcli-t-{}",
        s.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .trim_start_matches("nfcli-t-")
    );
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    ok(Command::new("ip").args(["netns", "add", &ns]));
    ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "openssl",
            "s_server",
            "-quiet",
            "-accept",
            "127.0.0.1:8443",
            "-HTTP",
            "-Verify",
            "1",
        ])
        .arg("-cert")
        .arg(pki.join("cp-cert.pem"))
        .arg("-key")
        .arg(pki.join("cp-key.pem"))
        .arg("-CAfile")
        .arg(pki.join("ca.pem"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let server = TlsServer { ns, child };
    // Wait until the port accepts connections (probe from inside the namespace).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.ns,
                "bash",
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/8443",
            ])
            .output()
            .expect("probe");
        if probe.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn in_ns(server: &TlsServer, s: &Scratch, args: &[&str]) -> std::process::Output {
    let mut cmd = nixfleet_in_ns(s, &server.ns);
    cmd.env("NIXFLEET_CONTROL_PLANE_URL", "https://127.0.0.1:8443")
        .env("NIXFLEET_API_KEY", "nfk-test");
    cmd.args(args);
    run(&mut cmd)
}

#[test]
fn the_client_speaks_mutual_tls_with_fleet_certificates_and_explains_each_failure() {
    let s = Scratch::new("tls");
    let server = start(&s);
    let pki = s.join("pki");
    let p = |f: &str| pki.join(f).display().to_string();

    // Right CA and client certificate: the request goes through and the table is printed.
    let out = in_ns(
        &server,
        &s,
        &[
            "--ca-cert",
            &p("ca.pem"),
            "--client-cert",
            &p("operator-cert.pem"),
            "--client-key",
            &p("operator-key.pem"),
            "machines",
            "list",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.contains("web-01") && text.contains("healthy") && text.contains("3s ago"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("1 machine(s)"), "{text}");

    // The same through .nixfleet.toml with relative paths.
    std::fs::write(
        s.join(".nixfleet.toml"),
        "[control-plane]\nca-cert = \"pki/ca.pem\"\n[tls]\nclient-cert = \"pki/operator-cert.pem\"\nclient-key = \"pki/operator-key.pem\"\n",
    )
    .expect("write");
    let out = in_ns(&server, &s, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(rows[0]["sync"], "in_sync");
    assert_eq!(rows[0]["stale"], false);
    std::fs::remove_file(s.join(".nixfleet.toml")).expect("rm");

    // No client certificate: the server ends the handshake; exit 3 and a hint about the certificate.
    let out = in_ns(
        &server,
        &s,
        &["--ca-cert", &p("ca.pem"), "machines", "list"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("client"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);

    // Without our CA the server's certificate is not trusted.
    let out = in_ns(
        &server,
        &s,
        &[
            "--client-cert",
            &p("operator-cert.pem"),
            "--client-key",
            &p("operator-key.pem"),
            "machines",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca-cert"), "{}", stderr(&out));

    // Half a client identity is a usage error before any connection.
    let out = in_ns(
        &server,
        &s,
        &["--client-cert", &p("operator-cert.pem"), "machines", "list"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("go together"), "{}", stderr(&out));
}
