//! `/api/v1` request and response bodies.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Paths of the agent-facing routes, so that agent and control plane cannot drift.
pub mod paths {
    /// `GET` desired generation of machine `id`.
    pub fn desired_generation(id: &str) -> String {
        format!("/api/v1/machines/{id}/desired-generation")
    }
    /// `POST` a report for machine `id`.
    pub fn report(id: &str) -> String {
        format!("/api/v1/machines/{id}/report")
    }
}

/// The result of one health check, internally tagged by `status` as in v0.1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HealthCheckResult {
    /// The check passed.
    Pass {
        /// Name of the check (unit name, URL or the command's name).
        check_name: String,
        /// How long the check took.
        duration_ms: u64,
    },
    /// The check failed.
    Fail {
        /// Name of the check (unit name, URL or the command's name).
        check_name: String,
        /// How long the check took.
        duration_ms: u64,
        /// Why it failed.
        message: String,
    },
}

impl HealthCheckResult {
    /// The check's name.
    pub fn check_name(&self) -> &str {
        match self {
            HealthCheckResult::Pass { check_name, .. }
            | HealthCheckResult::Fail { check_name, .. } => check_name,
        }
    }
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        matches!(self, HealthCheckResult::Pass { .. })
    }
}

/// Results of one run of all health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// One result per check.
    pub results: Vec<HealthCheckResult>,
    /// True when every check passed.
    pub all_passed: bool,
    /// When the agent ran the checks (RFC 3339): the oldest measurement time among `results`, so
    /// a cached result keeps its own time. The control plane counts a pass for a rollout batch only
    /// when this lies after the batch started; "" means unknown (counted as measured on arrival).
    #[serde(default)]
    pub timestamp: String,
}

/// What the agent's `switch-to-configuration` did, on the report that follows a switch.
/// (Added after v0.1.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchReport {
    /// The generation switched to.
    pub path: String,
    /// switch, boot or test.
    pub activation: String,
    /// switched, failed_units (exit status 4), switched_with_errors (another non-zero status
    /// after activating), pending_reboot (boot), not_switched (failed before activating).
    pub outcome: String,
    /// The exit status, when the agent could read one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How many units failed, when the switch's output said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_units: Option<u32>,
}

/// `POST /api/v1/machines/{id}/report`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Must equal the `{id}` path segment and the client certificate's CN.
    pub machine_id: String,
    /// The system store path the machine runs now (`readlink /run/current-system`), or "".
    pub current_generation: String,
    /// Whether the last action succeeded.
    pub success: bool,
    /// What happened ("up-to-date", "deployed", "health-check", "rolled back: …").
    #[serde(default)]
    pub message: String,
    /// When the agent produced the report (RFC 3339); informational only.
    #[serde(default)]
    pub timestamp: String,
    /// The machine's declared tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Health check results, when the report carries them.
    #[serde(default)]
    pub health: Option<HealthReport>,
    /// The agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Set when the agent applied this path, it failed, and the agent switched back.
    /// The control plane quarantines the path for this machine. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
    /// True when the agent runs in dry-run mode and applies nothing. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What the switch just made did (set on the report of a deploy or rollback, and on every
    /// report while a boot activation waits for a reboot). (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchReport>,
    /// Which of `kernel`, `initrd`, `systemd` of the booted system (`/run/booted-system`) differ
    /// from the running generation's: a reboot is needed for them to take effect. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_needed: Vec<String>,
}

/// `GET /api/v1/machines/{id}/desired-generation` (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredGeneration {
    /// The system store path the machine should run.
    pub hash: String,
    /// Where to fetch it from, if not the agent's own cache.
    pub cache_url: Option<String>,
    /// Suggested poll interval in seconds while a rollout involves the machine.
    pub poll_hint: Option<u64>,
    /// True when this machine already failed this path: do not apply it again. (Added after v0.1.)
    #[serde(default)]
    pub quarantined: bool,
    /// How to activate it: switch (absent: the default), boot or test. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// The sequence number of the event that last decided this desired generation (set, or its
    /// quarantine cleared by a resume or an operator): an agent's local quarantine of the path
    /// ends when this moves on. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_seq: Option<u64>,
}

/// One machine as listed by `GET /api/v1/machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStatus {
    /// Machine id.
    pub machine_id: String,
    /// Path from the last report, or "".
    pub current_generation: String,
    /// Desired path, if any.
    pub desired_generation: Option<String>,
    /// Agent version from the last report, or "".
    pub agent_version: String,
    /// "ok", "error" or "unknown".
    pub system_state: String,
    /// From the last report.
    pub uptime_seconds: u64,
    /// RFC 3339 time of the last report.
    pub last_report: Option<String>,
    /// pending, provisioning, active, maintenance or decommissioned.
    pub lifecycle: String,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Seconds since the last report, at the time of the request.
    pub seconds_since_last_report: Option<u64>,
    /// Latest health: "healthy", "unhealthy" or "unknown". (Added after v0.1.)
    #[serde(default)]
    pub health: String,
    /// Paths this machine will not apply again. (Added after v0.1.)
    #[serde(default)]
    pub quarantined: Vec<String>,
    /// Booted kernel, initrd or systemd that differ from the running generation's (empty: no
    /// reboot needed). (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_needed: Vec<String>,
    /// What its last reported switch did. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switch: Option<SwitchReport>,
}

/// `POST /api/v1/machines/{id}/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Lifecycle to register with (default "active").
    #[serde(default)]
    pub lifecycle: Option<String>,
    /// Tags to set.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Response of register (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Machine id.
    pub machine_id: String,
    /// Its lifecycle now.
    pub lifecycle: String,
}

/// `PATCH /api/v1/machines/{id}/lifecycle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRequest {
    /// Target lifecycle.
    pub lifecycle: String,
}

/// `POST /api/v1/machines/{id}/notify-deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyDeployRequest {
    /// The path that was deployed out of band (SSH deploy or rollback).
    pub store_path: String,
}

/// `POST /api/v1/keys/bootstrap` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRequest {
    /// Name of the first admin key ("admin" when empty).
    #[serde(default)]
    pub name: Option<String>,
}

/// A freshly minted API key (bootstrap or key create). The secret is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    /// The secret, `nfk-` followed by 64 hex digits.
    pub key: String,
    /// Key name.
    pub name: String,
    /// readonly, deploy or admin.
    pub role: String,
}

/// `POST /api/v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKeyRequest {
    /// Unique key name.
    pub name: String,
    /// readonly, deploy or admin.
    pub role: String,
}

/// One key as listed by `GET /api/v1/keys` (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// Key name.
    pub name: String,
    /// Role.
    pub role: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339 revocation time, if revoked.
    pub revoked_at: Option<String>,
}

/// One host of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// Machine id.
    pub hostname: String,
    /// The host's system toplevel.
    pub store_path: String,
    /// e.g. x86_64-linux.
    #[serde(default)]
    pub platform: String,
    /// Tags the host declares.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `POST /api/v1/releases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReleaseRequest {
    /// Flake the release was built from.
    #[serde(default)]
    pub flake_ref: Option<String>,
    /// Its revision.
    #[serde(default)]
    pub flake_rev: Option<String>,
    /// Binary cache holding the closures.
    #[serde(default)]
    pub cache_url: Option<String>,
    /// One entry per host.
    pub entries: Vec<ReleaseEntry>,
}

/// Response of release create (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReleaseResponse {
    /// `rel-…`.
    pub id: String,
    /// Number of entries.
    pub host_count: usize,
}

/// A release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// `rel-…`.
    pub id: String,
    /// Flake the release was built from.
    pub flake_ref: Option<String>,
    /// Its revision.
    pub flake_rev: Option<String>,
    /// Binary cache holding the closures.
    pub cache_url: Option<String>,
    /// Number of entries.
    pub host_count: usize,
    /// Entries, sorted by hostname.
    pub entries: Vec<ReleaseEntry>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
}

/// One changed host of a release diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDiffChange {
    /// Machine id.
    pub hostname: String,
    /// Path in the first release.
    pub old_store_path: String,
    /// Path in the second release.
    pub new_store_path: String,
}

/// `GET /api/v1/releases/{a}/diff/{b}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDiff {
    /// Hosts only in b.
    pub added: Vec<String>,
    /// Hosts only in a.
    pub removed: Vec<String>,
    /// Hosts in both with different paths.
    pub changed: Vec<ReleaseDiffChange>,
    /// Hosts in both with the same path.
    pub unchanged: Vec<String>,
}

/// Rollout target: tags (all must match) or hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutTarget {
    /// Machines carrying every one of these tags.
    Tags(Vec<String>),
    /// These machines.
    Hosts(Vec<String>),
}

/// `POST /api/v1/rollouts` and `POST /api/v1/rollouts/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRolloutRequest {
    /// The release to roll out.
    pub release_id: String,
    /// Overrides the release's cache URL.
    #[serde(default)]
    pub cache_url: Option<String>,
    /// canary, staged or all_at_once.
    pub strategy: String,
    /// For staged: sizes like "1", "25%", "100%".
    #[serde(default)]
    pub batch_sizes: Option<Vec<String>>,
    /// Unhealthy machines tolerated per batch: "N" or "P%" (default "0").
    #[serde(default)]
    pub failure_threshold: Option<String>,
    /// pause (default) or revert.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Seconds a batch may wait for health (default 300).
    #[serde(default)]
    pub health_timeout: Option<u64>,
    /// Which machines.
    pub target: RolloutTarget,
    /// Seed of the deterministic machine order; chosen by the server when absent. (Added after v0.1.)
    #[serde(default)]
    pub seed: Option<u64>,
    /// How agents activate the release: switch (default), boot or test. (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// A switch whose units failed to start (exit status 4) does not make its machine unhealthy
    /// (default false: it does). (Added after v0.1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_failed_units: Option<bool>,
}

/// One planned batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// 0-based.
    pub batch_index: usize,
    /// Machines, in plan order.
    pub machine_ids: Vec<String>,
    /// Batch status.
    pub status: String,
}

/// Response of rollout create (201) and plan (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRolloutResponse {
    /// `r-…` (for a plan, the id it would get).
    pub rollout_id: String,
    /// The batches.
    pub batches: Vec<BatchSummary>,
    /// Machines in all batches.
    pub total_machines: usize,
    /// The seed that ordered the machines. (Added after v0.1.)
    #[serde(default)]
    pub seed: u64,
}

/// Health of one machine within a batch, as measured from its reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineHealth {
    /// No deciding report yet.
    Pending,
    /// A passing health report on the release path arrived after the batch started.
    Healthy,
    /// Failed, with the reason.
    Unhealthy(String),
}

/// One batch of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDetail {
    /// 0-based.
    pub batch_index: usize,
    /// Machines.
    pub machine_ids: Vec<String>,
    /// pending, deploying, waiting_health, succeeded or failed.
    pub status: String,
    /// Per-machine health, measured.
    pub machine_health: BTreeMap<String, MachineHealth>,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// The generation each machine ran before the rollout touched it (null: never reported). (Added after v0.1.)
    #[serde(default)]
    pub previous_generations: BTreeMap<String, Option<String>>,
}

/// One entry of a rollout's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// The log sequence number.
    pub id: u64,
    /// The rollout.
    pub rollout_id: String,
    /// status_change, batch_started, batch_completed, batch_failed, …
    pub event_type: String,
    /// Compact JSON text, as in v0.1.
    pub detail: String,
    /// Who caused it.
    pub actor: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `GET /api/v1/rollouts/{id}`; the list omits `events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDetail {
    /// `r-…`.
    pub id: String,
    /// running, paused, completed, failed, cancelled or reverted.
    pub status: String,
    /// canary, staged or all_at_once.
    pub strategy: String,
    /// The release.
    pub release_id: String,
    /// pause or revert.
    pub on_failure: String,
    /// "N" or "P%".
    pub failure_threshold: String,
    /// Seconds.
    pub health_timeout: u64,
    /// The batches.
    pub batches: Vec<BatchDetail>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Who created it.
    pub created_by: String,
    /// Timeline (empty in lists).
    #[serde(default)]
    pub events: Vec<RolloutEvent>,
    /// Why the rollout is paused, failed or reverted. (Added after v0.1.)
    #[serde(default)]
    pub reason: Option<String>,
    /// switch, boot or test. (Added after v0.1.)
    #[serde(default = "default_activation")]
    pub activation: String,
    /// Whether failed units (exit status 4) are tolerated. (Added after v0.1.)
    #[serde(default)]
    pub allow_failed_units: bool,
}

fn default_activation() -> String {
    "switch".into()
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log sequence number.
    pub id: u64,
    /// RFC 3339.
    pub timestamp: String,
    /// `apikey:<name>`, `machine:<id>`, `executor`, `system:bootstrap`.
    pub actor: String,
    /// e.g. `rollout.created`.
    pub action: String,
    /// What it acted on.
    pub target: String,
    /// Free text.
    pub detail: String,
}

/// One raw event as served by `GET /api/v1/events` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number, from 1, gap-free.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// RFC 3339.
    pub at: String,
    /// Who caused it.
    pub actor: String,
    /// e.g. `machine:web-01`, `rollout:r-…`.
    pub stream: String,
    /// Event kind, e.g. `BatchFailed`.
    pub kind: String,
    /// The event's fields; a SHA-256 among them (`ApiKeyCreated`'s `hash`) as 64 lowercase hex
    /// digits (control planes before 0.2 sent 32 numbers).
    pub data: serde_json::Value,
    /// Hex SHA-256 of the previous record.
    pub prev_hash: String,
}

/// `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// True when the projections include every event in the log.
    pub ready: bool,
    /// Last sequence number in the log.
    pub log_seq: u64,
    /// Last sequence number applied to the projections.
    pub applied_seq: u64,
}

/// An error body: every 4xx and 5xx carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and, where possible, what to do.
    pub error: String,
}

/// The agent's health check configuration file (`/etc/nixfleet/health-checks.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChecksConfig {
    /// systemd unit checks.
    #[serde(default)]
    pub systemd: Vec<SystemdCheck>,
    /// HTTP checks.
    #[serde(default)]
    pub http: Vec<HttpCheck>,
    /// Command checks.
    #[serde(default)]
    pub command: Vec<CommandCheck>,
}

/// Units that must be active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdCheck {
    /// Unit names.
    pub units: Vec<String>,
    /// Seconds between runs (default: the agent's health interval).
    #[serde(default)]
    pub interval: Option<u64>,
}

/// An HTTP GET that must answer with the expected status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    /// URL to GET.
    pub url: String,
    /// Seconds between runs.
    #[serde(default)]
    pub interval: Option<u64>,
    /// Seconds before giving up (default 3).
    #[serde(default = "default_http_timeout")]
    pub timeout: u64,
    /// Status that passes (default 200).
    #[serde(default = "default_status", alias = "expectedStatus")]
    pub expected_status: u16,
}

/// A command run by `/bin/sh -c` that must exit 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandCheck {
    /// Check name.
    pub name: String,
    /// Shell command.
    pub command: String,
    /// Seconds between runs.
    #[serde(default)]
    pub interval: Option<u64>,
    /// Seconds before the command is killed (default 5).
    #[serde(default = "default_command_timeout")]
    pub timeout: u64,
}

fn default_http_timeout() -> u64 {
    3
}
fn default_command_timeout() -> u64 {
    5
}
fn default_status() -> u16 {
    200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_results_are_tagged_by_status_as_in_v0_1() {
        let pass = HealthCheckResult::Pass {
            check_name: "nginx".into(),
            duration_ms: 3,
        };
        let json = serde_json::to_string(&pass).expect("serialize");
        assert_eq!(
            json,
            r#"{"status":"pass","check_name":"nginx","duration_ms":3}"#
        );
        let fail: HealthCheckResult = serde_json::from_str(
            r#"{"status":"fail","check_name":"x","duration_ms":1,"message":"boom"}"#,
        )
        .expect("parse");
        assert!(!fail.passed());
    }

    #[test]
    fn a_v0_1_report_without_new_fields_still_parses() {
        let r: Report = serde_json::from_str(
            r#"{"machine_id":"web-01","current_generation":"/nix/store/x","success":true,"message":"up-to-date",
               "timestamp":"2026-01-01T00:00:00Z","tags":["web"],"health":null,"agent_version":"0.1.1","uptime_seconds":5}"#,
        )
        .expect("parse");
        assert_eq!(r.rolled_back_from, None);
        assert!(!r.dry_run);
    }

    #[test]
    fn targets_serialize_as_v0_1_objects() {
        let t = RolloutTarget::Tags(vec!["web".into()]);
        assert_eq!(
            serde_json::to_string(&t).expect("ser"),
            r#"{"tags":["web"]}"#
        );
    }

    #[test]
    fn health_config_accepts_the_camel_case_status_of_the_module() {
        let c: HealthChecksConfig = serde_json::from_str(
            r#"{"http":[{"url":"http://localhost/health","expectedStatus":204}]}"#,
        )
        .expect("parse");
        assert_eq!(c.http[0].expected_status, 204);
        assert_eq!(c.http[0].timeout, 3);
    }
}
