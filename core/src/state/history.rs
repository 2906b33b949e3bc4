//! A machine's health history, kept compact.
//!
//! Of the [`HEALTH_HISTORY_MAX`] results a machine keeps, consecutive ones nearly always have the
//! same generation, check names, outcomes and messages, and differ only in their sequence number,
//! time and durations. Those texts are held once and shared by the entries that repeat them (an
//! `Arc`), so a full history costs about 60 bytes an entry instead of about 250 (the
//! `bench_projections` example measures it).
//!
//! The serde form (snapshots) is the shape the entry had as a plain struct, entry by entry, so
//! snapshots keep their bytes; loading one shares the texts again.

use super::HEALTH_HISTORY_MAX;
use crate::event::CheckResult;
use crate::ids::{Seq, StorePath, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::sync::Arc;

/// One health result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEntry {
    /// Its sequence number.
    pub seq: Seq,
    /// When it was appended.
    pub at: Timestamp,
    /// True when all passed.
    pub all_passed: bool,
    /// What the machine ran and each check's name, outcome and message; shared with the entry
    /// before it when they are the same.
    checks: Arc<Checks>,
    /// Each check's duration, in the order of `checks.outcomes`.
    durations_ms: Box<[u64]>,
}

#[derive(Debug, PartialEq, Eq)]
struct Checks {
    generation: Option<StorePath>,
    outcomes: Box<[Outcome]>,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    name: Box<str>,
    passed: bool,
    message: Box<str>,
}

impl Checks {
    fn same_as(&self, generation: &Option<StorePath>, results: &[CheckResult]) -> bool {
        self.generation == *generation
            && self.outcomes.len() == results.len()
            && self.outcomes.iter().zip(results).all(|(o, r)| {
                *o.name == *r.name && o.passed == r.passed && *o.message == *r.message
            })
    }
}

impl HealthEntry {
    /// What the machine ran.
    pub fn generation(&self) -> Option<&StorePath> {
        self.checks.generation.as_ref()
    }
    /// The results, as reported.
    pub fn results(&self) -> Vec<CheckResult> {
        self.checks
            .outcomes
            .iter()
            .zip(self.durations_ms.iter())
            .map(|(o, d)| CheckResult {
                name: o.name.to_string(),
                passed: o.passed,
                duration_ms: *d,
                message: o.message.to_string(),
            })
            .collect()
    }
}

/// Appends a result set to `history` (dropping the oldest beyond [`HEALTH_HISTORY_MAX`]), sharing
/// its texts with the newest entry when they are the same.
pub(super) fn push(
    history: &mut VecDeque<HealthEntry>,
    seq: Seq,
    at: Timestamp,
    generation: &Option<StorePath>,
    results: &[CheckResult],
    all_passed: bool,
) {
    let checks = match history.back() {
        Some(last) if last.checks.same_as(generation, results) => Arc::clone(&last.checks),
        _ => Arc::new(Checks {
            generation: generation.clone(),
            outcomes: results
                .iter()
                .map(|r| Outcome {
                    name: r.name.as_str().into(),
                    passed: r.passed,
                    message: r.message.as_str().into(),
                })
                .collect(),
        }),
    };
    if history.len() == HEALTH_HISTORY_MAX {
        history.pop_front();
    }
    history.push_back(HealthEntry {
        seq,
        at,
        all_passed,
        checks,
        durations_ms: results.iter().map(|r| r.duration_ms).collect(),
    });
}

/// The serde form of an entry, borrowed for writing.
#[derive(Serialize)]
struct FormRef<'a> {
    seq: Seq,
    at: Timestamp,
    generation: &'a Option<StorePath>,
    results: Vec<CheckRef<'a>>,
    all_passed: bool,
}

/// A `CheckResult`'s serde form, borrowed (the same fields in the same order).
#[derive(Serialize)]
struct CheckRef<'a> {
    name: &'a str,
    passed: bool,
    duration_ms: u64,
    message: &'a str,
}

/// The serde form of an entry, owned for reading.
#[derive(Deserialize)]
struct Form {
    seq: Seq,
    at: Timestamp,
    generation: Option<StorePath>,
    results: Vec<CheckResult>,
    all_passed: bool,
}

impl Serialize for HealthEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FormRef {
            seq: self.seq,
            at: self.at,
            generation: &self.checks.generation,
            results: self
                .checks
                .outcomes
                .iter()
                .zip(self.durations_ms.iter())
                .map(|(o, d)| CheckRef {
                    name: &o.name,
                    passed: o.passed,
                    duration_ms: *d,
                    message: &o.message,
                })
                .collect(),
            all_passed: self.all_passed,
        }
        .serialize(s)
    }
}

/// Reads a history in its serde form, sharing the texts of consecutive entries as [`push`] does.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<VecDeque<HealthEntry>, D::Error> {
    let forms = Vec::<Form>::deserialize(d)?;
    let mut history = VecDeque::with_capacity(forms.len());
    for f in forms {
        push(
            &mut history,
            f.seq,
            f.at,
            &f.generation,
            &f.results,
            f.all_passed,
        );
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, passed: bool, duration_ms: u64) -> CheckResult {
        CheckResult {
            name: name.into(),
            passed,
            duration_ms,
            message: if passed { String::new() } else { "down".into() },
        }
    }

    fn path(n: u8) -> Option<StorePath> {
        let p = format!("/nix/store/{:0>32}-nixos-system-web-01", n);
        Some(StorePath::parse(&p).expect("store path"))
    }

    fn history() -> VecDeque<HealthEntry> {
        let mut h = VecDeque::new();
        push(
            &mut h,
            Seq(1),
            Timestamp(10),
            &path(0),
            &[check("http", true, 12)],
            true,
        );
        push(
            &mut h,
            Seq(2),
            Timestamp(20),
            &path(0),
            &[check("http", true, 15)],
            true,
        );
        push(
            &mut h,
            Seq(3),
            Timestamp(30),
            &path(0),
            &[check("http", false, 9)],
            false,
        );
        push(
            &mut h,
            Seq(4),
            Timestamp(40),
            &path(1),
            &[check("http", false, 9)],
            false,
        );
        h
    }

    #[test]
    fn consecutive_entries_with_the_same_texts_share_them_and_keep_their_durations() {
        let h = history();
        assert!(path(0).is_some() && path(0) != path(1));
        assert!(Arc::ptr_eq(&h[0].checks, &h[1].checks));
        assert!(!Arc::ptr_eq(&h[1].checks, &h[2].checks), "outcome changed");
        assert!(
            !Arc::ptr_eq(&h[2].checks, &h[3].checks),
            "generation changed"
        );
        assert_eq!(h[1].results(), [check("http", true, 15)]);
        assert_eq!(h[3].generation(), path(1).as_ref());
    }

    #[test]
    fn the_history_is_bounded() {
        let mut h = VecDeque::new();
        for i in 0..HEALTH_HISTORY_MAX as u64 + 5 {
            push(&mut h, Seq(i + 1), Timestamp(i), &None, &[], true);
        }
        assert_eq!(h.len(), HEALTH_HISTORY_MAX);
        assert_eq!(h[0].seq, Seq(6));
    }

    #[test]
    fn the_serde_form_is_the_plain_entry_of_before_and_reading_it_shares_the_texts_again() {
        let h = history();
        let json = serde_json::to_value(&h).expect("serialize");
        assert_eq!(
            json[1],
            serde_json::json!({
                "seq": 2,
                "at": 20,
                "generation": path(0).map(|p| p.to_string()),
                "results": [{"name": "http", "passed": true, "duration_ms": 15, "message": ""}],
                "all_passed": true,
            })
        );
        let back = deserialize(json).expect("deserialize");
        assert_eq!(back, h);
        assert!(Arc::ptr_eq(&back[0].checks, &back[1].checks));
    }
}
