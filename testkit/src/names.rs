//! Short constructors of the ids and paths tests use, valid by construction.

use nixfleet_core::event::{Actor, ReleaseEntry, Target};
use nixfleet_core::ids::{KeyName, MachineId, ReleaseId, StorePath, Tag};
use nixfleet_core::Command;

/// The machine id `id` (panics if it is not a valid id: tests name their machines statically).
pub fn m(id: &str) -> MachineId {
    MachineId::parse(id).unwrap_or_else(|e| panic!("machine id {id:?}: {e:?}"))
}

/// The tag `t`.
pub fn tag(t: &str) -> Tag {
    Tag::parse(t).unwrap_or_else(|e| panic!("tag {t:?}: {e:?}"))
}

/// A valid store path for system generation `n` of `host`: distinct per host and generation.
pub fn path(host: &str, n: u64) -> StorePath {
    let h: u32 = host.bytes().map(u32::from).sum();
    let p = format!("/nix/store/{h:016}{n:016}-nixos-system-{host}-{n}");
    StorePath::parse(&p).unwrap_or_else(|e| panic!("store path {p:?}: {e:?}"))
}

/// The operator of the tests: an admin API key named `test-admin`.
pub fn admin() -> Actor {
    Actor::Key(KeyName::parse("test-admin").expect("a valid key name"))
}

/// A rollout target: the active machines carrying every one of these tags.
pub fn tags(t: &[&str]) -> Target {
    Target::Tags(t.iter().map(|x| tag(x)).collect())
}

/// A rollout target: these machines.
pub fn hosts(h: &[&str]) -> Target {
    Target::Hosts(h.iter().map(|x| m(x)).collect())
}

/// The command creating release `release` of these machines and paths (x86_64-linux, no flake
/// reference, no cache override).
pub fn create_release(
    release: &str,
    entries: impl IntoIterator<Item = (MachineId, StorePath)>,
) -> Command {
    Command::CreateRelease {
        release: ReleaseId::parse(release).unwrap_or_else(|e| panic!("release {release:?}: {e:?}")),
        flake_ref: None,
        flake_rev: None,
        cache_url: None,
        entries: entries
            .into_iter()
            .map(|(machine, path)| ReleaseEntry {
                machine,
                path,
                platform: "x86_64-linux".into(),
                tags: vec![],
            })
            .collect(),
    }
}
