//! Store path and id validation: the core's `StorePath::parse` (what the control plane accepts) and
//! the agent's `store_path::StorePath` (what the agent will hand to `nix` and run as root) never
//! panic, accept only a single top-level store entry with no traversal and no shell
//! metacharacters, and agree with each other. The id newtypes are held to the same rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixfleet_agent::store_path::StorePath as AgentStorePath;
use nixfleet_core::ids::{KeyName, MachineId, ReleaseId, RolloutId, StorePath, Tag};

/// Characters that mean something to a POSIX shell (besides `?`, which Nix allows in names and
/// which matters only in an unquoted word: nothing here reaches a shell).
const SHELL_META: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '[', ']', '*', '!', '\'', '"', '\\',
    '#', '~', '^',
];

fn no_shell_meta(what: &str, s: &str) {
    assert!(
        !s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || SHELL_META.contains(&c)),
        "{what} {s:?} was accepted with a whitespace, control or shell character"
    );
    assert!(s.is_ascii(), "{what} {s:?} was accepted with non-ASCII text");
}

fn check_store_path(s: &str) {
    let core = StorePath::parse(s);
    let agent = AgentStorePath::try_from(s);
    for (who, ok) in [("core", core.is_ok()), ("agent", agent.is_ok())] {
        if !ok {
            continue;
        }
        let what = format!("{who} store path");
        let rest = s
            .strip_prefix("/nix/store/")
            .unwrap_or_else(|| panic!("{what} {s:?} accepted outside /nix/store/"));
        assert!(!rest.contains('/'), "{what} {s:?} accepted with a '/' after the hash-name part");
        assert!(!rest.contains(".."), "{what} {s:?} accepted with '..'");
        assert!(!rest.starts_with('.') && !rest.starts_with('-'), "{what} {s:?}");
        no_shell_meta(&what, s);
    }
    assert_eq!(
        core.is_ok(),
        agent.is_ok(),
        "the control plane and the agent disagree on {s:?}: core {core:?}, agent {agent:?}"
    );
    if let (Ok(c), Ok(a)) = (&core, &agent) {
        assert_eq!(c.as_str(), a.as_str());
        assert_eq!(a.hash_part().len(), 32);
        assert!(!a.name().is_empty());
    }
}

fn check_id<T>(what: &str, s: &str, parse: fn(&str) -> Result<T, nixfleet_core::ids::InvalidId>, slash_ok: bool) {
    let Ok(_) = parse(s) else {
        return;
    };
    assert!(!s.is_empty() && s.len() <= 128, "{what} {s:?}: length");
    assert!(s != "." && s != "..", "{what} {s:?} is a path traversal");
    assert!(!s.starts_with('-'), "{what} {s:?} looks like a flag");
    if !slash_ok {
        assert!(!s.contains('/'), "{what} {s:?} accepted with '/'");
    }
    no_shell_meta(what, s);
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check_store_path(&s);
    // Most random strings fail the prefix at once; also try them as the part after it.
    check_store_path(&format!("/nix/store/{s}"));
    check_id("machine id", &s, MachineId::parse, false);
    check_id("release id", &s, ReleaseId::parse, false);
    check_id("rollout id", &s, RolloutId::parse, false);
    check_id("key name", &s, KeyName::parse, false);
    // Tags may hold '/' by design (`role/db`); they are never used as paths.
    check_id("tag", &s, Tag::parse, true);
});
