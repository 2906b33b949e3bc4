//! The local quarantine rule (see the `quarantine` module documentation), on the real state file.

use nixfleet_agent::quarantine::{Quarantine, Verdict, FILE_NAME};
use nixfleet_proto::api::v1::DesiredGeneration;

const BAD: &str = "/nix/store/0c5arqvvcm6n9a3xm1z2b8lvl8k7yq8q-nixos-system-bad";
const NEXT: &str = "/nix/store/1c5arqvvcm6n9a3xm1z2b8lvl8k7yq8q-nixos-system-next";

fn desired(path: &str, quarantined: bool) -> DesiredGeneration {
    DesiredGeneration {
        hash: path.into(),
        cache_url: None,
        poll_hint: None,
        quarantined,
        decided_seq: None,
        activation: None,
    }
}

fn skipped(v: Verdict) -> bool {
    matches!(v, Verdict::Skip(_))
}

#[test]
fn a_quarantined_path_is_skipped_until_the_control_plane_acknowledges_and_then_clears_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Quarantine::load(dir.path()).expect("load");
    q.add(BAD, "health checks failed: app: exit status: 1");

    assert!(
        skipped(q.observe(&desired(BAD, false))),
        "CP has not seen the failure yet"
    );
    assert!(skipped(q.observe(&desired(BAD, true))), "CP acknowledges");
    assert!(q.entries()[BAD].cp_acknowledged);
    assert_eq!(
        q.observe(&desired(BAD, false)),
        Verdict::Apply,
        "operator cleared it on the CP"
    );
    assert!(!q.contains(BAD));
}

#[test]
fn a_change_of_desired_path_clears_the_quarantine_of_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Quarantine::load(dir.path()).expect("load");
    q.add(BAD, "switch failed");

    assert_eq!(q.observe(&desired(NEXT, false)), Verdict::Apply);
    assert!(!q.contains(BAD));
    assert_eq!(
        q.observe(&desired(BAD, false)),
        Verdict::Apply,
        "returning to it later is a new decision"
    );
}

#[test]
fn no_desired_generation_clears_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Quarantine::load(dir.path()).expect("load");
    q.add(BAD, "switch failed");
    q.observe_none();
    assert!(q.entries().is_empty());
    assert!(Quarantine::load(dir.path())
        .expect("reload")
        .entries()
        .is_empty());
}

#[test]
fn the_control_plane_flag_alone_is_enough_to_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Quarantine::load(dir.path()).expect("load");
    assert!(skipped(q.observe(&desired(BAD, true))));
}

#[test]
fn the_quarantine_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    Quarantine::load(dir.path())
        .expect("load")
        .add(BAD, "health checks failed");
    let q = Quarantine::load(dir.path()).expect("reload");
    assert!(q.contains(BAD));
    assert_eq!(q.entries()[BAD].reason, "health checks failed");
}

#[test]
fn a_corrupt_state_file_is_moved_aside_instead_of_stopping_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE_NAME), b"{not json").expect("write");
    let q = Quarantine::load(dir.path()).expect("load");
    assert!(q.entries().is_empty());
    assert!(dir.path().join(format!("{FILE_NAME}.corrupt")).exists());
}

fn decided(path: &str, quarantined: bool, seq: u64) -> DesiredGeneration {
    DesiredGeneration {
        decided_seq: Some(seq),
        ..desired(path, quarantined)
    }
}

#[test]
fn a_path_decided_again_after_it_failed_is_applied_even_if_the_quarantine_was_never_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Quarantine::load(dir.path()).expect("load");
    assert_eq!(q.observe(&decided(BAD, false, 40)), Verdict::Apply);
    q.add(BAD, "switch failed");
    assert_eq!(q.entries()[BAD].decided_seq, Some(40));
    assert!(
        skipped(q.observe(&decided(BAD, false, 40))),
        "the same decision: the control plane has not seen the failure yet"
    );
    assert_eq!(
        q.observe(&decided(BAD, false, 57)),
        Verdict::Apply,
        "resumed (or cleared) before this agent saw quarantined: true"
    );
    assert!(!q.contains(BAD));
    // A control plane that sends no decided_seq keeps the old, cautious rule.
    q.add(BAD, "switch failed");
    assert!(skipped(q.observe(&desired(BAD, false))));
}
