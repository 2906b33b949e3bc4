//! `nixfleet keys`: API keys of the control plane (create, list, revoke) and the local key store.

use crate::error::Result;
use crate::output;
use crate::settings::Settings;
use clap::Subcommand;

/// `nixfleet keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Save an existing key for the control plane URL, without contacting it.
    Save {
        /// The key (nfk-…).
        key: String,
    },
}

/// Runs `nixfleet keys …`.
pub fn run(settings: &Settings, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Save { key } => {
            let path = settings.save_api_key(&key)?;
            output::line(format!(
                "Saved key for {} to {}",
                settings.control_plane_url,
                path.display()
            ))
        }
    }
}
