//! `nixfleet-loadgen`: how many agent reports a control plane makes durable per second, at what
//! latency, and how fast a rollout decides.
//!
//! It simulates N agents, each with its own client certificate (issued from a `nixfleet pki`
//! directory or a throwaway CA) and its own keep-alive mTLS connection, reporting through the v0.1
//! route `POST /api/v1/machines/{id}/report` (an agent's first report registers it). A report's
//! 200 means its events are durable, so reports/s here are durable reports/s. It can start the
//! control plane itself (`--spawn-cp`), with its CA as `--client-ca`. Then it measures rollout
//! decision latency: an `all_at_once` rollout over K simulated machines, K-1 healthy reports, and
//! the deciding one; the time until `BatchSucceeded` shows on the events long-poll.

mod conn;
mod pki;
mod spawn;
mod stats;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use conn::{Conn, Target};
use hyper::Method;
use nixfleet_proto::api::v1 as wire;
use spawn::Spawned;
use stats::Stats;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "nixfleet-loadgen",
    version,
    about = "Load generator for the nixfleet control plane: N agents with their own client certificates reporting over keep-alive mTLS"
)]
struct Args {
    /// Control plane to load, https://HOST:PORT (its --client-ca must be PKI_DIR/ca.pem). Given
    /// several times, the machines are spread over the control planes (machine i on URL i mod N).
    #[arg(long, conflicts_with = "spawn_cp")]
    url: Vec<String>,
    /// Start this nixfleet-control-plane binary on a free loopback port, with the loadgen CA as --client-ca.
    #[arg(long, value_name = "PATH", requires = "data_dir")]
    spawn_cp: Option<PathBuf>,
    /// Data directory of the spawned control plane (created; its log is DATA_DIR.log).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Spawned control planes share this PostgreSQL log (`--log-backend postgres`), with data
    /// directories DATA_DIR-0, DATA_DIR-1, …
    #[arg(long, value_name = "URL", requires = "spawn_cp")]
    postgres_url: Option<String>,
    /// How many control planes to spawn on --postgres-url; the machines are spread over them.
    #[arg(long, default_value_t = 1, requires = "postgres_url")]
    cps: usize,
    /// Directory with ca.pem and ca-key.pem (`nixfleet pki init`); a CA is created there if missing.
    /// Default: a fresh temporary directory.
    #[arg(long, value_name = "DIR")]
    pki_dir: Option<PathBuf>,
    /// CA certificate that signed the server's certificate (default: PKI_DIR/ca.pem).
    #[arg(long, value_name = "FILE")]
    server_ca: Option<PathBuf>,
    /// TLS server name and Host header.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Simulated agents (machines), each with its own certificate and connection.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Total reports per second; 0 sends as fast as the control plane answers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Reports in flight at once (each on its own agent's connection).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Rounds of the rollout decision measurement (0 skips it).
    #[arg(long, default_value_t = 5)]
    decision_rounds: usize,
    /// Machines in each decision rollout.
    #[arg(long, default_value_t = 100)]
    decision_machines: usize,
    /// Admin API key of the control plane; without it, the loadgen bootstraps one.
    #[arg(long, env = "NIXFLEET_LOADGEN_ADMIN_KEY")]
    admin_key: Option<String>,
    /// After each report, the same agent also polls for its desired generation (an agent's
    /// read); the polls' latency is printed on a line of its own.
    #[arg(long)]
    polls: bool,
    /// Machine ids are PREFIX-N.
    #[arg(long, default_value = "lg")]
    prefix: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixfleet-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixfleet-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One simulated agent.
struct Agent {
    id: String,
    conn: Conn,
    body: Bytes,
}

/// A store path for generation `n` of `host`.
fn generation(host: &str, n: u64) -> String {
    format!("/nix/store/{n:032}-nixos-system-{host}")
}

fn report_body(host: &str, generation: &str) -> Result<Bytes> {
    let r = wire::Report {
        machine_id: host.to_string(),
        current_generation: generation.to_string(),
        success: true,
        message: "up-to-date".into(),
        timestamp: String::new(),
        tags: vec!["loadgen".into()],
        health: Some(wire::HealthReport {
            results: vec![wire::HealthCheckResult::Pass {
                check_name: "loadgen".into(),
                duration_ms: 1,
            }],
            all_passed: true,
            timestamp: String::new(),
        }),
        agent_version: "loadgen".into(),
        uptime_seconds: 60,
        rolled_back_from: None,
        dry_run: false,
        ..Default::default()
    };
    Ok(Bytes::from(serde_json::to_vec(&r)?))
}

impl Agent {
    async fn poll(&mut self) -> Result<u16> {
        let path = wire::paths::desired_generation(&self.id);
        Ok(self.conn.call(Method::GET, &path, None, None).await?.status)
    }

    async fn report(&mut self, body: Option<Bytes>) -> Result<u16> {
        let path = wire::paths::report(&self.id);
        let body = body.unwrap_or_else(|| self.body.clone());
        Ok(self
            .conn
            .call(Method::POST, &path, None, Some(body))
            .await?
            .status)
    }
}

/// Prints the spawned control plane's memory now, in all and per machine.
fn print_memory(spawned: Option<&Spawned>, agents: usize) {
    if let Some((rss, peak)) = spawned.and_then(Spawned::rss_kib) {
        println!(
            "control plane memory after the load: RSS {:.1} MiB (peak {:.1} MiB), {:.1} KiB per machine",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            rss as f64 / agents.max(1) as f64
        );
    }
}

/// User + system CPU seconds of a process from /proc (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn parse_url(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("--url {url:?} must start with https://"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--url {url:?} needs a port, e.g. https://127.0.0.1:8443"))?;
    let port = port
        .parse()
        .map_err(|_| anyhow!("--url {url:?}: port {port:?} is not a number"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

async fn wait_healthy(op: &mut Conn, mut spawned: Option<&mut Spawned>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = op.call(Method::GET, "/health", None, None).await {
            if a.status == 200 {
                return Ok(());
            }
        }
        if let Some(s) = spawned.as_deref_mut() {
            if let Ok(Some(st)) = s.child.try_wait() {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                bail!(
                    "the control plane exited at start ({st}): {}",
                    log.lines().last().unwrap_or("")
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the control plane did not answer /health within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(args: Args) -> Result<()> {
    if args.agents == 0 || args.concurrency == 0 || args.cps == 0 {
        bail!("--agents, --concurrency and --cps must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number of reports per second (0: as fast as possible)");
    }
    if args.url.is_empty() && args.spawn_cp.is_none() {
        bail!("give --url https://HOST:PORT of a control plane, or --spawn-cp PATH --data-dir DIR");
    }
    let (pki_dir, temp_pki) = match &args.pki_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("nixfleet-loadgen-{}", std::process::id())),
            true,
        ),
    };
    let result = run_with_pki(&args, &pki_dir).await;
    if temp_pki {
        let _ = std::fs::remove_dir_all(&pki_dir);
    }
    result
}

/// The control planes to load: spawned (`--spawn-cp`, `--cps`) or given (`--url`), each
/// answering `/health`; with a line that names them.
async fn start_targets(args: &Args, pki: &pki::Pki) -> Result<(Vec<Spawned>, Vec<Target>, String)> {
    let mut spawned = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let how = match &args.spawn_cp {
        Some(bin) => {
            let data_dir = args
                .data_dir
                .as_deref()
                .ok_or_else(|| anyhow!("--spawn-cp needs --data-dir"))?;
            for i in 0..args.cps {
                let port = free_port()?;
                let pg = args.postgres_url.as_deref();
                spawned.push(spawn::spawn_cp(bin, data_dir, pki, port, i, pg)?);
                addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
            }
            match &args.postgres_url {
                Some(_) => format!("spawned {} x{} on PostgreSQL", bin.display(), args.cps),
                None => format!("spawned {}", bin.display()),
            }
        }
        None => {
            for url in &args.url {
                let (host, port) = parse_url(url)?;
                addrs.push(
                    tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .with_context(|| format!("cannot resolve {host}"))?
                        .next()
                        .ok_or_else(|| anyhow!("{host} has no address"))?,
                );
            }
            args.url.join(", ")
        }
    };
    let server_ca = args.server_ca.clone().unwrap_or_else(|| pki.ca_path());
    let targets = addrs
        .iter()
        .map(|a| Target::new(*a, &args.server_name, &server_ca))
        .collect::<Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        let mut op = Conn::new(t.clone(), t.client_config(pki.client("loadgen-operator")?)?);
        wait_healthy(&mut op, spawned.get_mut(i)).await?;
    }
    let addr = addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((spawned, targets, format!("{addr} ({how})")))
}

async fn run_with_pki(args: &Args, pki_dir: &Path) -> Result<()> {
    let pki = Arc::new(pki::Pki::open_or_create(pki_dir)?);
    let (spawned, targets, names) = start_targets(args, &pki).await?;
    let target = targets[0].clone();
    let mut op = Conn::new(
        target.clone(),
        target.client_config(pki.client("loadgen-operator")?)?,
    );
    println!(
        "nixfleet-loadgen: {} agents, {} in flight, {}, {} s measured after {} s warm-up; control plane {names}; load average {}",
        args.agents,
        args.concurrency.min(args.agents),
        if args.rate > 0.0 { format!("{} reports/s", args.rate) } else { "as fast as possible".into() },
        args.duration,
        args.warmup,
        loadavg()
    );

    // Certificates: one per agent, issued on blocking threads.
    let started = Instant::now();
    let ids: Vec<String> = (0..args.agents)
        .map(|i| format!("{}-{i:05}", args.prefix))
        .collect();
    let mut agents = Vec::with_capacity(args.agents);
    let chunks: Vec<Vec<String>> = ids.chunks(512).map(|c| c.to_vec()).collect();
    let mut handles = Vec::new();
    for (c, chunk) in chunks.into_iter().enumerate() {
        let (pki, targets) = (pki.clone(), targets.clone());
        handles.push(tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .enumerate()
                .map(|(k, id)| {
                    // Machine i on control plane i mod N.
                    let target = &targets[(c * 512 + k) % targets.len()];
                    let tls = target.client_config(pki.client(&id)?)?;
                    let body = report_body(&id, &generation(&id, 1))?;
                    Ok(Agent {
                        conn: Conn::new(target.clone(), tls),
                        id,
                        body,
                    })
                })
                .collect::<Result<Vec<Agent>>>()
        }));
    }
    for h in handles {
        agents.extend(h.await??);
    }
    let certs_s = started.elapsed().as_secs_f64();

    // Connections: one mTLS handshake per agent.
    let started = Instant::now();
    agents = for_each_agent(agents, 64, |mut a| async move {
        let r = a.conn.connect().await;
        (a, r.map(|_| 200))
    })
    .await?;
    let connect_s = started.elapsed().as_secs_f64();

    // Registration: every agent's first report registers it.
    let started = Instant::now();
    agents = for_each_agent(agents, args.concurrency, |mut a| async move {
        let r = a.report(None).await;
        (a, r)
    })
    .await?;
    let register_s = started.elapsed().as_secs_f64();
    println!(
        "setup: {} client certificates issued in {certs_s:.2} s; {} mTLS connections in {connect_s:.2} s; {} first reports (registration) in {register_s:.2} s",
        args.agents, args.agents, args.agents
    );

    // The measured load.
    let cpu_before = spawn::cpu_seconds(&spawned);
    let self_before = cpu_seconds("/proc/self/stat");
    let (agents, mut stats, mut polls, count, window) = load(agents, args).await;
    let cpu_cp = spawn::cpu_seconds(&spawned)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let cpu_self = cpu_seconds("/proc/self/stat")
        .zip(self_before)
        .map(|(a, b)| a - b);
    let per_s = count as f64 / window;
    println!(
        "reports: {count} durable in {window:.1} s = {per_s:.0} reports/s; latency {}; errors: {}",
        stats.summary(),
        stats.errors_line()
    );
    if args.polls {
        println!(
            "polls (desired generation, after each report): latency {}; errors: {}",
            polls.summary(),
            polls.errors_line()
        );
    }
    let wall = window + args.warmup as f64;
    let reconnects: u64 = agents
        .iter()
        .map(|a| a.conn.handshakes.saturating_sub(1))
        .sum();
    println!(
        "cpu during load: control plane {}, loadgen {} (cores, user+sys); reconnects {reconnects}; load average {}",
        cpu_cp.map(|c| format!("{:.2} ({:.0} µs/report)", c / wall, c * 1e6 / (per_s * wall).max(1.0)))
            .unwrap_or_else(|| "?".into()),
        cpu_self.map(|c| format!("{:.2}", c / wall)).unwrap_or_else(|| "?".into()),
        loadavg()
    );
    print_memory(spawned.first(), args.agents);

    if args.decision_rounds > 0 {
        let mut agents = agents;
        decision(args, &target, &pki, &mut op, &mut agents).await?;
    }
    drop(spawned);
    if !stats.errors.is_empty() {
        bail!("{} reports failed", stats.errors.values().sum::<u64>());
    }
    Ok(())
}

/// Runs `f` on every agent, at most `width` at once; fails on the first non-200 or error.
async fn for_each_agent<F, Fut>(agents: Vec<Agent>, width: usize, f: F) -> Result<Vec<Agent>>
where
    F: Fn(Agent) -> Fut,
    Fut: std::future::Future<Output = (Agent, Result<u16>)> + Send + 'static,
{
    let n = agents.len();
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(n);
    let mut first_error = None;
    let mut pending = agents.into_iter().enumerate();
    loop {
        while set.len() < width {
            match pending.next() {
                Some((i, a)) => {
                    let fut = f(a);
                    set.spawn(async move { (i, fut.await) });
                }
                None => break,
            }
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (i, (a, r)) = done?;
        match r {
            Ok(200) => {}
            Ok(s) => {
                first_error.get_or_insert_with(|| anyhow!("agent {} was answered {s}", a.id));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.context(format!("agent {}", a.id)));
            }
        }
        out.push((i, a));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, a)| a).collect())
}

/// The measured phase: `concurrency` workers, each cycling over its own agents. In rate mode
/// each worker sends on a fixed schedule and latency counts from the scheduled time, so a slow
/// server cannot hide queueing (no coordinated omission).
async fn load(agents: Vec<Agent>, args: &Args) -> (Vec<Agent>, Stats, Stats, u64, f64) {
    let workers = args.concurrency.min(agents.len());
    let mut groups: Vec<Vec<(usize, Agent)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, a) in agents.into_iter().enumerate() {
        groups[i % workers].push((i, a));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(workers as f64 / args.rate));
    let mut set = tokio::task::JoinSet::new();
    for (w, mut group) in groups.into_iter().enumerate() {
        let offset = interval
            .map(|iv| iv.mul_f64(w as f64 / workers as f64))
            .unwrap_or_default();
        let polls = args.polls;
        set.spawn(async move {
            let mut stats = Stats::default();
            let mut poll_stats = Stats::default();
            let mut count = 0u64;
            let mut next = start + offset;
            let mut k = 0usize;
            tokio::time::sleep_until(start).await;
            loop {
                let scheduled = match interval {
                    Some(iv) => {
                        if next >= end {
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        let s = next;
                        next += iv;
                        s
                    }
                    None => {
                        let now = tokio::time::Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                let len = group.len();
                let agent = &mut group[k % len].1;
                k += 1;
                let r = agent.report(None).await;
                let done = tokio::time::Instant::now();
                if polls {
                    let p = agent.poll().await;
                    let polled = tokio::time::Instant::now();
                    if scheduled >= measure_from && polled <= end {
                        match p {
                            // 404: no desired generation, the usual answer of a fleet at rest.
                            Ok(200 | 404) => poll_stats.ok(polled - done),
                            Ok(s) => poll_stats.fail(s.to_string()),
                            Err(e) => poll_stats.fail(format!("io ({})", e.root_cause())),
                        }
                    }
                }
                if scheduled < measure_from || done > end {
                    continue;
                }
                match r {
                    Ok(200) => {
                        count += 1;
                        stats.ok(done - scheduled);
                    }
                    Ok(s) => stats.fail(s.to_string()),
                    Err(e) => stats.fail(format!("io ({})", e.root_cause())),
                }
            }
            (group, stats, poll_stats, count)
        });
    }
    let mut all = Vec::new();
    let mut stats = Stats::default();
    let mut polls = Stats::default();
    let mut count = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((group, s, p, c)) => {
                all.extend(group);
                stats.merge(s);
                polls.merge(p);
                count += c;
            }
            Err(e) => stats.fail(format!("worker failed: {e}")),
        }
    }
    all.sort_by_key(|(i, _)| *i);
    (
        all.into_iter().map(|(_, a)| a).collect(),
        stats,
        polls,
        count,
        args.duration as f64,
    )
}

async fn api(
    op: &mut Conn,
    key: &str,
    method: Method,
    path: &str,
    body: serde_json::Value,
    want: u16,
) -> Result<conn::Answer> {
    let has_body = method != Method::GET;
    let a = op
        .call(
            method.clone(),
            path,
            Some(key),
            has_body.then(|| Bytes::from(body.to_string())),
        )
        .await?;
    if a.status != want {
        bail!(
            "{method} {path} answered {} (wanted {want}): {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    Ok(a)
}

/// Rollout decision latency: K-1 healthy reports, then the deciding one while a watcher
/// long-polls for `BatchSucceeded`.
async fn decision(
    args: &Args,
    target: &Target,
    pki: &pki::Pki,
    op: &mut Conn,
    agents: &mut [Agent],
) -> Result<()> {
    let k = args.decision_machines.clamp(1, agents.len());
    let key = match &args.admin_key {
        Some(k) => k.clone(),
        None => {
            let a = op
                .call(
                    Method::POST,
                    "/api/v1/keys/bootstrap",
                    None,
                    Some(Bytes::from_static(br#"{"name":"loadgen"}"#)),
                )
                .await?;
            if a.status != 200 {
                bail!(
                    "bootstrap answered {} (an admin key exists already: pass --admin-key): {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
            }
            let v: wire::ApiKeyCreated = serde_json::from_slice(&a.body)?;
            v.key
        }
    };
    let mut watcher = Conn::new(
        target.clone(),
        target.client_config(pki.client("loadgen-watcher")?)?,
    );
    let mut from_sent = Stats::default();
    let mut from_200 = Stats::default();
    let mut in_log_ms = Vec::new();
    for round in 0..args.decision_rounds {
        let n = 1_000_000 + round as u64;
        let hosts = &mut agents[..k];
        let entries: Vec<_> = hosts
            .iter()
            .map(|a| serde_json::json!({"hostname": a.id, "store_path": generation(&a.id, n), "platform": "x86_64-linux"}))
            .collect();
        let a = api(
            op,
            &key,
            Method::POST,
            "/api/v1/releases",
            serde_json::json!({ "entries": entries }),
            201,
        )
        .await?;
        let rel: wire::CreateReleaseResponse = serde_json::from_slice(&a.body)?;
        let ids: Vec<&str> = hosts.iter().map(|a| a.id.as_str()).collect();
        api(
            op,
            &key,
            Method::POST,
            "/api/v1/rollouts",
            serde_json::json!({"release_id": rel.id, "strategy": "all_at_once", "target": {"hosts": ids}, "health_timeout": 600}),
            201,
        )
        .await?;
        let (last, rest) = hosts
            .split_last_mut()
            .ok_or_else(|| anyhow!("no machines for the decision rollout"))?;
        for a in rest.iter_mut() {
            let body = report_body(&a.id, &generation(&a.id, n))?;
            let s = a.report(Some(body)).await?;
            if s != 200 {
                bail!("healthy report of {} answered {s}", a.id);
            }
        }
        let a = api(
            op,
            &key,
            Method::GET,
            "/api/v1/events?after=0&limit=1",
            serde_json::Value::Null,
            200,
        )
        .await?;
        let seq: u64 = a
            .headers
            .get("x-nixfleet-last-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("GET /api/v1/events has no x-nixfleet-last-seq header"))?;
        let poll_path = format!("/api/v1/events?after={seq}&kind=BatchSucceeded&wait=10");
        let watch_key = key.clone();
        let poll = async {
            let r = watcher
                .call(Method::GET, &poll_path, Some(&watch_key), None)
                .await;
            (r, Instant::now())
        };
        let body = report_body(&last.id, &generation(&last.id, n))?;
        let deciding = async {
            let sent = Instant::now();
            let r = last.report(Some(body)).await;
            (r, sent, Instant::now())
        };
        let ((polled, seen), (reported, sent, answered)) = tokio::join!(poll, deciding);
        let status = reported?;
        if status != 200 {
            bail!("deciding report answered {status}");
        }
        let polled = polled?;
        let record = String::from_utf8_lossy(&polled.body)
            .lines()
            .next()
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!("no BatchSucceeded within 10 s of the deciding report (round {round})")
            })?;
        let ev: wire::EventRecord = serde_json::from_str(&record)?;
        from_sent.ok(seen - sent);
        from_200.ok(seen.saturating_duration_since(answered));
        // In the log: the deciding report's ReportReceived and the batch event share one append.
        let a = api(
            op,
            &key,
            Method::GET,
            &format!("/api/v1/events?after={seq}&kind=ReportReceived&limit=1"),
            serde_json::Value::Null,
            200,
        )
        .await?;
        if let Some(line) = String::from_utf8_lossy(&a.body).lines().next() {
            let rep: wire::EventRecord = serde_json::from_str(line)?;
            in_log_ms.push(ev.at_ms.saturating_sub(rep.at_ms));
        }
    }
    println!(
        "decision latency over {} rounds of an all_at_once rollout of {k} machines: deciding report sent → BatchSucceeded seen {}; report's 200 → seen {}; in the log (ReportReceived → BatchSucceeded at_ms) max {} ms",
        args.decision_rounds,
        from_sent.summary(),
        from_200.summary(),
        in_log_ms.iter().max().copied().unwrap_or(0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_and_port() {
        assert_eq!(
            parse_url("https://127.0.0.1:8443").expect("parses"),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_url("https://[::1]:9/x").expect("parses"),
            ("::1".into(), 9)
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("https://x").is_err());
    }

    #[test]
    fn report_bodies_are_v0_1_reports_with_a_valid_store_path() {
        let b = report_body("lg-00001", &generation("lg-00001", 7)).expect("serializes");
        let r: wire::Report = serde_json::from_slice(&b).expect("parses");
        assert_eq!(r.machine_id, "lg-00001");
        assert!(r.current_generation.starts_with("/nix/store/"));
        assert_eq!(
            r.current_generation,
            format!("/nix/store/{}-nixos-system-lg-00001", "0".repeat(31) + "7")
        );
        assert!(r.health.expect("health").all_passed);
    }
}
