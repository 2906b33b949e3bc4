//! `nixfleet-control-plane`: parse the configuration, open and replay the log, serve.

use clap::Parser;
use nixfleet_engine::api::{self, App};
use nixfleet_engine::config::{Config, Flags, LogFormat};
use nixfleet_engine::engine::{Engine, SystemClock};
use std::sync::Arc;

/// Replay and request handling allocate many small strings; mimalloc does that about twice as fast
/// as glibc here (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nixfleet_malloc::tune();
    let flags = Flags::parse();
    let config = match Config::resolve(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nixfleet-control-plane: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if flags.check_config {
        println!(
            "configuration ok: listen {}, data dir {}, {}",
            config.listen,
            config.data_dir.display(),
            describe_tls(&config)
        );
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixfleet-control-plane: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nixfleet-control-plane: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn describe_tls(c: &Config) -> String {
    match &c.tls {
        None => "plain HTTP (insecure)".into(),
        Some((_, _, None)) => "TLS without client certificates".into(),
        Some((_, _, Some(_))) => "mutual TLS".into(),
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: under systemd the journal would store the escape codes.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let tls = match &config.tls {
        Some((cert, key, ca)) => {
            if ca.is_none() {
                tracing::warn!("TLS without --client-ca: agent routes accept any client; set --client-ca for mutual TLS");
            }
            Some(api::tls::server_config(cert, key, ca.as_deref())?)
        }
        None => {
            tracing::warn!("SERVING PLAIN HTTP WITHOUT AUTHENTICATION OF AGENTS (--insecure): for development only");
            None
        }
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let started = std::time::Instant::now();
    let engine = match &config.postgres {
        None => Engine::open_with(&config.data_dir, Arc::new(SystemClock), config.log)
            .with_context(|| {
                format!("cannot open the event log in {}", config.data_dir.display())
            })?,
        Some(pg) => {
            let cp_id = pg.cp_id.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}:{}", host.trim(), config.listen.port())
            });
            let mut options = nixfleet_pglog::PgOptions::new(cp_id.clone());
            options.lease = pg.lease;
            let log = nixfleet_pglog::PgLog::open(&pg.url, options)
                .context("cannot open the event log in PostgreSQL")?;
            tracing::info!(
                cp_id,
                "event log in PostgreSQL, shared with other control planes"
            );
            Engine::open_shared(Arc::new(log), Arc::new(SystemClock))
                .context("cannot read the event log from PostgreSQL")?
        }
    };
    let engine = Arc::new(engine);
    let (seq, machines, rollouts) =
        engine.read(|s| (s.last_seq.0, s.machines.len(), s.rollouts.len()));
    tracing::info!(
        events = seq,
        machines,
        rollouts,
        ms = started.elapsed().as_millis() as u64,
        "event log replayed"
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, tls = describe_tls(&config), "NixFleet control plane listening");
    let app = Arc::new(App {
        engine: engine.clone(),
        metrics: api::metrics::install(),
        insecure: config.insecure,
        auto_register: config.auto_register,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let executor = tokio::spawn(engine.clone().run_executor({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }));
    // Snapshots and retention are the embedded log's: a shared log is replayed from the database.
    let embedded = config.postgres.is_none();
    let snapshots = embedded.then(|| {
        tokio::spawn(snapshot_loop(
            engine.clone(),
            config.data_dir.clone(),
            stop_rx.clone(),
        ))
    });
    let retention = config
        .retention
        .filter(|_| embedded)
        .map(|age| tokio::spawn(retention_loop(engine.clone(), age, stop_rx.clone())));
    // A tick at start: deadlines that passed while the control plane was down fire now.
    let seq = engine.tick()?;
    engine.wait_durable(seq).await?;
    sd_notify("READY=1");
    let history = verify_history_in_background(engine.clone());
    let corrupt = Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let corrupt = corrupt.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("Received SIGTERM, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("Received SIGINT, shutting down"),
                Ok(e) = history => {
                    tracing::error!(error = %e, "the event log is damaged below the snapshot; stopping");
                    let _ = corrupt.set(e);
                }
            }
            sd_notify("STOPPING=1");
        }
    };
    api::serve(app, listener, tls, shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = executor.await;
    if let Some(s) = snapshots {
        let _ = s.await;
    }
    if let Some(r) = retention {
        let _ = r.await;
    }
    if let Some(e) = corrupt.get() {
        // The snapshot let this start skip the damaged records; without it the next start reads
        // them and refuses to serve, naming the record, as it would have without a snapshot.
        let snap = nixfleet_engine::snapshot::path(&config.data_dir);
        if let Err(rm) = std::fs::remove_file(&snap) {
            tracing::warn!(error = %rm, "cannot remove {}", snap.display());
        }
        anyhow::bail!("{e}; the snapshot was removed, so the next start verifies the whole log");
    }
    let last = engine.log().last_seq();
    engine.wait_durable(last).await?;
    if !embedded {
        tracing::info!("stopped cleanly");
        return Ok(());
    }
    if let Err(e) = engine.write_snapshot(&config.data_dir) {
        tracing::warn!(error = %e, "no snapshot at shutdown");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A start from a snapshot read only the records after its checkpoint. This verifies the others
/// on a blocking thread while the control plane serves; the receiver gets the error, if any.
fn verify_history_in_background(
    engine: Arc<Engine>,
) -> tokio::sync::oneshot::Receiver<nixfleet_engine::log::LogError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Some(c) = engine.unverified_history() {
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match engine.verify_history() {
                Ok(n) => tracing::info!(
                    records = n,
                    ms = started.elapsed().as_millis() as u64,
                    "the records under the snapshot are verified"
                ),
                Err(e) => {
                    let _ = tx.send(e);
                }
            }
        });
        tracing::info!(
            up_to = c.seq,
            "verifying the records under the snapshot in the background"
        );
    }
    rx
}

/// Events between periodic snapshots.
const SNAPSHOT_EVERY_EVENTS: u64 = 100_000;

/// Writes a snapshot whenever enough events have accumulated, checking once a minute.
async fn snapshot_loop(
    engine: Arc<Engine>,
    data_dir: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut covered = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        let last = engine.read(|s| s.last_seq.0);
        if last.saturating_sub(covered) < SNAPSHOT_EVERY_EVENTS {
            continue;
        }
        let (e, d) = (engine.clone(), data_dir.clone());
        match tokio::task::spawn_blocking(move || e.write_snapshot(&d)).await {
            Ok(Ok(Some(seq))) => covered = seq.0,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "snapshot failed"),
            Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
        }
    }
}

/// Applies the log's retention policy a minute after start and then every hour.
async fn retention_loop(
    engine: Arc<Engine>,
    age: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = std::time::Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = std::time::Duration::from_secs(3600);
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.apply_retention(age)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(records = n, "retention compacted old reports"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}

/// Tells systemd (Type=notify) about our state, when started by it.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
