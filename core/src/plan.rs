//! Rollout planning: parse and validate a rollout request, pick its machines, cut batches.
//!
//! Nothing here is coerced: a bad value is a [`Rejection`] saying what is wrong.
//! The machine order is a seeded shuffle, so a plan is reproducible from its recorded seed.

use crate::event::*;
use crate::ids::*;
use crate::rejection::Rejection;
use crate::state::State;

/// Longest health timeout accepted (one day).
pub const HEALTH_TIMEOUT_SECS_MAX: u64 = 86_400;
/// Default health timeout (v0.1).
pub const HEALTH_TIMEOUT_SECS_DEFAULT: u64 = 300;
/// Most batch sizes in one request.
pub const BATCH_SIZES_MAX: usize = 64;

/// A rollout request, with ids already validated but values still as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// The release.
    pub release: ReleaseId,
    /// Strategy name.
    pub strategy: String,
    /// Batch sizes as sent.
    pub batch_sizes: Option<Vec<String>>,
    /// Threshold as sent.
    pub failure_threshold: Option<String>,
    /// on_failure as sent.
    pub on_failure: Option<String>,
    /// Seconds.
    pub health_timeout_secs: Option<u64>,
    /// Target.
    pub target: Target,
    /// Cache URL override.
    pub cache_url: Option<String>,
}

/// Parses a batch size: a count ≥ 1 or `P%` with 1 ≤ P ≤ 100.
pub fn parse_batch_size(s: &str) -> Result<Amount, Rejection> {
    parse_amount(s, 1).map_err(|why| Rejection::Invalid(format!("batch size {s:?}: {why}")))
}

/// Parses a failure threshold: a count ≥ 0 or `P%` with 0 ≤ P ≤ 100.
pub fn parse_threshold(s: &str) -> Result<Amount, Rejection> {
    parse_amount(s, 0).map_err(|why| Rejection::Invalid(format!("failure_threshold {s:?}: {why}")))
}

fn parse_amount(s: &str, min: u32) -> Result<Amount, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: u32 = p
            .parse()
            .map_err(|_| "expected a whole number before '%'".to_string())?;
        if p < min || p > 100 {
            return Err(format!("percentage must be between {min} and 100"));
        }
        Ok(Amount::Percent(p as u8))
    } else {
        let n: u32 = t.parse().map_err(|_| {
            "expected a whole number like \"2\" or a percentage like \"25%\"".to_string()
        })?;
        if n < min {
            return Err(format!("must be at least {min}"));
        }
        Ok(Amount::Count(n))
    }
}

/// Cuts `n` machines into batch lengths: each size applies to the machines still remaining,
/// percentages round up, every batch has at least one machine, the last size takes the rest.
pub fn batch_lengths(n: usize, sizes: &[Amount]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut remaining = n;
    for (i, s) in sizes.iter().enumerate() {
        if remaining == 0 {
            break;
        }
        let len = if i + 1 == sizes.len() {
            remaining
        } else {
            s.of(remaining).clamp(1, remaining)
        };
        out.push(len);
        remaining -= len;
    }
    out
}

/// A small deterministic PRNG (SplitMix64): the core takes seeds as input and owns no randomness.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Sorts, then Fisher–Yates shuffles with `seed`: same input and seed, same order.
pub fn seeded_order<T: Ord>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    items.sort();
    let mut rng = SplitMix64::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
    items
}

/// Validates `spec` against `state` and builds the plan. Pure: the same inputs give the same plan.
pub fn plan_rollout(
    state: &State,
    spec: &RolloutSpec,
    seed: u64,
) -> Result<RolloutPlan, Rejection> {
    let strategy = Strategy::parse(&spec.strategy).ok_or_else(|| {
        Rejection::Invalid(format!(
            "strategy {:?} is not one of: {}",
            spec.strategy,
            Strategy::choices()
        ))
    })?;
    let batch_sizes = batch_sizes_of(strategy, spec.batch_sizes.as_deref())?;
    let failure_threshold = match &spec.failure_threshold {
        Some(s) => parse_threshold(s)?,
        None => Amount::Count(0),
    };
    let on_failure = match &spec.on_failure {
        Some(s) => OnFailure::parse(s).ok_or_else(|| {
            Rejection::Invalid(format!(
                "on_failure {s:?} is not one of: {}",
                OnFailure::choices()
            ))
        })?,
        None => OnFailure::Pause,
    };
    let health_timeout_secs = spec
        .health_timeout_secs
        .unwrap_or(HEALTH_TIMEOUT_SECS_DEFAULT);
    if health_timeout_secs == 0 || health_timeout_secs > HEALTH_TIMEOUT_SECS_MAX {
        return Err(Rejection::Invalid(format!(
            "health_timeout {health_timeout_secs} must be between 1 and {HEALTH_TIMEOUT_SECS_MAX} seconds"
        )));
    }
    if let Some(url) = &spec.cache_url {
        check_cache_url(url)?;
    }
    let release = state
        .releases
        .get(&spec.release)
        .ok_or_else(|| Rejection::NotFound(format!("release {} not found", spec.release)))?;
    let candidates = active_machines_of(state, &spec.target)?;
    let in_release: Vec<(MachineId, StorePath)> = candidates
        .iter()
        .filter_map(|m| release.entries.get(m).map(|e| (m.clone(), e.path.clone())))
        .collect();
    if in_release.is_empty() {
        return Err(Rejection::Invalid(format!(
            "none of the {} targeted machines is in release {}",
            candidates.len(),
            release.id
        )));
    }
    for (m, _) in &in_release {
        if let Some(other) = state.active_rollout_of.get(m) {
            return Err(Rejection::Conflict(format!(
                "machine {m} is in active rollout {other}"
            )));
        }
    }
    let ordered = seeded_order(in_release, seed);
    let mut batches = Vec::new();
    let mut it = ordered.into_iter();
    for len in batch_lengths(it.len(), &batch_sizes) {
        batches.push(it.by_ref().take(len).collect::<Vec<_>>());
    }
    Ok(RolloutPlan {
        release: release.id.clone(),
        strategy,
        batch_sizes,
        failure_threshold,
        on_failure,
        health_timeout_secs,
        target: spec.target.clone(),
        cache_url: spec.cache_url.clone().or_else(|| release.cache_url.clone()),
        seed,
        batches,
    })
}

/// The batch sizes of `strategy`: canary and all_at_once have fixed ones (`given` may only repeat
/// them), staged needs `given`.
fn batch_sizes_of(strategy: Strategy, given: Option<&[String]>) -> Result<Vec<Amount>, Rejection> {
    let given: Option<Vec<Amount>> = match given {
        Some(v) if !v.is_empty() => {
            if v.len() > BATCH_SIZES_MAX {
                return Err(Rejection::Invalid(format!(
                    "batch_sizes has {} entries; at most {BATCH_SIZES_MAX}",
                    v.len()
                )));
            }
            Some(
                v.iter()
                    .map(|s| parse_batch_size(s))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => None,
    };
    let fixed = match strategy {
        Strategy::Canary => Some(vec![Amount::Count(1), Amount::Percent(100)]),
        Strategy::AllAtOnce => Some(vec![Amount::Percent(100)]),
        Strategy::Staged => None,
    };
    match (fixed, given) {
        (Some(f), None) => Ok(f),
        (Some(f), Some(g)) if f == g => Ok(f),
        (Some(f), Some(_)) => Err(Rejection::Invalid(format!(
            "batch_sizes cannot be chosen with strategy {strategy} (it always uses {}); use strategy staged",
            f.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
        ))),
        (None, Some(g)) => Ok(g),
        (None, None) => Err(Rejection::Invalid("strategy staged needs batch_sizes, e.g. [\"1\",\"25%\",\"100%\"]".into())),
    }
}

/// The active machines `target` names: tags (AND) or hosts, each of which must be registered and
/// active. Not empty.
fn active_machines_of(state: &State, target: &Target) -> Result<Vec<MachineId>, Rejection> {
    let candidates: Vec<MachineId> = match target {
        Target::Tags(tags) => {
            if tags.is_empty() {
                return Err(Rejection::Invalid(
                    "target.tags must name at least one tag".into(),
                ));
            }
            state
                .machines_with_tags(tags)
                .filter(|m| m.lifecycle == Lifecycle::Active)
                .map(|m| m.id.clone())
                .collect()
        }
        Target::Hosts(hosts) => {
            if hosts.is_empty() {
                return Err(Rejection::Invalid(
                    "target.hosts must name at least one host".into(),
                ));
            }
            let mut out = Vec::new();
            for h in hosts {
                match state.machines.get(h) {
                    Some(m) if m.lifecycle == Lifecycle::Active => out.push(h.clone()),
                    Some(m) => {
                        return Err(Rejection::Invalid(format!(
                            "host {h} is {}, not active",
                            m.lifecycle
                        )));
                    }
                    None => return Err(Rejection::Invalid(format!("host {h} is not registered"))),
                }
            }
            out.sort();
            out.dedup();
            out
        }
    };
    if candidates.is_empty() {
        return Err(Rejection::Invalid(
            "no active machines match the target".into(),
        ));
    }
    Ok(candidates)
}

/// A cache URL must be http(s), file or ssh, without whitespace or shell characters.
pub fn check_cache_url(url: &str) -> Result<(), Rejection> {
    let ok_scheme = [
        "http://",
        "https://",
        "file://",
        "ssh://",
        "ssh-ng://",
        "s3://",
    ]
    .iter()
    .any(|s| url.starts_with(s));
    let ok_chars = url.len() <= 1024
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !"'\"`$;|&<>\\(){}".contains(c));
    if ok_scheme && ok_chars {
        Ok(())
    } else {
        Err(Rejection::Invalid(format!("cache_url {url:?} must be an http(s)://, file://, ssh:// or s3:// URL without shell characters")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_machines_with_1_25pct_100pct_make_batches_of_1_5_and_14() {
        let sizes = vec![Amount::Count(1), Amount::Percent(25), Amount::Percent(100)];
        assert_eq!(batch_lengths(20, &sizes), vec![1, 5, 14]);
    }

    #[test]
    fn the_last_size_takes_the_rest_and_no_batch_is_empty() {
        assert_eq!(
            batch_lengths(3, &[Amount::Count(1), Amount::Count(1)]),
            vec![1, 2]
        );
        assert_eq!(
            batch_lengths(1, &[Amount::Count(1), Amount::Percent(100)]),
            vec![1]
        );
        assert_eq!(
            batch_lengths(2, &[Amount::Count(5), Amount::Count(1), Amount::Count(1)]),
            vec![2]
        );
        assert_eq!(
            batch_lengths(10, &[Amount::Percent(1), Amount::Percent(100)]),
            vec![1, 9]
        );
    }

    #[test]
    fn bad_sizes_and_thresholds_are_rejected_not_coerced() {
        for bad in ["0", "x", "0%", "101%", "-1", "1.5", "", "%"] {
            assert!(parse_batch_size(bad).is_err(), "{bad:?}");
        }
        for bad in ["x", "101%", "-1", "abc%", ""] {
            assert!(parse_threshold(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_threshold("0").expect("0 is fine"), Amount::Count(0));
        assert_eq!(
            parse_threshold("50%").expect("50% is fine"),
            Amount::Percent(50)
        );
    }

    #[test]
    fn a_percentage_threshold_rounds_up() {
        assert_eq!(Amount::Percent(10).of(5), 1);
        assert_eq!(Amount::Percent(50).of(3), 2);
        assert_eq!(Amount::Percent(0).of(3), 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_order_and_another_seed_usually_does_not() {
        let items: Vec<u32> = (0..50).collect();
        assert_eq!(
            seeded_order(items.clone(), 7),
            seeded_order(items.clone(), 7)
        );
        assert_ne!(seeded_order(items.clone(), 7), seeded_order(items, 8));
    }
}
