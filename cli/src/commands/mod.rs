//! One module per command group; each owns its clap arguments and its run function.

pub mod deploy;
pub mod keys;
pub mod notify;
pub mod pki;
pub mod rollback;
