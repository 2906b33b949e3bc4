//! Settings layering, error lines, exit codes and completions, through the real binary.

mod common;
use common::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

fn config_json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "config failed: {}", stderr(out));
    serde_json::from_str(&stdout(out)).expect("config prints JSON")
}

#[test]
fn settings_are_layered_project_file_then_credentials_then_environment_then_flags() {
    let s = Scratch::new("layers");
    let repo = s.join("repo");
    let sub = repo.join("hosts/web");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(
        repo.join(".nixfleet.toml"),
        "[control-plane]\nurl = \"https://cp.test:8443/\"\nca-cert = \"pki/ca.pem\"\n\n[tls]\nclient-cert = \"/etc/nixfleet/${NFCLI_T_ROLE}.pem\"\nclient-key = \"keys/op.key\"\n\n[deploy]\nstrategy = \"canary\"\nhealth-timeout = 120\n",
    )
    .expect("write project file");
    let creds = s.home().join(".config/nixfleet");
    std::fs::create_dir_all(&creds).expect("mkdir");
    std::fs::write(
        creds.join("credentials.toml"),
        "[\"https://cp.test:8443\"]\napi-key = \"nfk-fromfile\"\n",
    )
    .expect("write");

    // Project file found from a subdirectory; relative paths resolve against its directory;
    // the API key comes from the credentials entry of that URL.
    let v = config_json(&run(nixfleet(&s, &sub)
        .env("NFCLI_T_ROLE", "operator")
        .arg("config")));
    assert_eq!(v["control-plane-url"], "https://cp.test:8443");
    assert_eq!(v["ca-cert"], repo.join("pki/ca.pem").display().to_string());
    assert_eq!(v["client-cert"], "/etc/nixfleet/operator.pem");
    assert_eq!(
        v["client-key"],
        repo.join("keys/op.key").display().to_string()
    );
    assert_eq!(v["api-key"], "<set>");
    assert_eq!(
        v["sources"]["api-key"],
        creds.join("credentials.toml").display().to_string()
    );
    assert_eq!(v["deploy"]["health-timeout"], 120);

    // The environment beats the project file; a URL without a saved key has no key.
    let v = config_json(&run(nixfleet(&s, &sub)
        .env("NFCLI_T_ROLE", "operator")
        .env("NIXFLEET_CONTROL_PLANE_URL", "https://other:9000")
        .arg("config")));
    assert_eq!(v["control-plane-url"], "https://other:9000");
    assert_eq!(v["api-key"], serde_json::Value::Null);

    // A flag beats the environment.
    let v = config_json(&run(nixfleet(&s, &sub)
        .env("NFCLI_T_ROLE", "operator")
        .env("NIXFLEET_CA_CERT", "/env/ca.pem")
        .args(["config", "--ca-cert", "/flag/ca.pem"])));
    assert_eq!(v["ca-cert"], "/flag/ca.pem");
    assert_eq!(v["sources"]["ca-cert"], "flag or environment");

    // Outside any project: the built-in default URL.
    let v = config_json(&run(nixfleet(&s, &s.home()).arg("config")));
    assert_eq!(v["control-plane-url"], "https://localhost:8080");
    assert_eq!(v["control-plane-url-configured"], false);
}

#[test]
fn a_typo_in_the_project_file_is_one_line_naming_the_file_and_line_with_exit_2() {
    let s = Scratch::new("typo");
    std::fs::write(
        s.join(".nixfleet.toml"),
        "[control-plane]\nurll = \"https://x\"\n",
    )
    .expect("write");
    let out = run(nixfleet(&s, &s.path).arg("config"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(".nixfleet.toml:2") && err.contains("urll"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_and_a_bad_url_are_usage_errors() {
    let s = Scratch::new("badurl");
    let out =
        run(nixfleet(&s, &s.path).args(["config", "--config", "/nonexistent/.nixfleet.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    let out = run(nixfleet(&s, &s.path).args(["config", "--control-plane-url", "cp:8080"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not an http(s) URL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_are_printed_for_bash_and_zsh() {
    let s = Scratch::new("compl");
    let out = run(nixfleet(&s, &s.path).args(["completions", "bash"]));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("_nixfleet()"),
        "bash completion function"
    );
    let out = run(nixfleet(&s, &s.path).args(["completions", "zsh"]));
    assert!(stdout(&out).starts_with("#compdef nixfleet"));
}

#[test]
fn a_closed_stdout_is_success_not_a_panic() {
    let s = Scratch::new("pipe");
    let mut child = nixfleet(&s, &s.path)
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_flags_exit_2_and_help_exits_0() {
    let s = Scratch::new("flags");
    assert_eq!(
        run(nixfleet(&s, &s.path).arg("--no-such-flag"))
            .status
            .code(),
        Some(2)
    );
    let out = run(nixfleet(&s, &s.path).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--control-plane-url"));
}

/// `deploy --ssh` takes no rollout options (they are shared with `rollout create` as one set of
/// arguments, and `--ssh` conflicts with each of them): a usage error naming both, exit 2,
/// before anything is evaluated.
#[test]
fn deploy_ssh_refuses_every_rollout_option() {
    let s = Scratch::new("deploy-ssh-flags");
    for flag in [
        "--strategy=canary",
        "--batch-size=1",
        "--failure-threshold=0",
        "--on-failure=pause",
        "--health-timeout=60",
    ] {
        let out = run(nixfleet(&s, &s.path).args(["deploy", "--ssh", flag]));
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        let name = flag.split('=').next().unwrap_or(flag);
        assert!(
            stderr(&out).contains("'--ssh' cannot be used with") && stderr(&out).contains(name),
            "{flag}: {}",
            stderr(&out)
        );
    }
}

/// Credentials are written by `bootstrap`; this checks the file mode contract directly
/// through `keys save`, which stores a key without contacting the control plane.
#[test]
fn a_saved_key_is_stored_per_url_in_a_file_only_the_owner_can_read() {
    let s = Scratch::new("save");
    let out = run(nixfleet(&s, &s.path).args([
        "--control-plane-url",
        "https://a:1",
        "keys",
        "save",
        "nfk-aaa",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(nixfleet(&s, &s.path).args([
        "--control-plane-url",
        "https://b:2",
        "keys",
        "save",
        "nfk-bbb",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let path = s.home().join(".config/nixfleet/credentials.toml");
    let mode = std::fs::metadata(&path)
        .expect("credentials written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("nfk-aaa") && text.contains("nfk-bbb"),
        "{text}"
    );
    let v = config_json(&run(nixfleet(&s, &s.path).args([
        "--control-plane-url",
        "https://b:2",
        "config",
    ])));
    assert_eq!(v["api-key"], "<set>");
}
