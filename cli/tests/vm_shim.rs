//! Compatibility with the VM tests' `nix` shim (vmtests/nix/nix-shim.nix).
//!
//! VM tests cannot build whole NixOS systems, so they put a `nix` on PATH that answers the
//! `nix eval` and `nix build` calls of `release create` and `deploy --ssh` from a JSON file.
//! This renders that same script, puts it first on PATH, and checks the CLI's calls are ones
//! it answers: the one evaluation of the selected hosts (read from its `# nixfleet-select:`
//! line) and the one build of their toplevel derivations.

mod common;
use common::sshd::NIX_CONFIG;
use common::*;
use std::os::unix::fs::PermissionsExt;

fn install_shim(s: &Scratch) -> std::path::PathBuf {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vmtests/nix/nix-shim.nix"
    ))
    .expect("vmtests/nix/nix-shim.nix");
    // The script is the Nix indented string between the first '' and the last ''.
    let start = source.find("''\n").expect("start of the script") + 3;
    let end = source.rfind("''").expect("end of the script");
    let script: String = source[start..end]
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("${python}", "/usr/bin/python3")
        .replace("${realNix}", "/usr/bin/nix");
    let bin = s.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::write(bin.join("nix"), script).expect("write shim");
    std::fs::set_permissions(bin.join("nix"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    bin
}

#[test]
fn release_create_and_deploy_dry_run_only_make_calls_the_vm_test_nix_shim_answers() {
    let s = Scratch::new("shim");
    let bin = install_shim(&s);
    let p1 = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-01-2";
    let p2 = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-02-2";
    let responses = serde_json::json!({
        "hosts": {
            "web-01": { "toplevel": p1, "system": "x86_64-linux", "tags": ["web", "eu"] },
            "web-02": { "toplevel": p2, "system": "aarch64-linux", "tags": ["web"] }
        }
    });
    std::fs::write(s.join("responses.json"), responses.to_string()).expect("write responses");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let flake = s.join("no-such-flake").display().to_string();

    // Evaluated only, then built (the shim answers `nix build --json` with the same path).
    for mode in [&["--eval-only"][..], &[][..]] {
        let out = run(nixfleet(&s, &s.path)
            .env("PATH", &path)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("NIXFLEET_SHIM_RESPONSES", s.join("responses.json"))
            .args(["release", "create", "--dry-run", "--flake", &flake])
            .args(mode));
        assert!(out.status.success(), "{}", stderr(&out));
        let req: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
        assert_eq!(req["entries"][0]["hostname"], "web-01");
        assert_eq!(req["entries"][0]["store_path"], p1);
        assert_eq!(req["entries"][0]["tags"], serde_json::json!(["web", "eu"]));
        assert_eq!(req["entries"][1]["platform"], "aarch64-linux");
        assert_eq!(req["entries"][1]["store_path"], p2);
    }

    // deploy --ssh: the glob applied in the one evaluation, one build of both hosts.
    let out = run(nixfleet(&s, &s.path)
        .env("PATH", &path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("NIXFLEET_SHIM_RESPONSES", s.join("responses.json"))
        .args([
            "deploy",
            "--ssh",
            "--dry-run",
            "--hosts",
            "web-*",
            "--flake",
            &flake,
        ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Deploy complete: 2 succeeded, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains(&format!("[web-02] would switch to {p2}")),
        "{}",
        stderr(&out)
    );
}
