//! Store path and id validation: `nixfleet_ids::StorePath` is the one rule the control plane
//! accepts, the agent acts on (an argument of `nix`, and an executable it runs as root) and the CLI
//! sends to remote shells. It never panics, accepts only a single top-level store entry with no
//! traversal and no shell metacharacters, and what it accepts round-trips (text, `TryFrom`,
//! serde) and splits into a 32-character nix-base32 hash and a name of Nix's characters. The id
//! newtypes are held to the same kind of rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixfleet_ids::{
    InvalidId, KeyName, MachineId, ReleaseId, RolloutId, StorePath, Tag, STORE_NAME_LEN_MAX,
};

/// Characters that mean something to a POSIX shell (besides `?`, which Nix allows in names and
/// which matters only in an unquoted word: nothing here reaches a shell).
const SHELL_META: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '[', ']', '*', '!', '\'', '"', '\\',
    '#', '~', '^',
];

/// Nix's base-32 alphabet (no e, o, u, t).
const NIX_BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn no_shell_meta(what: &str, s: &str) {
    assert!(
        !s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || SHELL_META.contains(&c)),
        "{what} {s:?} was accepted with a whitespace, control or shell character"
    );
    assert!(
        s.is_ascii(),
        "{what} {s:?} was accepted with non-ASCII text"
    );
}

fn check_store_path(s: &str) {
    let p = match StorePath::parse(s) {
        Ok(p) => p,
        Err(e) => {
            // A refusal names the value and one of the three parts, on one line.
            assert!(
                [
                    StorePath::NOT_IN_STORE,
                    StorePath::BAD_HASH,
                    StorePath::BAD_NAME
                ]
                .contains(&e.why),
                "{s:?}: unexpected reason {e}"
            );
            assert!(!e.to_string().contains('\n'), "{s:?}: {e}");
            assert_eq!(StorePath::try_from(s).map_err(|e| e.why), Err(e.why));
            return;
        }
    };
    let what = "store path";
    assert_eq!(p.as_str(), s, "accepted {s:?} but holds {p}");
    let rest = s
        .strip_prefix("/nix/store/")
        .unwrap_or_else(|| panic!("{what} {s:?} accepted outside /nix/store/"));
    assert!(
        !rest.contains('/'),
        "{what} {s:?} accepted with a '/' after the hash-name part"
    );
    assert!(!rest.contains(".."), "{what} {s:?} accepted with '..'");
    assert!(
        !rest.starts_with('.') && !rest.starts_with('-'),
        "{what} {s:?}"
    );
    no_shell_meta(what, s);
    // It splits into hash and name, and the two put back together are the path.
    let (hash, name) = (p.hash_part(), p.name());
    assert_eq!(hash.len(), 32, "{s:?}");
    assert!(
        hash.chars().all(|c| NIX_BASE32.contains(c)),
        "{s:?}: hash {hash:?}"
    );
    assert!(
        !name.is_empty() && name.len() <= STORE_NAME_LEN_MAX,
        "{s:?}: name {name:?}"
    );
    assert!(!name.starts_with('.'), "{s:?}: name {name:?}");
    assert_eq!(format!("/nix/store/{hash}-{name}"), s);
    assert_eq!(p.as_path().to_str(), Some(s));
    // Every way in agrees, and the serde form (a plain string, also inside bincode events) comes
    // back as the same value.
    assert_eq!(StorePath::try_from(s).as_ref(), Ok(&p));
    assert_eq!(StorePath::try_from(s.to_owned()).as_ref(), Ok(&p));
    assert_eq!(StorePath::parse(&p.to_string()).as_ref(), Ok(&p));
    let json = serde_json::to_string(&p).expect("a store path serializes");
    assert_eq!(serde_json::from_str::<String>(&json).expect("a string"), s);
    assert_eq!(
        serde_json::from_str::<StorePath>(&json).expect("decodes"),
        p
    );
}

fn check_id<T: ToString>(
    what: &str,
    s: &str,
    parse: fn(&str) -> Result<T, InvalidId>,
    slash_ok: bool,
) {
    let Ok(id) = parse(s) else {
        return;
    };
    assert_eq!(id.to_string(), s, "{what} {s:?} does not round-trip");
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
    // Most random strings fail the prefix at once; also try them as the part after it, and
    // after a valid hash.
    check_store_path(&format!("/nix/store/{s}"));
    check_store_path(&format!("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-{s}"));
    check_id("machine id", &s, MachineId::parse, false);
    check_id("release id", &s, ReleaseId::parse, false);
    check_id("rollout id", &s, RolloutId::parse, false);
    check_id("key name", &s, KeyName::parse, false);
    // Tags may hold '/' by design (`role/db`); they are never used as paths.
    check_id("tag", &s, Tag::parse, true);
});
