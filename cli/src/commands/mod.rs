//! One module per command group; each owns its clap arguments and its run function.

pub mod keys;
pub mod pki;
