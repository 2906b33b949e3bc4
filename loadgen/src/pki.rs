//! Certificates for a load test: one client certificate per simulated agent, all signed by the CA
//! the control plane trusts (`--client-ca`).
//!
//! The directory layout is the one `nixfleet pki` writes (`ca.pem`, `ca-key.pem`), so a load test
//! can run against a control plane whose CA was made by hand; without one, a throwaway CA is created.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};

/// A CA able to issue certificates.
pub struct Pki {
    /// Where `ca.pem` and `ca-key.pem` live.
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A client or server identity in DER, ready for rustls.
pub struct Identity {
    /// Leaf certificate.
    pub cert: CertificateDer<'static>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    /// Loads the CA of `dir` (as made by `nixfleet pki init`), or creates one there.
    pub fn open_or_create(dir: &Path) -> Result<Pki> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert_path.exists() && key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
            let cert_pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("cannot read {}", cert_path.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .with_context(|| format!("{} is not a PEM CA certificate", cert_path.display()))?;
            return Ok(Pki {
                dir: dir.to_path_buf(),
                issuer,
            });
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the PKI directory {}", dir.display()))?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "nixfleet loadgen CA");
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        std::fs::write(&key_path, key.serialize_pem())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA certificate's path (the control plane's `--client-ca`, and the root to trust).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a client certificate with CN `name`, in memory.
    pub fn client(&self, name: &str) -> Result<Identity> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Writes a server certificate for localhost and 127.0.0.1 as `<name>-cert.pem` and
    /// `<name>-key.pem`; returns their paths.
    pub fn write_server(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            self.dir.join(format!("{name}-cert.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).with_context(|| format!("cannot write {}", c.display()))?;
        std::fs::write(&k, key.serialize_pem())
            .with_context(|| format!("cannot write {}", k.display()))?;
        Ok((c, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_made_once_is_loaded_again_and_issues_distinct_client_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Pki::open_or_create(dir.path()).expect("create");
        let first = std::fs::read(a.ca_path()).expect("ca.pem");
        let b = Pki::open_or_create(dir.path()).expect("load");
        assert_eq!(
            std::fs::read(b.ca_path()).expect("ca.pem"),
            first,
            "loading keeps the CA"
        );
        let (x, y) = (
            b.client("web-01").expect("issue"),
            b.client("web-02").expect("issue"),
        );
        assert_ne!(x.cert, y.cert);
    }
}
