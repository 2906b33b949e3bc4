//! TLS to the database: a log opens and appends over TLS with `sslmode=verify-full` and a private
//! CA (`sslrootcert`), a server certificate from another CA is refused with a message that says
//! so, and the server of `PgServer::start_with_tls` refuses connections without TLS.
#![allow(clippy::unwrap_used)]

use nixfleet_core::ids::KeyName;
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use nixfleet_eventlog::log::{EventLog, LogError};
use nixfleet_pglog::{PgLog, PgOptions};
use nixfleet_testkit::postgres::PgServer;
use std::path::Path;

fn tls_url(pg: &PgServer, ca: &Path) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    )
}

fn refused(url: &str) -> String {
    match PgLog::open(url, PgOptions::new("t")) {
        Ok(_) => panic!("{url} was accepted"),
        Err(LogError::Unavailable(m)) => m,
        Err(e) => panic!("{url}: not a connection failure: {e:?}"),
    }
}

#[test]
fn a_log_opens_and_appends_over_verified_tls() {
    let (pg, ca) = PgServer::start_with_tls();
    let log = PgLog::open(&tls_url(&pg, &ca), PgOptions::new("a")).unwrap();
    assert!(log.begin_write(&mut |_| {}).is_ok());
    let event = Event::ApiKeyRevoked {
        name: KeyName::parse("k1").unwrap(),
    };
    let seq = log
        .append(Timestamp(1_700_000_000_000), &Actor::System, &[event])
        .unwrap();
    assert_eq!(seq, Seq(1));
    assert_eq!(
        pg.psql("nixfleet", "SELECT count(*) FROM nixfleet_log")
            .trim(),
        "1"
    );
    // Every connection of the log's role is encrypted.
    let plain = pg.psql(
        "nixfleet",
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'nixfleet'",
    );
    let (plain, all) = plain.trim().split_once('|').unwrap();
    assert_eq!(plain, "0", "connections without TLS among {all}");
    assert!(all.parse::<u32>().unwrap() >= 1, "no connection of the log");
    log.close();
}

#[test]
fn a_server_certificate_of_another_ca_is_refused_clearly() {
    let (pg, _ca) = PgServer::start_with_tls();
    let dir = std::env::temp_dir().join(format!("nixfleet-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    let message = refused(&tls_url(&pg, &other));
    eprintln!("refused: {message}");
    assert!(
        message.contains("invalid peer certificate") && message.contains(&*other.to_string_lossy()),
        "{message}"
    );
    let missing = dir.join("missing.pem");
    let e = PgLog::open(&tls_url(&pg, &missing), PgOptions::new("t"))
        .err()
        .expect("a missing CA file was accepted")
        .to_string();
    assert!(
        e.contains("sslrootcert") && e.contains("missing.pem"),
        "{e}"
    );
    // Without TLS the server itself says no.
    let message = refused(&pg.url());
    assert!(message.contains("no encryption"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}
