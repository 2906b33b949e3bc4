//! `nixfleet machines` and `nixfleet status`: the fleet as the control plane sees it.

use crate::client::{path_id, query, Client};
use crate::error::{CliError, Result};
use crate::output::{self, or_dash, short_path, Table};
use crate::settings::Settings;
use crate::time;
use clap::{Args, Subcommand};
use nixfleet_ids::MachineId;
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::{
    LifecycleRequest, MachineStatus, NotifyDeployRequest, RegisterRequest, RegisterResponse,
};
use serde::Serialize;
use std::time::Duration;

/// Lifecycle states a machine can be put in.
pub const LIFECYCLES: [&str; 5] = [
    "pending",
    "provisioning",
    "active",
    "maintenance",
    "decommissioned",
];

/// `nixfleet machines …`.
#[derive(Debug, Subcommand)]
pub enum MachinesCmd {
    /// List machines, optionally only those carrying all of --tags.
    List {
        /// Comma-separated tags; a machine must carry every one.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Register a machine ahead of its first report.
    Register {
        /// Machine id (the CN of its client certificate).
        id: String,
        /// Comma-separated tags.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Initial lifecycle.
        #[arg(long, default_value = "active")]
        lifecycle: String,
    },
    /// Move a machine through its lifecycle (e.g. active → maintenance).
    SetLifecycle {
        /// Machine id.
        id: String,
        /// pending, provisioning, active, maintenance or decommissioned.
        state: String,
    },
    /// Remove a machine's desired generation; its agent stops converging.
    ClearDesired {
        /// Machine id.
        id: String,
    },
    /// Record that a machine was switched out of band (what `deploy --ssh` does).
    NotifyDeploy {
        /// Machine id.
        id: String,
        /// The system store path it now runs.
        store_path: String,
    },
}

fn check_lifecycle(state: &str) -> Result<()> {
    if LIFECYCLES.contains(&state) {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "lifecycle {state:?}: use one of {}",
            LIFECYCLES.join(", ")
        )))
    }
}

/// `GET /api/v1/machines[?tag=…]`.
pub fn fetch(client: &Client, tags: &[String]) -> Result<Vec<MachineStatus>> {
    let pairs: Vec<(&str, String)> = tags
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| ("tag", t.clone()))
        .collect();
    let mut machines: Vec<MachineStatus> =
        client.get(&format!("/api/v1/machines{}", query(&pairs)))?;
    machines.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
    Ok(machines)
}

/// Runs `nixfleet machines …`.
pub fn run(settings: &Settings, cmd: MachinesCmd) -> Result<()> {
    let client = Client::new(settings)?;
    match cmd {
        MachinesCmd::List { tags } => {
            let machines = fetch(&client, &tags)?;
            if settings.json {
                return output::json(&machines);
            }
            let mut t = Table::new(&["ID", "LIFECYCLE", "STATE", "HEALTH", "TAGS", "LAST SEEN"]);
            for m in &machines {
                t.row(vec![
                    m.machine_id.clone(),
                    m.lifecycle.clone(),
                    with_notes(&m.system_state, &notes(m)),
                    or_dash(Some(&m.health)),
                    or_dash(Some(&m.tags.join(","))),
                    m.seconds_since_last_report
                        .map(|s| format!("{} ago", time::age(s)))
                        .unwrap_or_else(|| "never".into()),
                ]);
            }
            t.print()?;
            output::line(format!("{} machine(s)", machines.len()))
        }
        MachinesCmd::Register {
            id,
            tags,
            lifecycle,
        } => {
            let id = path_id("machine id", &id, MachineId::parse)?;
            check_lifecycle(&lifecycle)?;
            let resp: RegisterResponse = client.post(
                &format!("/api/v1/machines/{id}/register"),
                &RegisterRequest {
                    lifecycle: Some(lifecycle),
                    tags,
                },
            )?;
            if settings.json {
                return output::json(&resp);
            }
            output::line(format!(
                "Registered {} ({})",
                resp.machine_id, resp.lifecycle
            ))
        }
        MachinesCmd::SetLifecycle { id, state } => {
            let id = path_id("machine id", &id, MachineId::parse)?;
            check_lifecycle(&state)?;
            client.patch_unit(
                &format!("/api/v1/machines/{id}/lifecycle"),
                &LifecycleRequest {
                    lifecycle: state.clone(),
                },
            )?;
            done(
                settings,
                serde_json::json!({ "machine_id": id, "lifecycle": state }),
                format!("{id} is now {state}"),
            )
        }
        MachinesCmd::ClearDesired { id } => {
            let id = path_id("machine id", &id, MachineId::parse)?;
            client.delete(&format!("/api/v1/machines/{id}/desired-generation"))?;
            done(
                settings,
                serde_json::json!({ "machine_id": id, "desired_generation": null }),
                format!("Cleared the desired generation of {id}"),
            )
        }
        MachinesCmd::NotifyDeploy { id, store_path } => {
            let id = path_id("machine id", &id, MachineId::parse)?;
            let path = StorePath::try_from(store_path.as_str())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            client.post_unit(
                &format!("/api/v1/machines/{id}/notify-deploy"),
                Some(&NotifyDeployRequest {
                    store_path: path.to_string(),
                }),
            )?;
            done(
                settings,
                serde_json::json!({ "machine_id": id, "store_path": path.to_string() }),
                format!("Recorded {path} for {id}"),
            )
        }
    }
}

fn done(settings: &Settings, json: serde_json::Value, text: String) -> Result<()> {
    if settings.json {
        output::json(&json)
    } else {
        output::line(text)
    }
}

/// `nixfleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Seconds without a report after which a machine is shown as stale.
    #[arg(long, default_value_t = 600)]
    pub stale_threshold: u64,
    /// Redraw every --interval seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Exit 1 unless every machine with a desired generation runs it.
    #[arg(long)]
    pub check: bool,
}

/// Whether a machine runs what the control plane wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Current == desired.
    InSync,
    /// A desired generation is set and differs.
    Outdated,
    /// Nothing desired.
    NoDesired,
}

/// One row of `status`.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    /// Machine id.
    pub machine_id: String,
    /// ok / error / unknown.
    pub state: String,
    /// No report for longer than the threshold.
    pub stale: bool,
    /// Lifecycle.
    pub lifecycle: String,
    /// Latest health: healthy, unhealthy or unknown.
    pub health: String,
    /// Sync state.
    pub sync: SyncState,
    /// Current generation.
    pub current: String,
    /// Desired generation.
    pub desired: Option<String>,
    /// Seconds since the last report.
    pub seconds_since_last_report: Option<u64>,
    /// Booted kernel, initrd or systemd that differ from the running generation's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reboot_needed: Vec<String>,
    /// What the machine's last switch left to know: "switched, 3 units failed", "pending reboot", …
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the state column adds to ok/error: a reboot needed for the booted kernel, initrd or
/// systemd; a boot activation pending a reboot; a switch to the running generation that exited
/// non-zero.
pub fn notes(m: &MachineStatus) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = &m.last_switch {
        let on_current = s.path == m.current_generation;
        match s.outcome.as_str() {
            "failed_units" if on_current => out.push(format!(
                "switched, {} units failed",
                s.failed_units
                    .map_or_else(|| "some".to_owned(), |n| n.to_string())
            )),
            "switched_with_errors" if on_current => out.push(match s.exit_code {
                Some(c) => format!("switched with errors (exit status {c})"),
                None => "switched with errors".to_owned(),
            }),
            "pending_reboot" if !on_current => out.push("pending reboot".to_owned()),
            _ => {}
        }
    }
    if !m.reboot_needed.is_empty() {
        out.push(format!("reboot needed ({})", m.reboot_needed.join(", ")));
    }
    out
}

fn with_notes(state: &str, notes: &[String]) -> String {
    if notes.is_empty() {
        state.to_owned()
    } else {
        format!("{state}; {}", notes.join("; "))
    }
}

/// Classifies one machine.
pub fn status_row(m: &MachineStatus, stale_threshold: u64) -> StatusRow {
    let sync = match &m.desired_generation {
        None => SyncState::NoDesired,
        Some(d) if *d == m.current_generation => SyncState::InSync,
        Some(_) => SyncState::Outdated,
    };
    StatusRow {
        machine_id: m.machine_id.clone(),
        state: m.system_state.clone(),
        stale: m
            .seconds_since_last_report
            .is_none_or(|s| s > stale_threshold),
        lifecycle: m.lifecycle.clone(),
        health: m.health.clone(),
        sync,
        current: m.current_generation.clone(),
        desired: m.desired_generation.clone(),
        seconds_since_last_report: m.seconds_since_last_report,
        reboot_needed: m.reboot_needed.clone(),
        notes: notes(m),
    }
}

/// Runs `nixfleet status`.
pub fn status(settings: &Settings, args: StatusArgs) -> Result<()> {
    let client = Client::new(settings)?;
    loop {
        let rows: Vec<StatusRow> = fetch(&client, &[])?
            .iter()
            .map(|m| status_row(m, args.stale_threshold))
            .collect();
        let with_desired = rows
            .iter()
            .filter(|r| r.sync != SyncState::NoDesired)
            .count();
        let in_sync = rows.iter().filter(|r| r.sync == SyncState::InSync).count();
        if settings.json {
            output::json(&rows)?;
        } else {
            if args.watch {
                // Clear the screen and home the cursor for the redraw.
                output::line("\x1b[2J\x1b[H")?;
            }
            let mut t = Table::new(&[
                "HOST",
                "STATE",
                "HEALTH",
                "LIFECYCLE",
                "SYNC",
                "CURRENT",
                "DESIRED",
                "LAST SEEN",
            ]);
            for r in &rows {
                t.row(vec![
                    r.machine_id.clone(),
                    with_notes(
                        &if r.stale {
                            format!("{} (stale)", r.state)
                        } else {
                            r.state.clone()
                        },
                        &r.notes,
                    ),
                    or_dash(Some(&r.health)),
                    r.lifecycle.clone(),
                    match r.sync {
                        SyncState::InSync => "in sync".into(),
                        SyncState::Outdated => "outdated".into(),
                        SyncState::NoDesired => "—".into(),
                    },
                    if r.current.is_empty() {
                        "—".into()
                    } else {
                        short_path(&r.current)
                    },
                    r.desired
                        .as_deref()
                        .map(short_path)
                        .unwrap_or_else(|| "—".into()),
                    r.seconds_since_last_report
                        .map(|s| format!("{} ago", time::age(s)))
                        .unwrap_or_else(|| "never".into()),
                ]);
            }
            t.print()?;
            output::line(format!(
                "{in_sync}/{with_desired} hosts in sync ({} machines)",
                rows.len()
            ))?;
        }
        if !args.watch {
            if args.check && in_sync < with_desired {
                return Err(CliError::failed(format!(
                    "{} of {with_desired} machines do not run their desired generation yet",
                    with_desired - in_sync
                )));
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
    }
}
