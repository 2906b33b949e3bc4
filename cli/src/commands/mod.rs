//! One module per command group; each owns its clap arguments and its run function.

pub mod bootstrap;
pub mod demo;
pub mod deploy;
pub mod keys;
pub mod machines;
pub mod notify;
pub mod pki;
pub mod release;
pub mod rollback;
pub mod rollout;

// The time helpers moved to `crate::time` (they are no command); kept here until the last
// command importing them from here switches over.
pub use crate::time;
