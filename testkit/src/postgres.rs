//! A real PostgreSQL server for tests: Debian's `postgresql` package, started as the `postgres`
//! system user on a temporary data directory, listening on 127.0.0.1 on a free port.
//!
//! ```no_run
//! use nixfleet_testkit::postgres::PgServer;
//! let mut pg = PgServer::start();
//! let url = pg.url(); // postgres://nixfleet@127.0.0.1:PORT/nixfleet
//! pg.kill(); // SIGKILL: a crash of the database server
//! pg.start_again(); // crash recovery from its WAL, on the same port
//! ```
//!
//! The server is as durable as a production one (`fsync = on`, `synchronous_commit = on`), so
//! a test that kills it checks real crash recovery. Authentication is `trust` on loopback and on
//! the server's own unix socket (inside the temporary directory): for tests only, never a
//! configuration to copy. The database `nixfleet` is owned by the login role `nixfleet`.
//!
//! [`PgServer::start_standby`] makes a streaming replica of a primary (`pg_basebackup -R`) and
//! names it in the primary's `synchronous_standby_names`, so a commit on the primary returns only
//! once the standby has flushed it; [`PgServer::promote`] turns it into a primary (failover).
//!
//! Dropping a server stops it (fast shutdown; SIGKILL of its processes if that fails) and
//! removes its directory. A missing PostgreSQL is a panic with one line naming the package.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The Debian package that provides the server.
const MISSING: &str = "PostgreSQL is not installed: apt-get install postgresql";

/// How long a start, a stop or a promotion may take.
const WAIT_SECS: u64 = 60;

/// A running (or stopped) PostgreSQL server in a temporary directory.
pub struct PgServer {
    bin: PathBuf,
    /// The temporary directory (owned by `postgres`): `data/`, `sock/`, `server.log`.
    root: PathBuf,
    port: u16,
    /// The application name a standby connects with (what the primary's
    /// `synchronous_standby_names` names); `None` for a primary.
    standby_name: Option<String>,
    running: bool,
}

impl PgServer {
    /// Initializes a new cluster, starts it and creates the role and database `nixfleet`.
    pub fn start() -> PgServer {
        PgServer::start_inner(false)
    }

    /// Like [`PgServer::start`], with `ssl = on`: a server certificate for `127.0.0.1` and
    /// `localhost` signed by a CA made here with rcgen, and a `pg_hba.conf` that accepts TCP
    /// connections only over TLS (`hostssl`; `hostnossl … reject`). Returns the CA's PEM file,
    /// for `?sslmode=verify-full&sslrootcert=FILE`.
    pub fn start_with_tls() -> (PgServer, PathBuf) {
        let pg = PgServer::start_inner(true);
        let ca = pg.root.join("ca.pem");
        (pg, ca)
    }

    fn start_inner(tls: bool) -> PgServer {
        let mut pg = PgServer::new_dir(None);
        run_ok(&mut pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
        ));
        // With TLS, a connection without it matches no `hostssl` line and is refused.
        let (host, refuse) = if tls {
            ("hostssl", "hostnossl all all 0.0.0.0/0 reject\n")
        } else {
            ("host", "")
        };
        std::fs::write(
            pg.data().join("pg_hba.conf"),
            format!(
                "# For testing only: trust on loopback and the private socket. Never copy this.\n\
                 local all all trust\n\
                 {host} all all 127.0.0.1/32 trust\n\
                 local replication all trust\n\
                 {host} replication all 127.0.0.1/32 trust\n{refuse}"
            ),
        )
        .expect("write pg_hba.conf");
        pg.configure();
        if tls {
            pg.make_certificates();
        }
        pg.run_pg_ctl_start();
        pg.psql("postgres", "CREATE ROLE nixfleet LOGIN");
        pg.psql("postgres", "CREATE DATABASE nixfleet OWNER nixfleet");
        pg
    }

    /// A streaming standby of `primary`, made with `pg_basebackup -R`, and named in the
    /// primary's `synchronous_standby_names` (reloaded), so that from now on a commit on the
    /// primary returns only once this standby has flushed it to disk.
    pub fn start_standby(primary: &PgServer) -> PgServer {
        assert!(primary.running, "start_standby: the primary is not running");
        let name = format!("standby_{}", std::process::id());
        let mut pg = PgServer::new_dir(Some(name.clone()));
        run_ok(&mut pg.as_postgres(
            "pg_basebackup",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
        ));
        pg.configure();
        // `-R` wrote the primary's address; the standby's name is its application_name.
        append(
            &pg.data().join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\n",
                primary.port
            ),
        );
        pg.run_pg_ctl_start();
        primary.psql(
            "postgres",
            &format!("ALTER SYSTEM SET synchronous_standby_names = '\"{name}\"'"),
        );
        primary.psql("postgres", "SELECT pg_reload_conf()");
        // Wait until the primary sees the standby as synchronous, so the guarantee holds from
        // the first commit after this returns.
        let query = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND sync_state = 'sync'"
        );
        wait_for("the standby to be synchronous", || {
            primary.psql("postgres", &query).trim() == "1"
        });
        pg
    }

    /// `postgres://nixfleet@127.0.0.1:PORT/nixfleet`.
    pub fn url(&self) -> String {
        format!("postgres://nixfleet@127.0.0.1:{}/nixfleet", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (for a failing test's message).
    pub fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// Stops the server with a fast shutdown (open transactions are rolled back, a checkpoint is
    /// written) and waits until it is gone.
    pub fn stop(&mut self) {
        if self.running {
            run_ok(&mut self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", &WAIT_SECS.to_string()]));
            self.running = false;
        }
    }

    /// SIGKILLs the postmaster and every process it started (backends, WAL writer, …) at once,
    /// as a machine crash would, and waits until none of them is left. The next
    /// [`PgServer::start_again`] recovers from the WAL.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        // Each child of the postmaster is in its own session (PostgreSQL calls setsid), so
        // they are found by parent, not by process group.
        let family = self.signal_family("-KILL");
        wait_for("the killed server's processes to exit", || {
            family.iter().all(|p| !alive(*p))
        });
        // Where nobody reaps the orphaned postmaster (PID 1 of some containers), its zombie keeps
        // its pid, and the next start would take the lock files for a live server's: gone with
        // them, as after a reboot.
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
        let sock = format!(".s.PGSQL.{}", self.port);
        let _ = std::fs::remove_file(self.sock().join(format!("{sock}.lock")));
        let _ = std::fs::remove_file(self.sock().join(sock));
        self.running = false;
    }

    /// Starts the server again on the same directory and port (after [`PgServer::stop`] or
    /// [`PgServer::kill`]).
    pub fn start_again(&mut self) {
        if !self.running {
            self.run_pg_ctl_start();
        }
    }

    /// SIGSTOPs the postmaster and its backends: connections hang, as on a stalled machine.
    pub fn pause(&self) {
        self.signal_family("-STOP");
    }

    /// Resumes a server paused with [`PgServer::pause`].
    pub fn resume(&self) {
        self.signal_family("-CONT");
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&mut self) {
        assert!(
            self.standby_name.is_some(),
            "promote: this server is not a standby"
        );
        run_ok(&mut self.pg_ctl(&["promote", "-w", "-t", &WAIT_SECS.to_string()]));
        wait_for("the promoted standby to accept writes", || {
            self.psql("postgres", "SELECT pg_is_in_recovery()").trim() == "f"
        });
        self.standby_name = None;
    }

    /// Runs one SQL statement with `psql` as the superuser on `database`; returns its unaligned
    /// output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = run_ok(&mut self.as_postgres(
            "psql",
            &[
                "-h",
                &self.sock().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atq",
                "-c",
                sql,
            ],
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn new_dir(standby_name: Option<String>) -> PgServer {
        let bin = bin_dir();
        let root =
            std::env::temp_dir().join(format!("nixfleet-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(root.join("sock")).expect("create the server's directory");
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&root),
            );
        }
        PgServer {
            bin,
            root,
            port: free_port(),
            standby_name,
            running: false,
        }
    }

    /// Writes `ca.pem` (in the root) and the server's `server.crt`/`server.key` (in the data
    /// directory, the key readable by `postgres` only, as the server demands) and turns TLS on.
    fn make_certificates(&self) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "nixfleet test PostgreSQL CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server parameters");
        let key = KeyPair::generate().expect("server key");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");
        std::fs::write(self.root.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
        let (crt, pem_key) = (
            self.data().join("server.crt"),
            self.data().join("server.key"),
        );
        std::fs::write(&crt, cert.pem()).expect("write server.crt");
        std::fs::write(&pem_key, key.serialize_pem()).expect("write server.key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pem_key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        if is_root() {
            run_ok(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&crt)
                    .arg(&pem_key),
            );
        }
        append(
            &self.data().join("postgresql.conf"),
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn sock(&self) -> PathBuf {
        self.root.join("sock")
    }

    fn configure(&self) {
        append(
            &self.data().join("postgresql.conf"),
            &format!(
                "\n# nixfleet test server\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{sock}'\n\
                 fsync = on\n\
                 synchronous_commit = on\n\
                 full_page_writes = on\n\
                 wal_level = replica\n\
                 max_wal_senders = 4\n\
                 hot_standby = on\n\
                 max_connections = 50\n\
                 shared_buffers = 16MB\n",
                port = self.port,
                sock = self.sock().display()
            ),
        );
    }

    fn run_pg_ctl_start(&mut self) {
        let log = self.log_file().display().to_string();
        let out = self
            .pg_ctl(&["start", "-w", "-t", &WAIT_SECS.to_string(), "-l", &log])
            .output()
            .expect("run pg_ctl");
        if !out.status.success() {
            let tail = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}\n{}\nserver log:\n{tail}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = true;
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut all = vec!["-D".to_owned(), self.data().display().to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.as_postgres("pg_ctl", &all)
    }

    /// `tool` from the server's bin directory, run as the `postgres` user when we are root
    /// (initdb and the server refuse to run as root).
    fn as_postgres(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(&self.root);
        cmd
    }

    fn postmaster_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("read postmaster.pid of a running server");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster.pid starts with the pid")
    }

    /// Sends `signal` to the postmaster and its children; returns their pids.
    fn signal_family(&self, signal: &str) -> Vec<u32> {
        if !self.running {
            return Vec::new();
        }
        let pid = self.postmaster_pid();
        let mut family = vec![pid];
        family.extend(processes().filter(|p| p.1 == pid).map(|p| p.0));
        let _ = Command::new("kill")
            .arg(signal)
            .arg("--")
            .args(family.iter().map(u32::to_string))
            .status();
        family
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            self.resume();
            let stopped = self
                .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "20"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !stopped {
                self.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The newest installed server's bin directory (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, bin)) => bin,
        None => panic!("{MISSING}"),
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A port nobody listens on now (the kernel's pick); the server binds it a moment later.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

/// Every live process (a zombie is not) as (pid, parent pid), from `/proc`.
fn processes() -> impl Iterator<Item = (u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let (state, ppid) = stat(pid)?;
            (state != "Z").then_some((pid, ppid))
        })
}

/// The state and parent pid of `pid`, if it exists.
fn stat(pid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_owned();
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
