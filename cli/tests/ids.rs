//! The CLI checks ids with the one rule of `nixfleet-ids`, as the control plane and the agent do:
//! no copy of its own that could accept what the control plane refuses, or refuse what it accepts.

use nixfleet_cli::client::path_id;
use nixfleet_ids::{KeyName, MachineId, ReleaseId, RolloutId};

#[test]
fn ids_in_url_paths_follow_the_rule_of_their_kind() {
    // A leading '-' is refused by the control plane: refused here too (the CLI's old copy let it by).
    let err = path_id("machine id", "-web-01", MachineId::parse).expect_err("refused");
    assert!(
        err.to_string().contains("must not start with '-' or '.'"),
        "{err}"
    );
    // Key names may hold ':' and '@' (KeyName's rule); the CLI's old copy refused them.
    assert_eq!(
        path_id("key name", "ops:alice@example", KeyName::parse).expect("a valid key name"),
        "ops:alice@example"
    );
    assert!(path_id("machine id", "ops:alice", MachineId::parse).is_err());
    for (id, ok) in [("rel-1", true), ("r-1", true), ("a/b", false), ("", false)] {
        assert_eq!(
            path_id("release id", id, ReleaseId::parse).is_ok(),
            ok,
            "{id}"
        );
        assert_eq!(
            path_id("rollout id", id, RolloutId::parse).is_ok(),
            ok,
            "{id}"
        );
    }
}
