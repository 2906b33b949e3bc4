//! `nixfleet bootstrap`: mint the first admin key of a fresh control plane and save it.
//!
//! The bootstrap route works once; afterwards it answers 409 and this command exits non-zero
//! with the server's message, so a script can never silently replace the first key.

use crate::client::Client;
use crate::error::Result;
use crate::output;
use crate::settings::Settings;
use clap::Args;
use nixfleet_proto::api::v1::{ApiKeyCreated, BootstrapRequest};

/// `nixfleet bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Name of the first admin key.
    #[arg(long, default_value = "admin")]
    pub name: String,
    /// Print the key but do not save it in the credentials file.
    #[arg(long)]
    pub no_save: bool,
}

/// Asks a fresh control plane for its first admin key (`POST /api/v1/keys/bootstrap`).
pub fn mint(client: &Client, name: &str) -> Result<ApiKeyCreated> {
    client.post(
        "/api/v1/keys/bootstrap",
        &BootstrapRequest {
            name: Some(name.to_string()),
        },
    )
}

/// Runs `nixfleet bootstrap`.
pub fn run(settings: &Settings, args: BootstrapArgs) -> Result<()> {
    let created = mint(&Client::new(settings)?, &args.name)?;
    let saved = if args.no_save {
        None
    } else {
        Some(settings.save_api_key(&created.key)?)
    };
    if settings.json {
        output::json(&serde_json::json!({
            "key": created.key, "name": created.name, "role": created.role,
            "saved_to": saved.as_ref().map(|p| p.display().to_string()),
        }))
    } else {
        output::line(&created.key)?;
        match saved {
            Some(p) => eprintln!(
                "Saved {} key {:?} for {} to {}",
                created.role,
                created.name,
                settings.control_plane_url,
                p.display()
            ),
            None => eprintln!("Not saved; keep the key: it is shown only once"),
        }
        Ok(())
    }
}
