//! Control-plane configuration: flags and `NIXFLEET_CP_*` variables over an optional TOML file.
//!
//! [`Config::resolve`] validates without any IO beyond reading the TOML file itself, so the NixOS
//! module can run `--check-config` in the build sandbox; the TLS setup (`api::tls`) and the engine
//! opening come later and do the IO.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line flags (each also an environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "nixfleet-control-plane",
    version,
    about = "The nixfleet control plane: event log, rollout executor and HTTPS API"
)]
pub struct Flags {
    /// Address to listen on.
    #[arg(long, env = "NIXFLEET_CP_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the event log.
    #[arg(long, env = "NIXFLEET_CP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, env = "NIXFLEET_CP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "NIXFLEET_CP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA that every client certificate must chain to.
    #[arg(long, env = "NIXFLEET_CP_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP with no client authentication (development only).
    #[arg(long, env = "NIXFLEET_CP_INSECURE")]
    pub insecure: bool,
    /// human or json.
    #[arg(long, env = "NIXFLEET_CP_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "NIXFLEET_CP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Records per archive segment: once more than this many plus 16384 (or twice this many,
    /// when smaller) records are in the embedded store, the oldest segment moves to a sealed
    /// file in `DATA_DIR/log/archive` (default 65536, at least 16).
    #[arg(long, env = "NIXFLEET_CP_LOG_SEGMENT_RECORDS")]
    pub log_segment_records: Option<u64>,
    /// Retention: report and health events older than this many days leave the sealed segments
    /// once later ones replaced them (every other event stays forever; the hash chain stays
    /// whole). Default: keep everything.
    #[arg(long, env = "NIXFLEET_CP_LOG_RETENTION_DAYS")]
    pub log_retention_days: Option<u64>,
    /// Where the event log lives: `sled` (embedded, in DATA_DIR; the default) or `postgres`
    /// (a PostgreSQL database that several control planes share; see --log-postgres-url).
    #[arg(long, env = "NIXFLEET_CP_LOG_BACKEND")]
    pub log_backend: Option<String>,
    /// The PostgreSQL connection string (`postgres://user@host:port/db` or libpq key=value) for
    /// `--log-backend postgres`; TLS with `sslmode=verify-full&sslrootcert=CA.pem`.
    #[arg(long, env = "NIXFLEET_CP_LOG_POSTGRES_URL")]
    pub log_postgres_url: Option<String>,
    /// This control plane's name among those sharing a PostgreSQL log, recorded with every
    /// record it appends and in the executor's lease (default: the host name and port).
    #[arg(long, env = "NIXFLEET_CP_ID")]
    pub cp_id: Option<String>,
    /// How long the executor's lease lasts unrenewed, in seconds, with a shared log: when the
    /// control plane running the executor dies, another takes over within about 4/3 of this
    /// (default 6).
    #[arg(long, env = "NIXFLEET_CP_EXECUTOR_LEASE_SECS")]
    pub executor_lease_secs: Option<u64>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file (all keys optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    /// See the flag.
    pub listen: Option<String>,
    /// See the flag.
    pub data_dir: Option<PathBuf>,
    /// See the flag.
    pub tls_cert: Option<PathBuf>,
    /// See the flag.
    pub tls_key: Option<PathBuf>,
    /// See the flag.
    pub client_ca: Option<PathBuf>,
    /// See the flag.
    pub insecure: Option<bool>,
    /// See the flag.
    pub log_format: Option<String>,
    /// Agents register themselves on their first authenticated report (default true).
    pub auto_register: Option<bool>,
    /// See the flag.
    pub log_segment_records: Option<u64>,
    /// See the flag.
    pub log_retention_days: Option<u64>,
    /// See the flag.
    pub log_backend: Option<String>,
    /// See the flag.
    pub log_postgres_url: Option<String>,
    /// See the flag.
    pub cp_id: Option<String>,
    /// See the flag.
    pub executor_lease_secs: Option<u64>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Log directory.
    pub data_dir: PathBuf,
    /// Server cert, key and optional client CA; None with `insecure`.
    pub tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    /// Plain HTTP.
    pub insecure: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Agents self-register.
    pub auto_register: bool,
    /// How much of the log stays in sled.
    pub log: crate::log::LogOptions,
    /// Report and health events older than this may be compacted away (None: kept forever).
    pub retention: Option<std::time::Duration>,
    /// A PostgreSQL log shared with other control planes instead of the embedded one.
    pub postgres: Option<PostgresLog>,
}

/// `--log-backend postgres`.
#[derive(Debug, Clone)]
pub struct PostgresLog {
    /// Connection string.
    pub url: String,
    /// This control plane's name (None: the host name and listen port, found at start).
    pub cp_id: Option<String>,
    /// The executor's lease.
    pub lease: std::time::Duration,
}

impl Config {
    /// Merges file, environment and flags, and validates. Errors say what to fix.
    pub fn resolve(flags: &Flags) -> Result<Config, String> {
        let file: FileConfig = match &flags.config {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| {
                    // toml's Display spans several lines (a source excerpt); one line is enough.
                    let at = e.span().map(|s| {
                        let n = text[..s.start].matches('\n').count();
                        let src: String = text
                            .lines()
                            .nth(n)
                            .unwrap_or("")
                            .trim()
                            .chars()
                            .take(80)
                            .collect();
                        format!(":{} (`{src}`)", n + 1)
                    });
                    format!(
                        "config file {}{}: {}",
                        p.display(),
                        at.unwrap_or_default(),
                        e.message().trim()
                    )
                })?
            }
        };
        let listen = flags
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:8080".into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            format!("listen address {listen:?} must be HOST:PORT, e.g. 0.0.0.0:8080")
        })?;
        let data_dir = flags
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/nixfleet-cp"));
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        let cert = flags.tls_cert.clone().or(file.tls_cert);
        let key = flags.tls_key.clone().or(file.tls_key);
        let ca = flags.client_ca.clone().or(file.client_ca);
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k, ca)),
            (None, None) if insecure => None,
            (None, None) => return Err("no TLS certificate: give --tls-cert and --tls-key (and --client-ca for mutual TLS), or --insecure for plain HTTP in development".into()),
            _ => return Err("--tls-cert and --tls-key go together: give both or neither".into()),
        };
        if tls.is_some() && insecure {
            return Err("--insecure cannot be combined with --tls-cert/--tls-key".into());
        }
        let log_format = match flags.log_format.clone().or(file.log_format).as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(format!("log format {other:?} must be human or json")),
        };
        let segment = flags
            .log_segment_records
            .or(file.log_segment_records)
            .unwrap_or(crate::log::LogOptions::DEFAULT_SEGMENT_RECORDS);
        if !(16..=1 << 24).contains(&segment) {
            return Err(format!(
                "log segment records {segment} must be between 16 and 16777216 (default 65536)"
            ));
        }
        let retention_days = flags.log_retention_days.or(file.log_retention_days);
        if let Some(d) = retention_days.filter(|d| !(1..=36_500).contains(d)) {
            return Err(format!(
                "log retention {d} days must be between 1 and 36500 (or unset to keep every event)"
            ));
        }
        let postgres = match flags.log_backend.clone().or(file.log_backend).as_deref() {
            None | Some("sled") => None,
            Some("postgres") => {
                let url = flags
                    .log_postgres_url
                    .clone()
                    .or(file.log_postgres_url)
                    .ok_or("--log-backend postgres needs --log-postgres-url (e.g. postgres://nixfleet@db.example:5432/nixfleet)")?;
                let lease = flags
                    .executor_lease_secs
                    .or(file.executor_lease_secs)
                    .unwrap_or(6);
                if !(2..=3600).contains(&lease) {
                    return Err(format!(
                        "executor lease {lease} s must be between 2 and 3600 (default 6)"
                    ));
                }
                let cp_id = flags.cp_id.clone().or(file.cp_id);
                if cp_id
                    .as_ref()
                    .is_some_and(|c| c.is_empty() || c.len() > 128)
                {
                    return Err("--cp-id must be 1 to 128 characters".into());
                }
                Some(PostgresLog {
                    url,
                    cp_id,
                    lease: std::time::Duration::from_secs(lease),
                })
            }
            Some(other) => return Err(format!("log backend {other:?} must be sled or postgres")),
        };
        Ok(Config {
            postgres,
            listen,
            data_dir,
            tls,
            insecure,
            log_format,
            auto_register: file.auto_register.unwrap_or(true),
            log: crate::log::LogOptions::segments_of(segment),
            retention: retention_days.map(|d| std::time::Duration::from_secs(d * 86_400)),
        })
    }
}
