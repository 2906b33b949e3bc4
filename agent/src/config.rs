//! Command-line flags and environment variables, and their validation.
//!
//! Names and defaults are those of the `nixfleet-agent` section of `nixos/service-flags.json`, the
//! contract with the NixOS module. [`Args`] is what clap parses; [`Config::from_args`] checks it without
//! doing any IO and yields the [`Config`] the rest of the agent uses. Every refusal is one line.

use crate::switch::SwitchMode;
use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Longest machine id accepted (as the control plane).
pub const MACHINE_ID_LEN_MAX: usize = nixfleet_ids::ID_LEN_MAX;

/// The agent's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "nixfleet-agent",
    version,
    about = "Polls the nixfleet control plane and applies, verifies and reports this machine's system generation."
)]
pub struct Args {
    /// Control plane base URL (https://…; http:// only with --allow-insecure). Several: repeat the
    /// flag or separate them with commas; on a connection failure or a 503 the agent tries the next.
    #[arg(long, env = "NIXFLEET_CONTROL_PLANE_URL", value_delimiter = ',')]
    pub control_plane_url: Vec<String>,
    /// This machine's id (1 to 128 characters of A-Z a-z 0-9 . _ -); must equal the client certificate's CN.
    #[arg(long, env = "NIXFLEET_MACHINE_ID")]
    pub machine_id: Option<String>,
    /// Seconds between polls.
    #[arg(long, env = "NIXFLEET_POLL_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval: u64,
    /// Seconds before retrying after a failed poll.
    #[arg(long, env = "NIXFLEET_RETRY_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_interval: u64,
    /// Binary cache to fetch closures from when the control plane names none.
    #[arg(long, env = "NIXFLEET_CACHE_URL")]
    pub cache_url: Option<String>,
    /// Directory for the agent's state (the local quarantine).
    #[arg(long, env = "NIXFLEET_STATE_DIR", default_value = "/var/lib/nixfleet")]
    pub state_dir: PathBuf,
    /// Fetch but never apply; reports say so.
    #[arg(long, env = "NIXFLEET_DRY_RUN", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
    /// Allow http:// control plane URLs.
    #[arg(long, env = "NIXFLEET_ALLOW_INSECURE", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub allow_insecure: bool,
    /// PEM file of the CA(s) that sign the control plane's certificate; when given, only these are trusted.
    #[arg(long, env = "NIXFLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain) for mTLS.
    #[arg(long, env = "NIXFLEET_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "NIXFLEET_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Health check configuration (JSON).
    #[arg(
        long,
        env = "NIXFLEET_HEALTH_CONFIG",
        default_value = "/etc/nixfleet/health-checks.json"
    )]
    pub health_config: PathBuf,
    /// Default seconds between runs of a health check, and between periodic health reports.
    #[arg(long, env = "NIXFLEET_HEALTH_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_interval: u64,
    /// Comma-separated tags reported to the control plane.
    #[arg(long, env = "NIXFLEET_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Serve Prometheus metrics on this port (all addresses, plain HTTP).
    #[arg(long, env = "NIXFLEET_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// The system profile to set.
    #[arg(
        long,
        env = "NIXFLEET_PROFILE",
        default_value = "/nix/var/nix/profiles/system"
    )]
    pub profile: PathBuf,
    /// The link that names the running system.
    #[arg(
        long,
        env = "NIXFLEET_CURRENT_SYSTEM",
        default_value = "/run/current-system"
    )]
    pub current_system: PathBuf,
    /// How to run switch-to-configuration.
    #[arg(long, env = "NIXFLEET_SWITCH_MODE", value_enum, default_value_t = SwitchModeArg::Auto)]
    pub switch_mode: SwitchModeArg,
    /// Seconds a switch may take.
    #[arg(long, env = "NIXFLEET_SWITCH_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub switch_timeout: u64,
    /// Log format.
    #[arg(long, env = "NIXFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// `--switch-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SwitchModeArg {
    /// systemd-run when /run/systemd/system exists, else direct.
    Auto,
    /// Always systemd-run.
    SystemdRun,
    /// Always as a child of the agent.
    Direct,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Plain text for people.
    Human,
}

/// TLS material for the control plane connection (paths; read when the client is built).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra CA file.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key, always together.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Control plane base URLs, without a trailing slash, in the order given, without duplicates.
    pub control_plane_urls: Vec<String>,
    /// This machine.
    pub machine_id: String,
    /// Between polls.
    pub poll_interval: Duration,
    /// After a failed poll.
    pub retry_interval: Duration,
    /// Fallback cache.
    pub cache_url: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Never apply.
    pub dry_run: bool,
    /// http:// allowed.
    pub allow_insecure: bool,
    /// TLS files.
    pub tls: TlsFiles,
    /// Health check file.
    pub health_config: PathBuf,
    /// Default health interval.
    pub health_interval: Duration,
    /// Declared tags, trimmed, without empties or duplicates, in the given order.
    pub tags: Vec<String>,
    /// Metrics port.
    pub metrics_port: Option<u16>,
    /// System profile.
    pub profile: PathBuf,
    /// Current-system link.
    pub current_system: PathBuf,
    /// Resolved switch mode.
    pub switch_mode: SwitchMode,
    /// Switch deadline.
    pub switch_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

/// A refused configuration; the text is the whole message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Checks a machine id by the control plane's own rule (`nixfleet_ids::MachineId`): 1 to 128
/// characters of `[A-Za-z0-9._-]`, not starting with '.' or '-'.
pub fn validate_machine_id(id: &str) -> Result<(), ConfigError> {
    nixfleet_ids::MachineId::parse(id).map(|_| ()).map_err(|e| {
        ConfigError(format!(
            "invalid --machine-id {id:?}: it {}; use 1 to {MACHINE_ID_LEN_MAX} characters of A-Z a-z 0-9 . _ -, not starting with '.' or '-'",
            e.why
        ))
    })
}

/// Checks one control plane URL (https://, or http:// with `allow_insecure`, and a host) and returns it
/// without its trailing slash; a refusal names the URL.
pub fn validate_control_plane_url(url: &str, allow_insecure: bool) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/').to_owned();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") {
        if !allow_insecure {
            return Err(ConfigError(format!(
                "refusing insecure HTTP connection to control plane {url}: use https:// or pass --allow-insecure"
            )));
        }
    } else if !lower.starts_with("https://") {
        return Err(ConfigError(format!(
            "invalid --control-plane-url {url:?}: it must start with https://"
        )));
    }
    if url
        .split_once("://")
        .map(|x| x.1)
        .is_none_or(|rest| rest.is_empty())
    {
        return Err(ConfigError(format!(
            "invalid --control-plane-url {url:?}: no host"
        )));
    }
    Ok(url)
}

impl Config {
    /// Validates `args`. No IO: files are read later, when the client is built.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let mut control_plane_urls: Vec<String> = Vec::new();
        for url in args
            .control_plane_url
            .iter()
            .filter(|u| !u.trim().is_empty())
        {
            let url = validate_control_plane_url(url, args.allow_insecure)?;
            if !control_plane_urls.contains(&url) {
                control_plane_urls.push(url);
            }
        }
        if control_plane_urls.is_empty() {
            return Err(ConfigError(
                "missing --control-plane-url (or NIXFLEET_CONTROL_PLANE_URL)".into(),
            ));
        }
        let machine_id = args
            .machine_id
            .ok_or_else(|| ConfigError("missing --machine-id (or NIXFLEET_MACHINE_ID)".into()))?;
        validate_machine_id(&machine_id)?;
        let client = match (args.client_cert, args.client_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError(
                    "--client-cert was given without --client-key: give both or neither".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "--client-key was given without --client-cert: give both or neither".into(),
                ))
            }
        };
        let cache_url = args.cache_url.filter(|c| !c.trim().is_empty());
        if let Some(c) = &cache_url {
            crate::nix::validate_cache_url(c)
                .map_err(|e| ConfigError(format!("--cache-url: {e}")))?;
        }
        let mut tags: Vec<String> = Vec::new();
        for t in args.tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            if !tags.iter().any(|have| have == t) {
                tags.push(t.to_owned());
            }
        }
        let switch_mode = match args.switch_mode {
            SwitchModeArg::Auto => SwitchMode::detect(),
            SwitchModeArg::SystemdRun => SwitchMode::SystemdRun,
            SwitchModeArg::Direct => SwitchMode::Direct,
        };
        Ok(Config {
            control_plane_urls,
            machine_id,
            poll_interval: Duration::from_secs(args.poll_interval),
            retry_interval: Duration::from_secs(args.retry_interval),
            cache_url,
            state_dir: args.state_dir,
            dry_run: args.dry_run,
            allow_insecure: args.allow_insecure,
            tls: TlsFiles {
                ca_cert: args.ca_cert,
                client,
            },
            health_config: args.health_config,
            health_interval: Duration::from_secs(args.health_interval),
            tags,
            metrics_port: args.metrics_port,
            profile: args.profile,
            current_system: args.current_system,
            switch_mode,
            switch_timeout: Duration::from_secs(args.switch_timeout),
            log_format: args.log_format,
        })
    }
}
