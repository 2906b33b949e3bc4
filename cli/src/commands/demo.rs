//! `nixfleet demo`: the whole product in one command, on loopback, in a local directory.
//!
//! It mints a dev PKI (the `nixfleet pki` code), starts `nixfleet-control-plane` with its
//! embedded event log in `<dir>/cp`, bootstraps an admin key, starts four real `nixfleet-agent`s
//! (web-01..web-03 tagged `web`, db-01 tagged `db`), creates a release, runs a canary rollout on
//! `web` to completion and an all-at-once rollout on `db` that its health gate pauses, printing
//! a line per batch transition from the events long-poll, and ends with each rollout's timeline
//! from the event log. Releases, rollouts and the status table go through the same code as
//! `release`, `rollout create` and `status`.
//!
//! With Nix on PATH (`nix-build`, `nix-store`, `nix-env`), the machines are real as far as the
//! agent can tell: [`generations`] builds a G1 and a G2 of each, every machine boots into its G1
//! (its profile and current-system link are in `<dir>/machines/<id>`), the agents run without
//! `--dry-run`, and the release is every machine's G2. The web machines switch (their links
//! move, which the demo prints); db-01's G2 is broken (its switch exits 1), so its agent rolls
//! back to G1 and the failed report pauses the rollout.
//!
//! Without Nix (or with `--dry-run`) it says so in its first line and runs dry: a dry-run agent
//! never switches, and the gate counts a machine healthy only on a passing health report *for
//! its release path*, so each machine's `--current-system` link points at its release path from
//! the start: a made-up store path of which the agent only reads the link. The agents find
//! themselves up to date, run their checks (db-01's asks a port where nothing listens) and
//! report them for that path, as a machine that had switched would.
//!
//! Every child runs under a [`Supervisor`]: in its own process group, stopped at the end, on
//! an error and on Ctrl-C; the directory stays for a look. The command lines of the children
//! are [`crate::launch`]'s, the events long-poll is [`crate::events_client`]; [`dir`] prepares
//! the directory and [`story`] words the events.

mod dir;
mod generations;
mod story;

use crate::client::Client;
use crate::commands::{bootstrap, machines, pki, release, rollout};
use crate::error::{CliError, Result};
use crate::events_client::Events;
use crate::launch::{AgentLaunch, ControlPlaneLaunch};
use crate::output;
use crate::settings::{write_private, CacheHook, DeployDefaults, Settings};
use crate::supervise::{StopOnDrop, Supervisor};
use clap::Args;
use dir::{prepare_dir, Binaries};
use nixfleet_proto::api::v1::{
    CommandCheck, CreateReleaseRequest, HealthChecksConfig, HttpCheck, MachineStatus, Readiness,
    ReleaseEntry, RolloutDetail,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use story::{
    batch_decision, batch_machines, end_word, health_summary, num_at, str_at, unhealthy_reasons,
};

/// `nixfleet demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the PKI, the control plane's event log, the machines and the logs.
    /// A previous demo there is removed first; any other non-empty directory is refused.
    #[arg(long, value_name = "DIR", default_value = "nixfleet-demo")]
    pub dir: PathBuf,
    /// Where nixfleet-control-plane and nixfleet-agent are [default: the directory of this
    /// nixfleet executable].
    #[arg(long, env = "NIXFLEET_DEMO_BIN_DIR", value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// After the rollouts, keep the control plane and the agents running until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Run dry even when Nix is installed: build and switch nothing, pretend every machine
    /// already runs its release.
    #[arg(long)]
    pub dry_run: bool,
}

/// The demo's machines and their tags.
const MACHINES: [(&str, &str); 4] = [
    ("web-01", "web"),
    ("web-02", "web"),
    ("web-03", "web"),
    ("db-01", "db"),
];
/// The machine whose G2 is broken (real runs).
const BROKEN: &str = "db-01";
/// Health timeout of both rollouts; the db check fails at once, so nobody waits for it.
const HEALTH_TIMEOUT_SECS: u64 = 30;
/// How long a rollout may take before the demo gives up.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(HEALTH_TIMEOUT_SECS + 20);
/// How long the control plane and the agents may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Seconds one events long-poll may wait (the client's own timeout is 30 s).
const EVENTS_WAIT_SECS: u64 = 2;

/// Runs `nixfleet demo`.
pub fn run(verbose: u8, json: bool, args: DemoArgs) -> Result<()> {
    if json {
        return Err(CliError::usage(
            "nixfleet demo prints a story, not JSON; leave out --json",
        ));
    }
    let started = Instant::now();
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    let shown = args.dir.display().to_string();
    let (dir, removed) = prepare_dir(&args.dir)?;
    let fleet = Arc::new(Supervisor::default());
    let keep_running = Arc::new(AtomicBool::new(false));
    // On SIGINT or SIGTERM: say where the files are, exit 0 when `--keep-running` was waiting
    // for exactly that, else 130.
    let (asked, files) = (keep_running.clone(), shown.clone());
    fleet.stop_on_signal(move |n| {
        let asked = asked.load(Ordering::SeqCst);
        eprintln!(
            "{}: stopped {n} processes; the demo's files are in {files}",
            if asked { "Stopping" } else { "Interrupted" }
        );
        if asked {
            0
        } else {
            130
        }
    })?;
    let _stop = StopOnDrop(&fleet);
    let dry = if args.dry_run {
        Some("--dry-run was given".to_string())
    } else {
        generations::missing_nix_tool().map(|t| format!("no Nix here ({t} is not on PATH)"))
    };
    let mut demo = Demo {
        started,
        dir,
        shown,
        bins,
        verbose,
        fleet: &fleet,
        dry,
        gens: None,
    };
    let result = demo.run(&args, removed, &keep_running);
    if fleet.interrupted() {
        // The signal thread is stopping the children, which is why we failed: let it finish
        // and exit, rather than report the failures it caused.
        loop {
            std::thread::park();
        }
    }
    let stopped = fleet.stop();
    match result {
        Ok(ids) => output::line(format!(
            "\nDemo finished in {:.1} s; stopped the control plane and {} agents.\n{}",
            started.elapsed().as_secs_f64(),
            stopped.saturating_sub(1),
            demo.leftovers(&ids)
        )),
        // The error names the log to read; the children are stopped either way.
        Err(e) => Err(e),
    }
}

/// One run of the demo.
struct Demo<'a> {
    started: Instant,
    /// Absolute, for the children.
    dir: PathBuf,
    /// As the user gave it, for messages.
    shown: String,
    bins: Binaries,
    verbose: u8,
    fleet: &'a Supervisor,
    /// Why the demo runs dry; `None`: it deploys real generations.
    dry: Option<String>,
    /// The generations, once built (real runs).
    gens: Option<generations::Generations>,
}

impl Demo<'_> {
    /// One line of the story, with the time since the start.
    fn say(&self, text: impl AsRef<str>) -> Result<()> {
        output::line(format!(
            "[{:>5.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            text.as_ref()
        ))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Builds each machine's G1 and G2 (real runs).
    fn build_generations(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.path("logs"))
            .map_err(|e| CliError::failed(format!("cannot create {}/logs: {e}", self.shown)))?;
        let hosts: Vec<&str> = MACHINES.iter().map(|(id, _)| *id).collect();
        let gens = generations::build(
            &self.dir,
            &hosts,
            &[BROKEN],
            &self.path("logs/nix-build.log"),
        )?;
        self.say(format!(
            "Generations: a G1 and a G2 of each machine, built with nix-build (builtins.derivation, no nixpkgs) in {:.1} s into the local Nix store, GC roots in {}/generations; {BROKEN}'s G2 is broken on purpose (its switch-to-configuration exits 1)",
            gens.build_secs, self.shown
        ))?;
        self.gens = Some(gens);
        Ok(())
    }

    /// The line that tells how a machine of a started batch took its release path (real runs),
    /// from its report; `None` while the report is not about that path yet.
    fn switch_line(&self, m: &str, data: &serde_json::Value) -> Option<String> {
        let gens = self.gens.as_ref()?;
        let pair = gens.machines.get(m)?;
        let link = self.path(&format!("machines/{m}/current-system"));
        let now = generations::link_target(&link).unwrap_or_else(|| "nothing".into());
        let success = data.get("success").and_then(|v| v.as_bool()) == Some(true);
        if str_at(data, "rolled_back_from") == pair.g2 {
            let profile: Vec<String> = generations::profile_generations(
                &self.path(&format!("machines/{m}/system-profile")),
            )
            .iter()
            .map(|(n, p)| format!("{n} {}", generations::short(p)))
            .collect();
            // Why it failed follows in the rollout's PAUSED line.
            return Some(format!(
                "  {m}: switching to {} failed, rolled back to {}; machines/{m}/current-system -> {}, profile generations {}",
                generations::short(&pair.g2),
                pair.g1,
                generations::short(&now),
                profile.join(", ")
            ));
        }
        if success && str_at(data, "generation") == pair.g2 {
            return Some(format!(
                "  {m}: switched to {} (was {}); machines/{m}/current-system -> {}",
                pair.g2,
                pair.g1,
                generations::short(&now)
            ));
        }
        (!success).then(|| format!("  {m}: {}", str_at(data, "message")))
    }

    /// Where each machine's current-system link and profile generations are now (real runs).
    fn show_machines(&self) -> Result<()> {
        if self.gens.is_none() {
            return Ok(());
        }
        output::line(format!(
            "\nEach machine's system now ({}/machines/<id>: current-system link; system-profile generations):",
            self.shown
        ))?;
        for (id, _) in MACHINES {
            let dir = self.path(&format!("machines/{id}"));
            let now = generations::link_target(&dir.join("current-system"))
                .unwrap_or_else(|| "nothing".into());
            let profile: Vec<String> =
                generations::profile_generations(&dir.join("system-profile"))
                    .iter()
                    .map(|(n, p)| format!("{n} {}", generations::short(p)))
                    .collect();
            output::line(format!(
                "  {id:<7} current-system -> {now}   profile: {}",
                profile.join(", ")
            ))?;
        }
        Ok(())
    }

    /// The demo proper; returns the ids of the two rollouts.
    fn run(
        &mut self,
        args: &DemoArgs,
        removed: bool,
        keep_running: &AtomicBool,
    ) -> Result<[String; 2]> {
        if let Some(why) = &self.dry {
            self.say(format!(
                "This demo runs dry: {why}, so the agents run with --dry-run, nothing is built or switched, and each machine pretends it already runs its release; install Nix (Debian: apt-get install nix-bin) to watch them deploy real generations."
            ))?;
        }
        self.say(format!(
            "nixfleet demo: a control plane, {} {} and two rollouts on 127.0.0.1, in {}",
            MACHINES.len(),
            if self.dry.is_some() {
                "dry-run agents"
            } else {
                "agents that switch real generations"
            },
            self.shown
        ))?;
        if removed {
            self.say("(removed the previous demo found there)")?;
        }
        if self.dry.is_none() {
            self.build_generations()?;
        }
        self.mint_pki()?;
        // One for the control plane, one where nothing will listen.
        let [cp_port, dead_port] = crate::launch::free_ports()?;
        let mut settings = self.start_control_plane(cp_port)?;
        let key = bootstrap::mint(&Client::new(&settings)?, "demo-admin")?;
        write_private(&self.path("api-key"), &format!("{}\n", key.key))?;
        settings.api_key = Some(key.key);
        self.write_project_file(cp_port)?;
        self.say(format!(
            "Admin API key minted with `bootstrap`, kept in {}/api-key (your credentials file is not touched)",
            self.shown
        ))?;
        self.start_agents(cp_port, dead_port)?;
        let client = Client::new(&settings)?;
        self.wait_for_machines(&client)?;
        machines::status(&settings, status_args())?;

        let release = release::post(&settings, &self.release_request())?;
        let mut events = Events::new(&client);
        events.skip_to_end()?;

        self.say("Rollout 1: canary on tag web (1 machine, then the rest), gated on health")?;
        let canary = rollout::create(&settings, &rollout_args(&release, "canary", "web"))?;
        self.follow_to(&client, &mut events, "canary", &canary, "RolloutCompleted")?;

        if self.gens.is_some() {
            self.say(
                "Rollout 2: all at once on tag db, whose G2 is broken (its switch-to-configuration exits 1)",
            )?;
        } else {
            self.say(format!(
                "Rollout 2: all at once on tag db, whose health check fails (nothing listens on 127.0.0.1:{dead_port})"
            ))?;
        }
        let gated = rollout::create(&settings, &rollout_args(&release, "all_at_once", "db"))?;
        self.follow_to(&client, &mut events, "db", &gated, "RolloutPaused")?;

        output::line("")?;
        machines::status(&settings, status_args())?;
        self.show_machines()?;
        for id in [&canary, &gated] {
            output::line(format!("\n$ nixfleet timeline {id}"))?;
            crate::replay::timeline(&settings, id)?;
        }
        if args.keep_running {
            keep_running.store(true, Ordering::SeqCst);
            output::line(format!(
                "\nThe control plane and the agents keep running; press Ctrl-C to stop them. Meanwhile, in another terminal:\n  cd {} && nixfleet --api-key \"$(cat api-key)\" status\n  cd {} && nixfleet --api-key \"$(cat api-key)\" rollout resume {gated}",
                self.shown, self.shown
            ))?;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                self.fleet.check_alive()?;
            }
        }
        Ok([canary, gated])
    }

    /// What is left in the directory, and how to look at a live fleet.
    fn leftovers(&self, [canary, gated]: &[String; 2]) -> String {
        let gens = if self.gens.is_some() {
            "generations/ (the Nix expression and the GC roots of the generations), "
        } else {
            ""
        };
        format!(
            "Left in {d} for a look: cp/ (the control plane's data directory), logs/ (one per process), machines/ (each one's profile and current-system link), {gens}pki/ (a dev CA for this demo only).\n\
             Read its event log offline with the replay tool:\n  \
             nixfleet events --data-dir {d}/cp\n  \
             nixfleet timeline --data-dir {d}/cp {canary}\n  \
             nixfleet what-if --data-dir {d}/cp {gated} --failure-threshold 1\n  \
             nixfleet verify --data-dir {d}/cp\n\
             For a live fleet to poke at: nixfleet demo --keep-running, then in another terminal: cd {d} && nixfleet --api-key \"$(cat api-key)\" status",
            d = self.shown
        )
    }

    fn mint_pki(&self) -> Result<()> {
        let dir = self.path("pki");
        pki::init(&pki::InitArgs {
            dir: dir.clone(),
            cn: "nixfleet demo CA".into(),
            days: 30,
            force: false,
        })?;
        let issue = |name: &str, server: bool| {
            pki::issue(&pki::IssueArgs {
                dir: dir.clone(),
                name: name.into(),
                server,
                san: if server {
                    vec!["127.0.0.1".into(), "localhost".into()]
                } else {
                    vec![]
                },
                days: 30,
                force: false,
            })
        };
        issue("cp", true)?;
        issue("operator", false)?;
        for (id, _) in MACHINES {
            issue(id, false)?;
        }
        self.say(format!(
            "PKI: a dev CA and certificates for cp, operator and each machine (CN = machine id), in {}/pki",
            self.shown
        ))
    }

    /// Starts the control plane and waits until it answers; returns the operator's settings
    /// (without an API key yet).
    fn start_control_plane(&self, port: u16) -> Result<Settings> {
        std::fs::create_dir_all(self.path("logs"))
            .map_err(|e| CliError::failed(format!("cannot create {}/logs: {e}", self.shown)))?;
        let pki = self.path("pki");
        let mut cmd = ControlPlaneLaunch {
            bin: &self.bins.cp,
            port,
            data_dir: self.path("cp"),
            pki: &pki,
        }
        .command();
        cmd.args(["--log-format", "human"]);
        self.fleet.spawn(
            "the control plane",
            cmd,
            &self.path("logs/control-plane.log"),
        )?;
        let settings = Settings {
            control_plane_url: format!("https://127.0.0.1:{port}"),
            control_plane_urls: vec![format!("https://127.0.0.1:{port}")],
            control_plane_url_configured: true,
            api_key: None,
            ca_cert: Some(pki.join(pki::CA_CERT)),
            client_cert: Some(pki.join("operator-cert.pem")),
            client_key: Some(pki.join("operator-key.pem")),
            json: false,
            verbose: self.verbose,
            cache_url: None,
            push_to: None,
            hook: CacheHook::default(),
            deploy: DeployDefaults::default(),
            project_file: None,
            credentials_file: None,
            sources: BTreeMap::new(),
        };
        let client = Client::new(&settings)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            self.fleet.check_alive()?;
            match client.get::<Readiness>("/ready") {
                Ok(r) if r.ready => break,
                _ if Instant::now() >= deadline => {
                    return Err(CliError::failed(format!(
                        "the control plane did not become ready within {}s; see {}/logs/control-plane.log",
                        START_DEADLINE.as_secs(),
                        self.shown
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.say(format!(
            "Control plane: https://127.0.0.1:{port}, mutual TLS, event log (sled) in {}/cp",
            self.shown
        ))?;
        Ok(settings)
    }

    /// `.nixfleet.toml` in the demo directory, so `cd <dir> && nixfleet …` talks to the demo.
    fn write_project_file(&self, port: u16) -> Result<()> {
        let text = format!(
            "# Written by `nixfleet demo`: the demo's control plane (while it runs).\n\
             [control-plane]\nurl = \"https://127.0.0.1:{port}\"\nca-cert = \"pki/ca.pem\"\n\n\
             [tls]\nclient-cert = \"pki/operator-cert.pem\"\nclient-key = \"pki/operator-key.pem\"\n"
        );
        let path = self.path(crate::settings::PROJECT_FILE);
        std::fs::write(&path, text)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
    }

    /// A machine's health checks: on a real run, that its running generation holds a `healthy`
    /// file (after booting it into its G1); dry, `true` on web and a dead port on db.
    fn health_checks(
        &self,
        id: &str,
        tag: &str,
        dir: &std::path::Path,
        dead_port: u16,
    ) -> Result<HealthChecksConfig> {
        let current = dir.join("current-system");
        let command = |command: String| HealthChecksConfig {
            command: vec![CommandCheck {
                name: "app".into(),
                command,
                interval: None,
                timeout: 5,
            }],
            ..HealthChecksConfig::default()
        };
        Ok(if let Some(gens) = &self.gens {
            // The machine boots into its G1; its check passes when the running generation
            // holds a `healthy` file.
            generations::boot(&dir.join("system-profile"), &current, &gens.of(id).g1)?;
            command(format!("test -e '{}/healthy'", current.display()))
        } else if tag == "web" {
            command("true".into())
        } else {
            HealthChecksConfig {
                http: vec![HttpCheck {
                    url: format!("http://127.0.0.1:{dead_port}/health"),
                    interval: None,
                    timeout: 1,
                    expected_status: 200,
                }],
                ..HealthChecksConfig::default()
            }
        })
    }

    fn start_agents(&self, cp_port: u16, dead_port: u16) -> Result<()> {
        let pki = self.path("pki");
        for (id, tag) in MACHINES {
            let dir = self.path("machines").join(id);
            std::fs::create_dir_all(dir.join("state"))
                .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
            let current = dir.join("current-system");
            let checks = self.health_checks(id, tag, &dir, dead_port)?;
            if self.gens.is_none() {
                // The machine "runs" its release path already: see the module documentation.
                std::os::unix::fs::symlink(generations::release_path(id), &current).map_err(
                    |e| CliError::failed(format!("cannot create {}: {e}", current.display())),
                )?;
            }
            let health = dir.join("health-checks.json");
            std::fs::write(
                &health,
                serde_json::to_string_pretty(&checks).expect("health config serializes"),
            )
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", health.display())))?;
            let mut cmd = AgentLaunch {
                bin: &self.bins.agent,
                cp_port,
                machine_id: id,
                tags: tag,
                pki: &pki,
                state_dir: dir.join("state"),
                profile: dir.join("system-profile"),
                current_system: current.clone(),
                health_config: health.clone(),
                dry_run: self.gens.is_none(),
            }
            .command();
            cmd.args(["--log-format", "human"]);
            self.fleet.spawn(
                &format!("the agent of {id}"),
                cmd,
                &self.path(&format!("logs/{id}.log")),
            )?;
        }
        if let Some(gens) = &self.gens {
            self.say(format!(
                "Machines booted into their G1 (nix-env --set on machines/<id>/system-profile, and the current-system link), e.g. web-01 runs {}",
                gens.of("web-01").g1
            ))?;
            self.say(
                "Agents (switching for real, health every second): web-01, web-02, web-03 tagged web, db-01 tagged db; check `test -e <current-system>/healthy`",
            )
        } else {
            self.say(format!(
                "Agents (dry run, health every second): web-01, web-02, web-03 tagged web, check `true`; db-01 tagged db, check GET http://127.0.0.1:{dead_port}/health"
            ))
        }
    }

    /// Waits until every machine registered itself and reported its health once.
    fn wait_for_machines(&self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            self.fleet.check_alive()?;
            let listed: Vec<MachineStatus> = client.get("/api/v1/machines")?;
            let reported = listed
                .iter()
                .filter(|m| !m.health.is_empty() && m.health != "unknown")
                .count();
            if reported == MACHINES.len() {
                return self.say(format!(
                    "{} machines registered themselves with their first report (CN of their certificate = machine id):",
                    MACHINES.len()
                ));
            }
            if Instant::now() >= deadline {
                return Err(CliError::failed(format!(
                    "only {reported} of {} agents reported within {}s; see {}/logs",
                    MACHINES.len(),
                    START_DEADLINE.as_secs(),
                    self.shown
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The path the release asks of `host`: its G2, or (dry) a made-up path.
    fn target(&self, host: &str) -> String {
        match &self.gens {
            Some(gens) => gens.of(host).g2.clone(),
            None => generations::release_path(host),
        }
    }

    fn release_request(&self) -> CreateReleaseRequest {
        CreateReleaseRequest {
            flake_ref: Some(if self.gens.is_some() {
                format!(
                    "nixfleet-demo (G2 of each machine, built in {}/generations)",
                    self.shown
                )
            } else {
                "nixfleet-demo (made-up store paths)".into()
            }),
            flake_rev: None,
            cache_url: None,
            entries: MACHINES
                .iter()
                .map(|(id, tag)| ReleaseEntry {
                    hostname: id.to_string(),
                    store_path: self.target(id),
                    platform: "x86_64-linux".into(),
                    tags: vec![tag.to_string()],
                })
                .collect(),
        }
    }

    /// [`Demo::follow`]s the `what` rollout, which must end with the event kind `expected`.
    fn follow_to(
        &self,
        client: &Client,
        events: &mut Events<'_>,
        what: &str,
        rollout: &str,
        expected: &str,
    ) -> Result<()> {
        let end = self.follow(client, events, rollout)?;
        if end != expected {
            return Err(CliError::failed(format!(
                "the {what} rollout {rollout} ended with {end}, not {expected}; see {}/logs",
                self.shown
            )));
        }
        Ok(())
    }

    /// Prints a line per batch transition of `rollout` (and each machine's first health report
    /// in its batch) from the events long-poll; returns the kind of the event that ended it.
    fn follow(&self, client: &Client, events: &mut Events<'_>, rollout: &str) -> Result<String> {
        let stream = format!("rollout:{rollout}");
        let deadline = Instant::now() + ROLLOUT_DEADLINE;
        // Machines of the started batch whose health report we have not shown yet.
        let mut waiting: BTreeSet<String> = BTreeSet::new();
        // Machines of the started batch whose switch (real runs) we have not shown yet.
        let mut switching: BTreeSet<String> = BTreeSet::new();
        loop {
            self.fleet.check_alive()?;
            if Instant::now() >= deadline {
                return Err(CliError::failed(format!(
                    "rollout {rollout} did not finish within {}s; see {}/logs",
                    ROLLOUT_DEADLINE.as_secs(),
                    self.shown
                )));
            }
            for r in events.poll(EVENTS_WAIT_SECS)? {
                if r.kind == "HealthReported" {
                    let m = str_at(&r.data, "machine");
                    // Only a report on the release path counts (before its switch, a machine
                    // reports on what it ran).
                    if str_at(&r.data, "generation") == self.target(&m) && waiting.remove(&m) {
                        self.say(format!("  {m}: {}", health_summary(&r.data)))?;
                    }
                    continue;
                }
                if r.kind == "ReportReceived" {
                    let m = str_at(&r.data, "machine");
                    if switching.contains(&m) {
                        if let Some(line) = self.switch_line(&m, &r.data) {
                            switching.remove(&m);
                            self.say(line)?;
                        }
                    }
                    continue;
                }
                if r.stream != stream {
                    continue;
                }
                match r.kind.as_str() {
                    "BatchStarted" => {
                        let machines = batch_machines(&r.data);
                        self.say(format!(
                            "batch {} started: {} asked to run the release{}",
                            num_at(&r.data, "batch_index"),
                            machines.join(", "),
                            if self.gens.is_some() { " (G2)" } else { "" }
                        ))?;
                        if self.gens.is_some() {
                            switching = machines.iter().cloned().collect();
                        }
                        waiting = machines.into_iter().collect();
                    }
                    "BatchSucceeded" | "BatchFailed" => {
                        waiting.clear();
                        switching.clear();
                        self.say(batch_decision(&r))?;
                    }
                    "RolloutCompleted" | "RolloutCancelled" => {
                        self.say(format!("rollout {rollout} {}", end_word(&r.kind)))?;
                        return Ok(r.kind);
                    }
                    "RolloutPaused" | "RolloutFailed" | "RolloutReverted" => {
                        let d: RolloutDetail =
                            client.get(&format!("/api/v1/rollouts/{rollout}"))?;
                        self.say(format!(
                            "rollout {rollout} {}: {}{}",
                            end_word(&r.kind),
                            str_at(&r.data, "reason"),
                            unhealthy_reasons(&d)
                        ))?;
                        if r.kind == "RolloutPaused" {
                            self.say(format!(
                                "  (an operator would fix the cause, then: nixfleet rollout resume {rollout})"
                            ))?;
                        }
                        return Ok(r.kind);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn status_args() -> machines::StatusArgs {
    machines::StatusArgs {
        stale_threshold: 600,
        watch: false,
        interval: 2,
        check: false,
    }
}

fn rollout_args(release: &str, strategy: &str, tag: &str) -> rollout::CreateArgs {
    rollout::CreateArgs {
        release: release.to_string(),
        batches: rollout::BatchArgs {
            strategy: Some(strategy.to_string()),
            batch_size: vec![],
            failure_threshold: Some("0".into()),
            on_failure: Some("pause".into()),
            health_timeout: Some(HEALTH_TIMEOUT_SECS),
        },
        tags: vec![tag.to_string()],
        hosts: vec![],
        cache_url: None,
        seed: None,
        plan: false,
        wait: false,
        wait_timeout: 0,
    }
}
