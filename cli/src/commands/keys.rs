//! `nixfleet keys`: API keys of the control plane (create, list, revoke) and the local key store.

use crate::client::{path_id, Client};
use crate::error::{CliError, Result};
use crate::output::{self, or_dash, Table};
use crate::settings::Settings;
use crate::time;
use clap::Subcommand;
use nixfleet_ids::KeyName;
use nixfleet_proto::api::v1::{ApiKeyCreated, ApiKeyInfo, CreateKeyRequest};

/// `nixfleet keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key (the secret is printed once).
    Create {
        /// Unique key name.
        #[arg(long)]
        name: String,
        /// readonly, deploy or admin.
        #[arg(long, default_value = "readonly")]
        role: String,
        /// Also save it as this machine's key for the control plane URL.
        #[arg(long)]
        save: bool,
    },
    /// List keys (names and roles; never secrets).
    List,
    /// Revoke a key by name; requests with it are refused from then on.
    Revoke {
        /// The key's name.
        name: String,
    },
    /// Save an existing key for the control plane URL, without contacting it.
    Save {
        /// The key (nfk-…).
        key: String,
    },
}

const ROLES: [&str; 3] = ["readonly", "deploy", "admin"];

/// Runs `nixfleet keys …`.
pub fn run(settings: &Settings, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Save { key } => {
            if !key.starts_with("nfk-") {
                return Err(CliError::usage(
                    "API keys start with nfk-; paste the whole key",
                ));
            }
            let path = settings.save_api_key(&key)?;
            if settings.json {
                return output::json(&serde_json::json!({
                    "control_plane_url": settings.control_plane_url,
                    "saved_to": path.display().to_string(),
                }));
            }
            output::line(format!(
                "Saved key for {} to {}",
                settings.control_plane_url,
                path.display()
            ))
        }
        KeysCmd::Create { name, role, save } => {
            path_id("--name", &name, KeyName::parse)?;
            if !ROLES.contains(&role.as_str()) {
                return Err(CliError::usage(format!(
                    "--role {role:?}: use one of {}",
                    ROLES.join(", ")
                )));
            }
            let created: ApiKeyCreated =
                Client::new(settings)?.post("/api/v1/keys", &CreateKeyRequest { name, role })?;
            let saved = if save {
                Some(settings.save_api_key(&created.key)?)
            } else {
                None
            };
            if settings.json {
                return output::json(&created);
            }
            output::line(&created.key)?;
            eprintln!(
                "Created {} key {:?}{}",
                created.role,
                created.name,
                match saved {
                    Some(p) => format!("; saved to {}", p.display()),
                    None => "; it is shown only once".to_string(),
                }
            );
            Ok(())
        }
        KeysCmd::List => {
            let keys: Vec<ApiKeyInfo> = Client::new(settings)?.get("/api/v1/keys")?;
            if settings.json {
                return output::json(&keys);
            }
            let mut t = Table::new(&["NAME", "ROLE", "CREATED", "BY", "REVOKED"]);
            for k in &keys {
                t.row(vec![
                    k.name.clone(),
                    k.role.clone(),
                    time::short(&k.created_at),
                    k.created_by.clone(),
                    or_dash(k.revoked_at.as_deref().map(time::short).as_deref()),
                ]);
            }
            t.print()
        }
        KeysCmd::Revoke { name } => {
            let name = path_id("key name", &name, KeyName::parse)?;
            Client::new(settings)?.delete(&format!("/api/v1/keys/{name}"))?;
            if settings.json {
                output::json(&serde_json::json!({ "revoked": name }))
            } else {
                output::line(format!("Revoked key {name}"))
            }
        }
    }
}
