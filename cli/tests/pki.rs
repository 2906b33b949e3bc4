//! `pki init` / `pki issue`: the files are real X.509 that x509-parser reads and openssl verifies.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

fn read_pem(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).expect("read pem");
    let (_, pem) = parse_x509_pem(&text).expect("PEM");
    pem.contents
}

fn openssl_verify(dir: &Path, cert: &str, purpose: &str) -> std::process::Output {
    Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(dir.join(cert))
        .output()
        .expect("run openssl")
}

#[test]
fn a_fleet_ca_issues_server_and_client_certificates_that_openssl_verifies() {
    let s = Scratch::new("pki");
    let dir = s.join("pki");
    let d = dir.to_str().expect("utf8");
    let out = run(nixfleet(&s, &s.path).args(["pki", "init", "--dir", d]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(nixfleet(&s, &s.path).args([
        "pki",
        "issue",
        "--dir",
        d,
        "--name",
        "cp",
        "--server",
        "--san",
        "cp.test,127.0.0.1",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(nixfleet(&s, &s.path).args(["pki", "issue", "--dir", d, "--name", "web-01"]));
    assert!(out.status.success(), "{}", stderr(&out));

    for key in ["ca-key.pem", "cp-key.pem", "web-01-key.pem"] {
        let mode = std::fs::metadata(dir.join(key))
            .expect("key exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    let ca_der = read_pem(&dir.join("ca.pem"));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA parses");
    assert!(ca.is_ca());
    assert_eq!(ca.subject().to_string(), "CN=nixfleet fleet CA");

    let server_der = read_pem(&dir.join("cp-cert.pem"));
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).expect("server cert parses");
    assert_eq!(
        server
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok()),
        Some("cp")
    );
    assert_eq!(server.issuer(), ca.subject());
    assert!(!server.is_ca());
    let sans = server
        .subject_alternative_name()
        .expect("ext ok")
        .expect("has SAN");
    let names: Vec<String> = sans
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec!["cp.test".to_string(), "ip:[127, 0, 0, 1]".to_string()]
    );
    let validity = server.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert_eq!(days, 365, "one year plus five minutes of clock slack");
    assert!(validity.is_valid(), "valid now");
    assert!(server.verify_signature(Some(ca.public_key())).is_ok());

    let client_der = read_pem(&dir.join("web-01-cert.pem"));
    let (_, client) = x509_parser::parse_x509_certificate(&client_der).expect("client cert parses");
    assert_eq!(client.subject().to_string(), "CN=web-01");
    assert!(client.subject_alternative_name().expect("ext ok").is_none());
    let eku = client
        .extended_key_usage()
        .expect("ext ok")
        .expect("has EKU");
    assert!(eku.value.client_auth && !eku.value.server_auth);

    for (cert, purpose) in [
        ("cp-cert.pem", "sslserver"),
        ("web-01-cert.pem", "sslclient"),
    ] {
        let v = openssl_verify(&dir, cert, purpose);
        assert!(
            v.status.success(),
            "openssl: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // And the check can fail: a client certificate is not a server certificate.
    let v = openssl_verify(&dir, "web-01-cert.pem", "sslserver");
    assert!(
        !v.status.success(),
        "a client cert must not verify as a server cert"
    );
}

#[test]
fn a_certificate_from_another_ca_is_rejected_by_openssl() {
    let s = Scratch::new("pki2");
    let (a, b) = (s.join("a"), s.join("b"));
    for d in [&a, &b] {
        let out = run(nixfleet(&s, &s.path).args(["pki", "init", "--dir"]).arg(d));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(nixfleet(&s, &s.path)
        .args(["pki", "issue", "--name", "op", "--dir"])
        .arg(&b));
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(b.join("op-cert.pem"), a.join("op-cert.pem")).expect("copy");
    assert!(!openssl_verify(&a, "op-cert.pem", "sslclient")
        .status
        .success());
}

#[test]
fn existing_keys_are_not_overwritten_and_bad_names_are_refused() {
    let s = Scratch::new("pki3");
    let dir = s.join("pki");
    assert!(run(nixfleet(&s, &s.path)
        .args(["pki", "init", "--dir"])
        .arg(&dir))
    .status
    .success());
    let before = std::fs::read(dir.join("ca-key.pem")).expect("read");
    let out = run(nixfleet(&s, &s.path)
        .args(["pki", "init", "--dir"])
        .arg(&dir));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, std::fs::read(dir.join("ca-key.pem")).expect("read"));

    let out = run(nixfleet(&s, &s.path)
        .args(["pki", "issue", "--name", "../evil", "--dir"])
        .arg(&dir));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));

    let out = run(nixfleet(&s, &s.path)
        .args(["pki", "issue", "--name", "x", "--dir"])
        .arg(s.join("nope")));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pki init"), "{}", stderr(&out));
}
