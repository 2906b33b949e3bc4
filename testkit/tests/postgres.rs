//! The PostgreSQL harness runs a real server: what a committed transaction wrote survives a
//! SIGKILL of the whole server, and a promoted synchronous standby has every committed row.
#![allow(clippy::unwrap_used)]

use nixfleet_testkit::postgres::PgServer;

fn connect(pg: &PgServer) -> postgres::Client {
    postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap()
}

fn rows(pg: &PgServer) -> Vec<String> {
    connect(pg)
        .query("SELECT v FROM t ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_committed_row_survives_a_sigkill_of_the_server() {
    let mut pg = PgServer::start();
    assert_eq!(
        pg.url(),
        format!("postgres://nixfleet@127.0.0.1:{}/nixfleet", pg.port())
    );
    let mut c = connect(&pg);
    c.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text NOT NULL)")
        .unwrap();
    c.execute("INSERT INTO t (v) VALUES ($1)", &[&"before the crash"])
        .unwrap();
    // The database is the role's own: it created the table.
    let owner: String = c
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 't'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "nixfleet");
    pg.kill();
    assert!(
        c.execute("INSERT INTO t (v) VALUES ('lost')", &[]).is_err(),
        "the killed server still answered"
    );
    pg.start_again();
    assert_eq!(rows(&pg), ["before the crash"]);
    pg.stop();
    assert!(postgres::Client::connect(&pg.url(), postgres::NoTls).is_err());
    pg.start_again();
    assert_eq!(rows(&pg), ["before the crash"]);
}

#[test]
fn a_promoted_synchronous_standby_has_every_committed_row() {
    let primary = PgServer::start();
    connect(&primary)
        .batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text NOT NULL)")
        .unwrap();
    let mut standby = PgServer::start_standby(&primary);
    assert_ne!(standby.port(), primary.port());
    let sync: String = connect(&primary)
        .query_one("SHOW synchronous_standby_names", &[])
        .unwrap()
        .get(0);
    assert!(sync.contains("standby_"), "{sync}");
    connect(&primary)
        .execute("INSERT INTO t (v) VALUES ('committed on the primary')", &[])
        .unwrap();
    // A standby refuses writes until it is promoted.
    assert!(connect(&standby)
        .execute("INSERT INTO t (v) VALUES ('x')", &[])
        .is_err());
    drop(primary);
    standby.promote();
    assert_eq!(rows(&standby), ["committed on the primary"]);
    connect(&standby)
        .execute("INSERT INTO t (v) VALUES ('after the failover')", &[])
        .unwrap();
    assert_eq!(
        rows(&standby),
        ["committed on the primary", "after the failover"]
    );
}

#[test]
fn a_paused_server_answers_nothing_until_it_is_resumed() {
    let pg = PgServer::start();
    let mut before = connect(&pg);
    pg.pause();
    let url = pg.url();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answered = postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| c.simple_query("SELECT 1"))
            .is_ok();
        let _ = tx.send(answered);
    });
    let wait = std::time::Duration::from_secs(2);
    assert!(rx.recv_timeout(wait).is_err(), "a paused server answered");
    pg.resume();
    assert!(
        rx.recv_timeout(wait * 10).unwrap(),
        "no answer once resumed"
    );
    before.simple_query("SELECT 1").unwrap();
}
