//! Best-effort `notify-deploy`: tell the control plane, if one is configured, what a machine
//! now runs after an SSH deploy or rollback. Called only after a successful switch, so a failed
//! switch never leaves a desired path behind for the agent to chase.

use crate::client::Client;
use crate::settings::Settings;
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::NotifyDeployRequest;

/// Whether a control plane is configured for notifications (an API key is known).
pub fn configured(settings: &Settings) -> bool {
    settings.api_key.is_some()
}

/// Sends notify-deploy; prints a warning and carries on when it fails.
pub fn notify_deploy(settings: &Settings, host: &str, path: &StorePath) {
    if !configured(settings) {
        return;
    }
    let result = Client::new(settings).and_then(|c| {
        c.post_unit(
            &format!("/api/v1/machines/{host}/notify-deploy"),
            Some(&NotifyDeployRequest {
                store_path: path.to_string(),
            }),
        )
    });
    match result {
        Ok(()) => eprintln!("[{host}] control plane at {} told about {path}", settings.control_plane_url),
        Err(e) => eprintln!(
            "warning: [{host}] switched, but telling the control plane failed: {e}; it will learn the path from the agent's next report"
        ),
    }
}
