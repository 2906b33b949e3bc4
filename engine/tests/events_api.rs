//! The events API renders what the log holds so that a reader can re-encode it: an API key's
//! SHA-256 is shown as hex, and the replay tool's chain check over the API still holds.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use nixfleet_engine::postmortem::{record_from_wire, verify_chain};
use nixfleet_proto::api::v1::EventRecord;
use sha2::{Digest, Sha256};

#[test]
fn key_hashes_are_hex_in_the_events_api_and_the_chain_verifies_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &[]);
    let cp = Cp::start(dir.path(), &pki);
    let admin_key = bootstrap(&cp);
    let admin = cp.client("operator", Some(&admin_key));
    let ci_key = admin.json(
        "POST",
        "/api/v1/keys",
        Some(r#"{"name":"ci","role":"deploy"}"#),
        201,
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, body) = admin.get("/api/v1/events?after=0");
    assert_eq!(s, 200, "{body}");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let created: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|e| e["kind"] == "ApiKeyCreated")
        .collect();
    assert_eq!(created.len(), 2, "{body}");
    for (e, secret) in created.iter().zip([&admin_key, &ci_key]) {
        let want: String = Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            e["data"]["hash"].as_str(),
            Some(want.as_str()),
            "the key's SHA-256 as 64 lowercase hex digits: {e}"
        );
    }

    // The replay tool's online check: each record re-encoded from the API's JSON must hash to
    // the next record's prev_hash, so the hex must come back as the same 32 bytes.
    let records: Vec<_> = body
        .lines()
        .map(|l| record_from_wire(&serde_json::from_str::<EventRecord>(l).unwrap()).unwrap())
        .collect();
    verify_chain(&records).unwrap();
}

#[test]
fn a_hash_from_an_older_control_plane_as_32_numbers_still_reads_and_bad_hex_is_named() {
    let line = |hash: serde_json::Value| -> EventRecord {
        serde_json::from_value(serde_json::json!({
            "seq": 1, "at_ms": 0, "at": "1970-01-01T00:00:00.000Z", "actor": "system:bootstrap",
            "stream": "key:alice", "kind": "ApiKeyCreated",
            "data": {"name": "alice", "role": "Admin", "hash": hash},
            "prev_hash": "0".repeat(64),
        }))
        .unwrap()
    };
    let hex = "ab".repeat(32);
    let from_hex = record_from_wire(&line(hex.clone().into())).unwrap();
    let from_numbers = record_from_wire(&line(serde_json::json!(vec![0xab_u8; 32]))).unwrap();
    assert_eq!(from_hex, from_numbers);
    let err = record_from_wire(&line("abc".into())).unwrap_err();
    assert!(err.contains("record 1: hash is not 64 hex digits"), "{err}");
}
