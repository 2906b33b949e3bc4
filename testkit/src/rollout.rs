//! A rollout as a test names it: `Rollout::of("rel-2").canary().on_failure(Revert).to_tags(&["web"])`.

use crate::names::{hosts, tags};
use nixfleet_core::event::{RolloutOptions, Target};
use nixfleet_core::ids::{ReleaseId, RolloutId};
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::Command;

/// What a rollout does when a batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Pause the rollout until an operator resumes or cancels it.
    Pause,
    /// Send every machine the rollout touched back to its generation from before the rollout.
    Revert,
}

/// A rollout to create, with every parameter named. [`Rollout::of`] gives the values most rule
/// tests use, so a test spells out only what its rule is about: no failure tolerated
/// (`failure_threshold("0")`), [`OnFailure::Pause`], a 60 s health timeout, plan seed 42, no
/// rollout options.
#[derive(Debug, Clone)]
pub struct Rollout {
    spec: RolloutSpec,
    seed: u64,
    options: Option<RolloutOptions>,
}

impl Rollout {
    /// An all-at-once rollout of `release` to no machines yet (add a target with
    /// [`Rollout::to_tags`] or [`Rollout::to_hosts`]), with the defaults above.
    pub fn of(release: &str) -> Rollout {
        Rollout {
            spec: RolloutSpec {
                release: ReleaseId::parse(release)
                    .unwrap_or_else(|e| panic!("release {release:?}: {e:?}")),
                strategy: "all_at_once".into(),
                batch_sizes: None,
                failure_threshold: Some("0".into()),
                on_failure: Some("pause".into()),
                health_timeout_secs: Some(60),
                target: Target::Hosts(vec![]),
                cache_url: None,
            },
            seed: 42,
            options: None,
        }
    }

    /// One canary machine first, then the rest.
    pub fn canary(self) -> Rollout {
        self.strategy("canary")
    }

    /// Every machine in one batch.
    pub fn all_at_once(self) -> Rollout {
        self.strategy("all_at_once")
    }

    /// Batches of these sizes (counts or percentages, as an operator writes them).
    pub fn staged(self, sizes: &[&str]) -> Rollout {
        self.strategy("staged").batch_sizes(sizes)
    }

    /// The strategy by name, as sent (also names the API does not know).
    pub fn strategy(mut self, name: &str) -> Rollout {
        self.spec.strategy = name.into();
        self
    }

    /// The batch sizes as sent, whatever the strategy.
    pub fn batch_sizes(mut self, sizes: &[&str]) -> Rollout {
        self.spec.batch_sizes = Some(sizes.iter().map(|s| s.to_string()).collect());
        self
    }

    /// How many unhealthy machines a batch tolerates: a count or a percentage, as sent.
    pub fn failure_threshold(mut self, amount: &str) -> Rollout {
        self.spec.failure_threshold = Some(amount.into());
        self
    }

    /// What happens when a batch fails.
    pub fn on_failure(self, then: OnFailure) -> Rollout {
        self.on_failure_named(match then {
            OnFailure::Pause => "pause",
            OnFailure::Revert => "revert",
        })
    }

    /// `on_failure` by name, as sent (also names the API does not know).
    pub fn on_failure_named(mut self, name: &str) -> Rollout {
        self.spec.on_failure = Some(name.into());
        self
    }

    /// Seconds a batch waits for its machines' health before counting the silent ones unhealthy.
    pub fn health_timeout(mut self, secs: u64) -> Rollout {
        self.spec.health_timeout_secs = Some(secs);
        self
    }

    /// Targets the active machines carrying every one of these tags.
    pub fn to_tags(self, t: &[&str]) -> Rollout {
        self.target(tags(t))
    }

    /// Targets these machines.
    pub fn to_hosts(self, h: &[&str]) -> Rollout {
        self.target(hosts(h))
    }

    /// Targets `target`.
    pub fn target(mut self, target: Target) -> Rollout {
        self.spec.target = target;
        self
    }

    /// The seed of the plan's machine order.
    pub fn seed(mut self, seed: u64) -> Rollout {
        self.seed = seed;
        self
    }

    /// Creates the rollout with these options (`CreateRolloutWithOptions`, even for the
    /// default options) instead of a plain `CreateRollout`.
    pub fn with_options(mut self, options: RolloutOptions) -> Rollout {
        self.options = Some(options);
        self
    }

    /// The rollout spec, as the API hands it to the core.
    pub fn spec(&self) -> RolloutSpec {
        self.spec.clone()
    }

    /// The command creating this rollout under the id `rollout`.
    pub fn create(&self, rollout: &str) -> Command {
        let rollout =
            RolloutId::parse(rollout).unwrap_or_else(|e| panic!("rollout {rollout:?}: {e:?}"));
        let (spec, seed) = (self.spec(), self.seed);
        match self.options {
            None => Command::CreateRollout {
                rollout,
                spec,
                seed,
            },
            Some(options) => Command::CreateRolloutWithOptions {
                rollout,
                spec,
                seed,
                options,
            },
        }
    }
}
