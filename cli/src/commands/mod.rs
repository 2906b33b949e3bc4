//! One module per command group; each owns its clap arguments and its run function.

pub mod backup;
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

/// `--ssh-opts`, shared by `deploy --ssh`, `release create --copy` and `rollback --ssh`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SshOpts {
    /// Extra ssh options, as in NIX_SSHOPTS (e.g. "-i key -p 2222") [default: $NIX_SSHOPTS].
    #[arg(
        long = "ssh-opts",
        env = "NIX_SSHOPTS",
        value_name = "OPTS",
        allow_hyphen_values = true
    )]
    pub ssh_opts: Option<String>,
}

impl SshOpts {
    /// The options as one string ("" when none are given).
    pub fn as_str(&self) -> &str {
        self.ssh_opts.as_deref().unwrap_or("")
    }
}
