//! TLS to the database, when the connection string asks for it with libpq's names:
//! `sslmode=require`, `verify-ca` or `verify-full`, and `sslrootcert=FILE` (PEM) for a private
//! CA. The `postgres` crate knows `sslmode` only up to `require` and no `sslrootcert`, so both are
//! taken out of the string here and the rest is parsed by the crate.
//!
//! Every TLS mode verifies the server: its certificate must chain to `sslrootcert`'s CA (or, for
//! `require` without `sslrootcert`, to the Mozilla roots of `webpki-roots`) and name the host
//! connected to. That is stricter than libpq, whose `require` encrypts without checking and whose
//! `verify-ca` skips the name: a control plane that accepts any certificate would hand its log to
//! whoever sits on the path. `disable`, `allow`, `prefer` and no `sslmode` connect without TLS,
//! as before. The handshake is rustls 0.23 with the `ring` provider, as the rest of the workspace,
//! through `tokio-postgres-rustls`.

use nixfleet_eventlog::log::LogError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// What the connection string asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tls {
    /// No TLS (no `sslmode`, or `disable`, `allow`, `prefer`).
    Off,
    /// TLS required, the server verified against this CA file, or the system roots when `None`.
    Verify { root_cert: Option<String> },
}

/// Splits `url` into what the `postgres` crate parses (with `sslmode=require` where TLS was
/// asked for) and the TLS settings.
pub(crate) fn split(url: &str) -> Result<(String, Tls), LogError> {
    let (rest, mode, root_cert) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            split_url(url)
        } else {
            split_key_value(url)
        };
    let bad = |what: String| LogError::Io(format!("invalid PostgreSQL connection string: {what}"));
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if root_cert.is_some() {
                return Err(bad(
                    "sslrootcert is given but sslmode does not ask for TLS (use sslmode=verify-full)"
                        .into(),
                ));
            }
            Tls::Off
        }
        Some("require" | "verify-ca" | "verify-full") => Tls::Verify { root_cert },
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    let parsed = match (&tls, mode.as_deref()) {
        (Tls::Verify { .. }, _) => with_param(&rest, "sslmode", "require"),
        (Tls::Off, Some(m)) => with_param(&rest, "sslmode", m),
        (Tls::Off, None) => rest,
    };
    Ok((parsed, tls))
}

/// The rustls connector for `tls`.
pub(crate) fn connector(
    root_cert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LogError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| LogError::Io(format!("sslrootcert {path}: {e}")))?;
            if certs.is_empty() {
                return Err(LogError::Io(format!(
                    "sslrootcert {path}: no PEM certificate in it"
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| LogError::Io(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LogError::Io(format!("TLS configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `postgres://…?a=b&sslmode=…&sslrootcert=…`: the two taken out of the query.
fn split_url(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(percent_decode(v)),
            "sslrootcert" => root = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode, root)
}

/// `host=… sslmode=… sslrootcert=…`: the two taken out (values may be single-quoted).
fn split_key_value(s: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().to_owned();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut raw = String::new();
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().unwrap_or('\''));
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            raw.push(n);
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            "" => {}
            _ => kept.push(format!("{key}={raw}")),
        }
    }
    (kept.join(" "), mode, root)
}

/// `s` with `key=value` added in its own form (URL query or key/value list).
fn with_param(s: &str, key: &str, value: &str) -> String {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let sep = if s.contains('?') { '&' } else { '?' };
        format!("{s}{sep}{key}={value}")
    } else if s.is_empty() {
        format!("{key}={value}")
    } else {
        format!("{s} {key}={value}")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_other_parameters_and_lose_the_tls_ones() {
        let (rest, tls) =
            split("postgres://u@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(
            rest,
            "postgres://u@h:5/db?application_name=x&sslmode=require"
        );
        assert_eq!(
            tls,
            Tls::Verify {
                root_cert: Some("/tmp/ca.pem".into())
            }
        );
        let (rest, tls) = split("postgres://u@h:5/db").unwrap();
        assert_eq!((rest.as_str(), tls), ("postgres://u@h:5/db", Tls::Off));
        let (rest, tls) = split("postgres://u@h:5/db?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://u@h:5/db?sslmode=disable", Tls::Off)
        );
        let (_, tls) = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(tls, Tls::Verify { root_cert: None });
    }

    #[test]
    fn key_value_strings_too() {
        let (rest, tls) =
            split("host=h port=5 sslrootcert='/a b/ca.pem' sslmode=verify-ca user=u").unwrap();
        assert_eq!(rest, "host=h port=5 user=u sslmode=require");
        assert_eq!(
            tls,
            Tls::Verify {
                root_cert: Some("/a b/ca.pem".into())
            }
        );
    }

    #[test]
    fn bad_modes_are_refused_with_what_to_fix() {
        let e = split("postgres://h/db?sslmode=verify")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode=verify is not one of"), "{e}");
        let e = split("postgres://h/db?sslrootcert=/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use sslmode=verify-full"), "{e}");
    }
}
