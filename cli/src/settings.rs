//! Layered settings: `.nixfleet.toml` < credentials file < environment < flags.
//!
//! The project file is found by walking up from the current directory, so a fleet repository
//! carries its control plane URL and certificate paths; the API key lives outside the repository
//! in `~/.config/nixfleet/credentials.toml` (mode 0600), keyed by control plane URL.
//! Clap reads flags and `NIXFLEET_*` variables (flag wins); their absence means "unset", so the
//! lower layers and finally the built-in defaults apply.

use crate::error::{CliError, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the per-project settings file.
pub const PROJECT_FILE: &str = ".nixfleet.toml";
/// The control plane URL when no layer sets one.
pub const DEFAULT_CONTROL_PLANE_URL: &str = "https://localhost:8080";

/// Flags every command accepts. Unset flags fall back to the environment, the credentials
/// file and `.nixfleet.toml`, in that order.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Control plane URL [default: https://localhost:8080]. Several: repeat the flag or separate
    /// them with commas; a request that cannot reach one (or gets a 503) goes to the next.
    #[arg(
        long,
        global = true,
        env = "NIXFLEET_CONTROL_PLANE_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub control_plane_url: Vec<String>,
    /// API key (nfk-…); by default the one saved for this URL by `bootstrap` or `keys save`.
    #[arg(
        long,
        global = true,
        env = "NIXFLEET_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that signs the control plane's certificate.
    #[arg(long, global = true, env = "NIXFLEET_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "NIXFLEET_CLIENT_CERT", value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "NIXFLEET_CLIENT_KEY", value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Project settings file [default: .nixfleet.toml in the current directory or a parent].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More detail on stderr (-v: commands run; -vv: also HTTP requests).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `.nixfleet.toml` as written by hand (kebab-case keys, layout of v0.1).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ProjectFile {
    #[serde(default)]
    control_plane: ControlPlaneSection,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default)]
    deploy: DeployDefaults,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ControlPlaneSection {
    url: Option<UrlList>,
    ca_cert: Option<String>,
}

/// `url` of `[control-plane]`: one URL, a comma-separated list, or an array of URLs.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "url must be a URL, a comma-separated list of URLs, or an array of URLs"
)]
enum UrlList {
    One(String),
    Many(Vec<String>),
}

impl UrlList {
    fn entries(&self) -> Vec<String> {
        match self {
            UrlList::One(s) => s.split(',').map(str::to_string).collect(),
            UrlList::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TlsSection {
    client_cert: Option<String>,
    client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct CacheSection {
    url: Option<String>,
    push_to: Option<String>,
    #[serde(default)]
    hook: CacheHook,
}

/// `[cache.hook]`: a command that pushes a store path somewhere (`{}` is the path).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheHook {
    /// The cache URL agents fetch from after the hook pushed.
    pub url: Option<String>,
    /// The command; `{}` is replaced by the store path.
    pub push_cmd: Option<String>,
}

/// `[deploy]`: defaults for rollout parameters.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeployDefaults {
    /// canary, staged or all_at_once.
    pub strategy: Option<String>,
    /// Seconds.
    pub health_timeout: Option<u64>,
    /// "N" or "P%".
    pub failure_threshold: Option<String>,
    /// pause or revert.
    pub on_failure: Option<String>,
}

/// One entry of the credentials file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Credential {
    api_key: Option<String>,
}

/// The resolved settings every command starts from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    /// Base URL of the control plane, without a trailing slash: the first of `control_plane_urls`.
    pub control_plane_url: String,
    /// Every control plane URL, in order, without trailing slashes or duplicates; requests go to
    /// the next on a connection failure or a 503 (`client`).
    pub control_plane_urls: Vec<String>,
    /// Whether some layer set the URL (false: the built-in default).
    pub control_plane_url_configured: bool,
    /// The API key (printed only as "set" or absent).
    #[serde(serialize_with = "redact")]
    pub api_key: Option<String>,
    /// Extra CA that signs the control plane's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub client_key: Option<PathBuf>,
    /// Print JSON instead of tables.
    pub json: bool,
    /// `-v` count.
    pub verbose: u8,
    /// `[cache] url`.
    pub cache_url: Option<String>,
    /// `[cache] push-to`.
    pub push_to: Option<String>,
    /// `[cache.hook]`.
    pub hook: CacheHook,
    /// `[deploy]`.
    pub deploy: DeployDefaults,
    /// The project file that was read, if any.
    pub project_file: Option<PathBuf>,
    /// Where API keys are saved.
    pub credentials_file: Option<PathBuf>,
    /// Which layer supplied each setting.
    pub sources: BTreeMap<String, String>,
}

impl Settings {
    /// Resolves the four layers for this invocation.
    pub fn resolve(args: &GlobalArgs) -> Result<Settings> {
        let cwd = std::env::current_dir().map_err(|e| {
            CliError::usage(format!(
                "cannot read the current directory ({e}); cd somewhere that exists"
            ))
        })?;
        let project_file = match &args.config {
            Some(path) => {
                if !path.is_file() {
                    return Err(CliError::usage(format!(
                        "--config {}: no such file; pass the path of a .nixfleet.toml",
                        path.display()
                    )));
                }
                Some(path.clone())
            }
            None => find_project_file(&cwd),
        };
        let project = match &project_file {
            Some(path) => read_project_file(path)?,
            None => ProjectFile::default(),
        };
        let project_dir = project_file
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or(cwd);
        let project_src = project_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();

        let mut sources = BTreeMap::new();
        let urls = pick_urls(
            &mut sources,
            &args.control_plane_url,
            project.control_plane.url.as_ref(),
            &project_src,
        );
        let control_plane_url_configured = !urls.is_empty();
        let control_plane_urls = url_list(&urls)?;
        let control_plane_url = control_plane_urls[0].clone();
        let mut pick = |name: &str,
                        high: Option<String>,
                        low: Option<String>,
                        low_src: &str|
         -> Option<String> {
            if let Some(v) = high {
                sources.insert(name.to_string(), "flag or environment".to_string());
                Some(v)
            } else if let Some(v) = low {
                sources.insert(name.to_string(), low_src.to_string());
                Some(v)
            } else {
                None
            }
        };

        let file_path = |raw: Option<&String>| -> Result<Option<String>> {
            raw.map(|r| {
                expand_vars(r).map(|s| resolve_relative(&project_dir, &s).display().to_string())
            })
            .transpose()
        };
        let ca_cert = pick(
            "ca-cert",
            args.ca_cert.as_ref().map(|p| p.display().to_string()),
            file_path(project.control_plane.ca_cert.as_ref())?,
            &project_src,
        );
        let client_cert = pick(
            "client-cert",
            args.client_cert.as_ref().map(|p| p.display().to_string()),
            file_path(project.tls.client_cert.as_ref())?,
            &project_src,
        );
        let client_key = pick(
            "client-key",
            args.client_key.as_ref().map(|p| p.display().to_string()),
            file_path(project.tls.client_key.as_ref())?,
            &project_src,
        );

        let credentials_file = credentials_path();
        // The key saved for the first URL of the list that has one.
        let stored_key = match &credentials_file {
            Some(path) => {
                let saved = read_credentials(path)?;
                control_plane_urls
                    .iter()
                    .find_map(|u| saved.get(u).and_then(|c| c.api_key.clone()))
            }
            None => None,
        };
        let cred_src = credentials_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let api_key = pick("api-key", args.api_key.clone(), stored_key, &cred_src);

        Ok(Settings {
            control_plane_url,
            control_plane_urls,
            control_plane_url_configured,
            api_key,
            ca_cert: ca_cert.map(PathBuf::from),
            client_cert: client_cert.map(PathBuf::from),
            client_key: client_key.map(PathBuf::from),
            json: args.json,
            verbose: args.verbose,
            cache_url: project.cache.url,
            push_to: project.cache.push_to,
            hook: project.cache.hook,
            deploy: project.deploy,
            project_file,
            credentials_file,
            sources,
        })
    }

    /// Saves `key` as the API key for each control plane URL in the credentials file (mode 0600).
    pub fn save_api_key(&self, key: &str) -> Result<PathBuf> {
        let path = self.credentials_file.clone().ok_or_else(|| {
            CliError::usage("HOME is not set, so the API key cannot be saved; set HOME or pass the key with --api-key")
        })?;
        let mut all = read_credentials(&path)?;
        for url in &self.control_plane_urls {
            all.insert(
                url.clone(),
                Credential {
                    api_key: Some(key.to_string()),
                },
            );
        }
        write_private(
            &path,
            &toml::to_string(&all).expect("a map of strings always serializes to TOML"),
        )?;
        Ok(path)
    }
}

fn redact<S: serde::Serializer>(
    key: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match key {
        Some(_) => s.serialize_some("<set>"),
        None => s.serialize_none(),
    }
}

/// Looks for `.nixfleet.toml` in `start` and its ancestors.
fn find_project_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(PROJECT_FILE))
        .find(|p| p.is_file())
}

fn read_project_file(path: &Path) -> Result<ProjectFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        CliError::usage(format!(
            "{}:{line}: {}; fix the file (layout in docs/cli.md)",
            path.display(),
            e.message()
        ))
    })
}

/// `$XDG_CONFIG_HOME/nixfleet/credentials.toml`, else `~/.config/nixfleet/credentials.toml`.
fn credentials_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("nixfleet").join("credentials.toml"))
}

fn read_credentials(path: &Path) -> Result<BTreeMap<String, Credential>> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "{}: {}; fix or delete the file and save the key again",
                path.display(),
                e.message()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(CliError::usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes a file only its owner can read, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail =
        |e: std::io::Error| CliError::failed(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}

fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// The control plane URLs of the highest layer that gives any (flags and environment, else the
/// project file), with empty entries dropped; records that layer in `sources`.
fn pick_urls(
    sources: &mut BTreeMap<String, String>,
    high: &[String],
    low: Option<&UrlList>,
    low_src: &str,
) -> Vec<String> {
    let keep = |urls: Vec<String>| -> Vec<String> {
        urls.into_iter().filter(|u| !u.trim().is_empty()).collect()
    };
    let high = keep(high.to_vec());
    let (urls, src) = if high.is_empty() {
        (keep(low.map(UrlList::entries).unwrap_or_default()), low_src)
    } else {
        (high, "flag or environment")
    };
    if !urls.is_empty() {
        sources.insert("control-plane-url".to_string(), src.to_string());
    }
    urls
}

/// The URLs given (none: the default), normalized and checked one by one, without duplicates.
fn url_list(given: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let default = [DEFAULT_CONTROL_PLANE_URL.to_string()];
    let given = if given.is_empty() {
        &default[..]
    } else {
        given
    };
    for raw in given {
        let url = normalize_url(raw);
        validate_url(&url)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    Ok(out)
}

fn validate_url(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(()),
        _ => Err(CliError::usage(format!(
            "control plane URL {url:?} is not an http(s) URL; use e.g. https://cp.example:8080"
        ))),
    }
}

fn resolve_relative(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Expands `${VAR}`; `${HOSTNAME}` falls back to the kernel's host name.
fn expand_vars(raw: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            CliError::usage(format!("{raw:?} has an unclosed ${{; write ${{NAME}}"))
        })?;
        let name = &after[..end];
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                (name == "HOSTNAME")
                    .then(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .flatten()
                    .map(|h| h.trim().to_string())
            });
        match value {
            Some(v) => out.push_str(&v),
            None => {
                return Err(CliError::usage(format!(
                    "{raw:?} uses ${{{name}}} but {name} is not set; set it or edit .nixfleet.toml"
                )))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_and_hostname_falls_back_to_the_kernel() {
        std::env::set_var("NFCLI_TEST_X", "abc");
        assert_eq!(
            expand_vars("/a/${NFCLI_TEST_X}/b").expect("expands"),
            "/a/abc/b"
        );
        assert!(expand_vars("${NFCLI_SURELY_UNSET_VAR}").is_err());
        std::env::remove_var("HOSTNAME");
        assert!(!expand_vars("${HOSTNAME}").expect("falls back").is_empty());
    }

    #[test]
    fn a_url_list_is_an_array_or_a_comma_separated_string_checked_in_order_without_duplicates() {
        let one: ProjectFile =
            toml::from_str("[control-plane]\nurl = \"https://a:1, https://b:1/\"\n").expect("toml");
        let many: ProjectFile =
            toml::from_str("[control-plane]\nurl = [\"https://a:1\", \"https://b:1\"]\n")
                .expect("toml");
        for file in [one, many] {
            let entries = file.control_plane.url.expect("url").entries();
            assert_eq!(
                url_list(&entries).expect("valid"),
                ["https://a:1", "https://b:1"]
            );
        }
        let twice = ["https://a:1".to_string(), "https://a:1/".to_string()];
        assert_eq!(url_list(&twice).expect("valid"), ["https://a:1"]);
        let bad = ["https://a:1".to_string(), "b:1".to_string()];
        assert!(url_list(&bad).is_err());
        assert_eq!(url_list(&[]).expect("default"), [DEFAULT_CONTROL_PLANE_URL]);
    }

    #[test]
    fn urls_lose_their_trailing_slash_and_must_be_http() {
        assert_eq!(normalize_url("https://cp:8080/"), "https://cp:8080");
        assert!(validate_url("cp:8080").is_err());
        assert!(validate_url("https://cp:8080").is_ok());
    }
}
