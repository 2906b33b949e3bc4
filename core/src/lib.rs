//! The pure core of nixfleet.
//!
//! Ids, events, the reducer that folds events into the projections users see, rollout planning,
//! command decisions and the rollout executor. This crate does no IO, reads no clock and owns no
//! randomness: time and seeds are inputs. Its dependency list (serde, thiserror) enforces that;
//! `tests/tidy.rs` rejects file, network, process, environment and clock APIs in its sources.
#![deny(missing_docs)]

pub mod decide;
pub mod describe;
pub mod event;
pub mod executor;
pub mod ids;
pub mod plan;
pub mod rejection;
pub mod state;

pub use decide::{decide, Command, Rejection, ReportInput};
pub use event::{Actor, Envelope, Event};
pub use executor::{next_deadline, settle, ExecutorInput};
pub use ids::{MachineId, ReleaseId, RolloutId, Seq, StorePath, Tag, Timestamp};
pub use state::State;
