//! The command line: the `Commands` enum and the one `match` that runs them (the global
//! flags are [`GlobalArgs`], owned by the settings they feed).
//!
//! To add a command: add a variant to [`Commands`] (its arguments live in the command's own
//! module), and one arm in [`run`]. Nothing else needs to know.

use crate::commands;
use crate::error::Result;
use crate::settings::{GlobalArgs, Settings};
use clap::{CommandFactory, Parser, Subcommand};

/// nixfleet: roll NixOS configurations out to a fleet, batch by batch, gated on health.
#[derive(Debug, Parser)]
#[command(
    name = "nixfleet",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Commands,
}

/// Every command, in the order `--help` lists them.
///
/// To add one: a variant here (arguments in the command's own module) and an arm in [`run`].
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// See the whole product in one command: a local control plane, agents that switch real
    /// generations (dry-run agents without Nix), a canary rollout and one whose broken generation
    /// rolls back and pauses it, and their timelines (everything in --dir).
    Demo(commands::demo::DemoArgs),
    /// Mint the first admin API key of a fresh control plane and save it.
    Bootstrap(commands::bootstrap::BootstrapArgs),
    /// Fleet overview: which machines run their desired generation (in sync / outdated / stale).
    Status(commands::machines::StatusArgs),
    /// Machines: list, register, set lifecycle, clear the desired generation.
    Machines {
        #[command(subcommand)]
        cmd: commands::machines::MachinesCmd,
    },
    /// Releases: build a flake's hosts, push the closures, record host → store path.
    Release {
        #[command(subcommand)]
        cmd: commands::release::ReleaseCmd,
    },
    /// Rollouts: move machines to a release batch by batch, gated on health.
    Rollout {
        #[command(subcommand)]
        cmd: commands::rollout::RolloutCmd,
    },
    /// Deploy a flake: over SSH with --ssh (no control plane), else as a release plus a rollout.
    Deploy(Box<commands::deploy::DeployArgs>),
    /// Switch one machine back to its previous system (or --generation), over SSH.
    Rollback(commands::rollback::RollbackArgs),
    /// API keys: create, list, revoke; save one locally.
    Keys {
        #[command(subcommand)]
        cmd: commands::keys::KeysCmd,
    },
    /// The event replay tool for post-mortems (events, replay, timeline, verify, what-if), on
    /// the events API or, with --data-dir, on a data directory.
    #[command(flatten)]
    Replay(crate::replay::ReplayCmd),
    /// Back up a running control plane's event log (over the events API, or --data-dir) into a
    /// new data directory: a consistent cut, verified.
    Backup(commands::backup::BackupArgs),
    /// Restore a backup into a control plane's data directory (the control plane stopped).
    Restore(commands::backup::RestoreArgs),
    /// The event log itself: copy it between data directories and PostgreSQL.
    Log {
        #[command(subcommand)]
        cmd: commands::backup::LogCmd,
    },
    /// A fleet CA and its certificates, for hand-made fleets and tests.
    Pki {
        #[command(subcommand)]
        cmd: commands::pki::PkiCmd,
    },
    /// Show the settings this invocation would use and where each came from.
    Config,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let global = cli.global;
    // Settings are resolved only by commands that use them, so `completions` and `pki`
    // work even where .nixfleet.toml is broken.
    let settings = || Settings::resolve(&global);
    match cli.command {
        Commands::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "nixfleet", &mut buf);
            crate::output::line(String::from_utf8_lossy(&buf).trim_end())
        }
        Commands::Pki { cmd } => commands::pki::run(global.json, cmd),
        Commands::Demo(args) => commands::demo::run(global.verbose, global.json, args),
        Commands::Config => crate::output::json(&settings()?),
        Commands::Bootstrap(args) => commands::bootstrap::run(&settings()?, args),
        Commands::Status(args) => commands::machines::status(&settings()?, args),
        Commands::Machines { cmd } => commands::machines::run(&settings()?, cmd),
        Commands::Release { cmd } => commands::release::run(&settings()?, cmd),
        Commands::Rollout { cmd } => commands::rollout::run(&settings()?, cmd),
        Commands::Deploy(args) => commands::deploy::run(&settings()?, *args),
        Commands::Rollback(args) => commands::rollback::run(&settings()?, args),
        Commands::Keys { cmd } => commands::keys::run(&settings()?, cmd),
        Commands::Replay(cmd) => crate::replay::run(&global, cmd),
        Commands::Backup(args) => commands::backup::backup(&global, args),
        Commands::Restore(args) => commands::backup::restore(&global, args),
        Commands::Log { cmd } => commands::backup::log(&global, cmd),
    }
}
