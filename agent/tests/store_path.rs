//! Store path validation: what the control plane sends must never reach a command as anything but
//! one plain top-level store path. The agent's `StorePath` is `nixfleet_ids::StorePath`, the one
//! rule the control plane and the CLI use too.

use nixfleet_ids::{InvalidId, StorePath};

const HASH: &str = "0c5arqvvcm6n9a3xm1z2b8lvl8k7yq8q";

fn ok(s: &str) -> StorePath {
    StorePath::try_from(s).unwrap_or_else(|e| panic!("{s:?} should be accepted: {e}"))
}

fn rejected(s: &str) -> InvalidId {
    match StorePath::try_from(s) {
        Ok(p) => panic!("{p} should be rejected"),
        Err(e) => e,
    }
}

/// Asserts that each of `paths` is rejected for `why`.
fn assert_rejected_for<S: AsRef<str>>(why: &str, paths: &[S]) {
    for p in paths {
        let e = rejected(p.as_ref());
        assert_eq!(e.why, why, "{:?}: {e}", p.as_ref());
    }
}

#[test]
fn a_nixos_toplevel_is_accepted_and_split_into_hash_and_name() {
    let p = ok(&format!(
        "/nix/store/{HASH}-nixos-system-web-01-26.05.20260101.abcdef0"
    ));
    assert_eq!(p.hash_part(), HASH);
    assert_eq!(p.name(), "nixos-system-web-01-26.05.20260101.abcdef0");
}

#[test]
fn every_character_nix_allows_in_a_name_is_accepted() {
    ok(&format!("/nix/store/{HASH}-a+b-c.d_e?f=g"));
}

#[test]
fn paths_outside_the_store_are_rejected() {
    assert_rejected_for(
        StorePath::NOT_IN_STORE,
        &[
            "/etc/passwd".to_owned(),
            format!("nix/store/{HASH}-x"),
            format!("/nix/store2/{HASH}-x"),
            String::new(),
        ],
    );
}

#[test]
fn traversal_is_rejected() {
    rejected(&format!("/nix/store/{HASH}-x/../../../etc/passwd"));
    rejected("/nix/store/../etc/passwd");
    rejected(&format!("/nix/store/{HASH}-.."));
    rejected(&format!("/nix/store/{HASH}-a..b"));
    rejected(&format!("/nix/store/{HASH}-.hidden"));
    rejected(&format!("/nix/store/{HASH}-x/bin/switch-to-configuration"));
}

#[test]
fn shell_metacharacters_and_whitespace_are_rejected() {
    for bad in [
        ";",
        "$(reboot)",
        "`id`",
        "|",
        "&",
        ">",
        "<",
        " ",
        "\n",
        "'",
        "\"",
        "\\",
        "*",
        "{a,b}",
        "#",
        "~",
        "%",
        "!",
        "\0",
    ] {
        let e = rejected(&format!("/nix/store/{HASH}-x{bad}y"));
        assert_eq!(e.why, StorePath::BAD_NAME, "{bad:?}: {e}");
    }
}

#[test]
fn a_hash_of_the_wrong_length_or_alphabet_is_rejected() {
    // 'e', 'o', 'u' and 't' are not in Nix's base-32 alphabet.
    let bad_hashes = [
        "0c5arqvvcm6n9a3xm1z2b8lvl8k7yq8",
        "0c5arqvvcm6n9a3xm1z2b8lvl8k7yq8qq",
        "ec5arqvvcm6n9a3xm1z2b8lvl8k7yq8q",
        "0C5ARQVVCM6N9A3XM1Z2B8LVL8K7YQ8Q",
        "-c5arqvvcm6n9a3xm1z2b8lvl8k7yq8q",
    ];
    let mut paths: Vec<String> = bad_hashes
        .iter()
        .map(|h| format!("/nix/store/{h}-x"))
        .collect();
    paths.push(format!("/nix/store/{HASH}"));
    paths.push(format!("/nix/store/{HASH}x"));
    assert_rejected_for(StorePath::BAD_HASH, &paths);
}

#[test]
fn an_empty_or_overlong_name_is_rejected() {
    rejected(&format!("/nix/store/{HASH}-"));
    ok(&format!("/nix/store/{HASH}-{}", "a".repeat(211)));
    rejected(&format!("/nix/store/{HASH}-{}", "a".repeat(212)));
}

#[test]
fn the_error_names_the_offending_value_in_one_line() {
    let e = rejected("/nix/store/x; rm -rf /").to_string();
    assert!(e.contains("\"/nix/store/x; rm -rf /\""), "{e}");
    assert!(!e.contains('\n'));
}
