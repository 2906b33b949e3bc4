//! `nixfleet rollback --ssh`: switch one machine back, and make the choice survive a reboot.
//!
//! The target is `--generation P` (which must already be in the machine's store) or the system
//! profile's generation just before the current one, resolved on the machine itself. The
//! profile is set to it (`nix-env --set`, a new generation; nothing is deleted) before its
//! `switch-to-configuration switch` (or `boot` with `--activation boot`), which also makes it the
//! boot default, unlike v0.1 which left the boot default on the newer system.

use crate::commands::notify;
use crate::commands::SshOpts;
use crate::error::{CliError, Result};
use crate::nix;
use crate::output;
use crate::settings::Settings;
use crate::ssh::{previous_generation, Activation, Remote, SshTarget, StepError};
use clap::Args;
use nixfleet_ids::StorePath;

/// `nixfleet rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The machine (its id; also the default ssh host).
    #[arg(long)]
    pub host: String,
    /// Roll back over SSH (the only mode; a fleet-wide rollback is a rollout of an older release).
    #[arg(long)]
    pub ssh: bool,
    /// SSH destination [default: root@<host>].
    #[arg(long)]
    pub target: Option<String>,
    /// The system store path to switch to [default: the previous system profile generation].
    #[arg(long, value_name = "STORE_PATH")]
    pub generation: Option<String>,
    /// Extra ssh options (`--ssh-opts`, default $NIX_SSHOPTS).
    #[command(flatten)]
    pub ssh_opts: SshOpts,
    /// switch (now and at boot) or boot (at the next boot only).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Activation::Switch)]
    pub activation: Activation,
}

fn step(e: StepError) -> CliError {
    CliError::failed(format!("rollback failed at {}: {}", e.step, e.message))
}

/// Runs `nixfleet rollback`.
pub fn run(settings: &Settings, args: RollbackArgs) -> Result<()> {
    if !args.ssh {
        return Err(CliError::usage(
            "rollback works over SSH: pass --ssh; to roll the whole fleet back, create a rollout of the previous release",
        ));
    }
    nix::check_host_name(&args.host).map_err(|m| CliError::usage(format!("--host: {m}")))?;
    if args.activation == Activation::Test {
        return Err(CliError::usage(
            "rollback --activation test would leave the boot default on the newer system; use switch or boot",
        ));
    }
    if let (Some(path), true) = (crate::oplog::start("rollback"), settings.verbose >= 1) {
        eprintln!("oplog: {}", path.display());
    }
    let generation = args
        .generation
        .as_deref()
        .map(|g| StorePath::try_from(g).map_err(|m| CliError::usage(format!("--generation: {m}"))))
        .transpose()?;
    let target = match &args.target {
        Some(t) => SshTarget::parse(t),
        None => SshTarget::root_at(&args.host),
    }
    .map_err(CliError::Usage)?;
    let remote = Remote::new(target, args.ssh_opts.as_str(), settings.verbose);

    let path = match generation {
        Some(p) => p,
        None => {
            let (current, gens) = remote.generations().map_err(step)?;
            let prev = previous_generation(current, &gens).ok_or_else(|| {
                CliError::failed(format!(
                    "{} has no system generation before {current}; pass --generation /nix/store/… explicitly",
                    remote.target
                ))
            })?;
            eprintln!(
                "[{}] previous generation: {} ({})",
                args.host, prev.number, prev.path
            );
            prev.path.clone()
        }
    };
    remote.activate(&path, args.activation).map_err(step)?;
    notify::notify_deploy(settings, &args.host, &path);
    if settings.json {
        output::json(&serde_json::json!({ "host": args.host, "store_path": path.to_string() }))
    } else {
        output::line(format!("Rolled back {} to {path}", args.host))
    }
}
