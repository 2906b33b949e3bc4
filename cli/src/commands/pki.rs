//! `nixfleet pki`: a small fleet CA for hand-made fleets, demos and tests.
//!
//! `pki init` creates an EC P-256 CA (`ca.pem`, `ca-key.pem`); `pki issue` signs a server or
//! client certificate whose CN is the machine id or operator name (the control plane maps the CN
//! of an agent's certificate to its machine id). Keys are written mode 0600 and never overwritten
//! silently. This is not a replacement for a real PKI: there is no revocation list.

use crate::error::{CliError, Result};
use crate::output;
use crate::settings::write_private;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File names inside the PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca-key.pem";

/// `nixfleet pki …`.
#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create a fleet CA (ca.pem, ca-key.pem) in a directory.
    Init(InitArgs),
    /// Issue a certificate signed by the fleet CA (<name>-cert.pem, <name>-key.pem).
    Issue(IssueArgs),
}

/// `pki init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for the CA files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, default_value = "nixfleet fleet CA")]
    pub cn: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Replace an existing CA (every certificate it issued stops being trusted).
    #[arg(long)]
    pub force: bool,
}

/// `pki issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem; the new files go there too.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Certificate CN: the machine id for agents, the operator name for people, the host name for servers.
    #[arg(long)]
    pub name: String,
    /// A TLS server certificate (for the control plane) instead of a client certificate.
    #[arg(long)]
    pub server: bool,
    /// Subject alternative names, comma separated: DNS names or IP addresses [default: the name].
    #[arg(long, value_delimiter = ',', requires = "server")]
    pub san: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace existing files for this name.
    #[arg(long)]
    pub force: bool,
}

/// Runs `nixfleet pki …`.
pub fn run(json: bool, cmd: PkiCmd) -> Result<()> {
    let written = match cmd {
        PkiCmd::Init(a) => init(&a)?,
        PkiCmd::Issue(a) => issue(&a)?,
    };
    if json {
        let (cert, key) = (
            written.0.display().to_string(),
            written.1.display().to_string(),
        );
        output::json(&serde_json::json!({ "cert": cert, "key": key }))
    } else {
        output::line(format!(
            "Wrote {} and {}",
            written.0.display(),
            written.1.display()
        ))
    }
}

fn pki_error(what: &str, e: rcgen::Error) -> CliError {
    CliError::failed(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<()> {
    if days == 0 {
        return Err(CliError::usage("--days must be at least 1"));
    }
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind ours.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

fn refuse_overwrite(paths: &[&Path], force: bool, hint: &str) -> Result<()> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CliError::usage(format!(
            "{} already exists; {hint}",
            p.display()
        ))),
        None => Ok(()),
    }
}

fn write_public(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))
}

/// `pki init`: returns (cert, key) paths.
pub fn init(a: &InitArgs) -> Result<(PathBuf, PathBuf)> {
    create_dir(&a.dir)?;
    let (cert_path, key_path) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
    refuse_overwrite(
        &[&cert_path, &key_path],
        a.force,
        "issue certificates with `nixfleet pki issue` or pass --force to replace the CA",
    )?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| pki_error("cannot generate a key", e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, a.cn.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, a.days)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| pki_error("cannot sign the CA", e))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// A name usable as a CN and as a file name.
fn validate_name(name: &str) -> Result<()> {
    // A machine's CN is its machine id, and an operator's name follows the same rule.
    nixfleet_ids::MachineId::parse(name).map(drop).map_err(|e| {
        CliError::usage(format!(
            "--name {name:?}: {} (a machine id or operator name)",
            e.why
        ))
    })
}

fn san(entry: &str) -> Result<SanType> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    entry
        .to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| {
            CliError::usage(format!(
                "--san {entry:?} is neither an IP address nor a DNS name"
            ))
        })
}

/// `pki issue`: returns (cert, key) paths.
pub fn issue(a: &IssueArgs) -> Result<(PathBuf, PathBuf)> {
    validate_name(&a.name)?;
    let (ca_cert_path, ca_key_path) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            CliError::usage(format!(
                "cannot read {} ({e}); create the CA first with `nixfleet pki init --dir {}`",
                p.display(),
                a.dir.display()
            ))
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| {
        CliError::usage(format!(
            "{} is not a PEM private key ({e})",
            ca_key_path.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert_path)?, ca_key).map_err(|e| {
        CliError::usage(format!(
            "{} is not a PEM CA certificate ({e})",
            ca_cert_path.display()
        ))
    })?;

    let (cert_path, key_path) = (
        a.dir.join(format!("{}-cert.pem", a.name)),
        a.dir.join(format!("{}-key.pem", a.name)),
    );
    refuse_overwrite(
        &[&cert_path, &key_path],
        a.force,
        "pick another --name or pass --force to replace it",
    )?;

    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, a.name.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if a.server {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let names: Vec<String> = if a.san.is_empty() {
            vec![a.name.clone()]
        } else {
            a.san.clone()
        };
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    validity(&mut params, a.days)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| pki_error("cannot generate a key", e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| pki_error("cannot sign the certificate", e))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}
