//! The nixfleet test kit: one place for the code that drives the pure core in tests.
//!
//! A rule test reads as given / when / then:
//!
//! ```
//! use nixfleet_testkit::*;
//! use nixfleet_core::event::RolloutStatus;
//!
//! // Given two web machines on generation 1 and a release of generation 2,
//! let mut f = Fleet::default();
//! f.register("web-01", &["web"]);
//! f.register("web-02", &["web"]);
//! f.report("web-01", Report::on(1).healthy());
//! f.report("web-02", Report::on(1).healthy());
//! f.release("rel-2", &[("web-01", 2), ("web-02", 2)]);
//! // and a rollout of it to every web machine at once that tolerates no failure,
//! f.start("r-1", Rollout::of("rel-2").all_at_once().failure_threshold("0").to_tags(&["web"]));
//! // when web-01 reports generation 2 with a failing health check,
//! let ev = f.report("web-01", Report::on(2).unhealthy());
//! // then the batch fails and the rollout pauses.
//! ev.assert_ends_with(&["BatchFailed", "RolloutPaused"]);
//! assert_eq!(f.status("r-1"), RolloutStatus::Paused);
//! ```
//!
//! [`Fleet`] is the simulated fleet (decide, append, apply and let the executor settle, as the
//! engine does, in memory with a clock the test moves); [`Rollout`] and [`Report`] name what
//! a test sends; [`check_invariants`], [`check_decided_once`] and [`replay`] are the checks the
//! property tests, the fuzz target and the engine simulation run after every step.
//! [`postgres::PgServer`] is a real PostgreSQL server (Debian's package) in a temporary
//! directory, for the tests of the log on PostgreSQL, its failover, and copies between backends.
//!
//! Architecture Invariant: this crate is only ever a `[dev-dependencies]` entry (and a dependency
//! of the fuzz crate); no binary links it.
#![deny(missing_docs)]

mod checks;
mod fleet;
mod names;
pub mod postgres;
mod report;
mod rollout;

pub use checks::{check_decided_once, check_invariants, replay};
pub use fleet::{Fleet, Outcome};
pub use names::{admin, create_release, hosts, m, path, tag, tags};
pub use report::{one_check, report_input, Report};
pub use rollout::{OnFailure, Rollout};
