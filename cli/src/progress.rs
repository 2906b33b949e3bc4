//! Per-host progress of `release create` and `deploy --ssh` on stderr: bars on a terminal
//! (indicatif), plain `[host] …` lines otherwise (logs, CI, pipes).
//!
//! On a terminal, one line sums up the fleet and each host that is busy has a spinner; a host
//! that ends is printed once above the bars, so failures stay on screen after the bars go.
//! Plain mode prints each change of a host's state (and at most one "N of M" line per host
//! every few seconds), so a long build is never silent.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Plain mode repeats a host's "N of M" at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Where one host stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// Its toplevel is being built: derivations of its closure built so far, of how many
    /// (`None` when its closure could not be read).
    Building {
        /// Built.
        done: usize,
        /// To build.
        total: Option<usize>,
    },
    /// Any other step, in words ("pushing", "copying …", "switching").
    Working(String),
    /// Finished well, with what it ended on.
    Done(String),
    /// Failed, with the step and why.
    Failed(String),
    /// Left out (unreachable with --skip-unreachable).
    Skipped(String),
}

impl HostState {
    fn text(&self) -> String {
        match self {
            HostState::Building { total: Some(0), .. } => "nothing to build".to_string(),
            HostState::Building {
                done,
                total: Some(t),
            } => {
                format!("building ({done} of {t} derivations)")
            }
            HostState::Building { total: None, .. } => "building".to_string(),
            HostState::Working(w) => w.clone(),
            HostState::Done(d) => d.clone(),
            HostState::Failed(f) => format!("FAILED {f}"),
            HostState::Skipped(s) => format!("skipped: {s}"),
        }
    }

    fn ended(&self) -> bool {
        matches!(
            self,
            HostState::Done(_) | HostState::Failed(_) | HostState::Skipped(_)
        )
    }
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    hosts: HashMap<String, ProgressBar>,
    ended: usize,
    failed: usize,
    count: usize,
}

enum Mode {
    Bars(Mutex<Bars>),
    Plain(Mutex<HashMap<String, (String, Instant)>>),
}

/// The progress display of one command.
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Bars when stderr is a terminal (and `NIXFLEET_PROGRESS` is not `plain`), else lines.
    pub fn new(what: &str, hosts: usize) -> Progress {
        let plain = !std::io::stderr().is_terminal()
            || std::env::var("NIXFLEET_PROGRESS").is_ok_and(|v| v == "plain");
        if plain {
            return Progress {
                mode: Mode::Plain(Mutex::new(HashMap::new())),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(hosts as u64));
        total.set_style(
            ProgressStyle::with_template(
                "{elapsed:>4} [{bar:30}] {pos}/{len} hosts {wide_msg} {prefix}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        total.set_message(what.to_string());
        total.enable_steady_tick(Duration::from_millis(200));
        Progress {
            mode: Mode::Bars(Mutex::new(Bars {
                multi,
                total,
                hosts: HashMap::new(),
                ended: 0,
                failed: 0,
                count: hosts,
            })),
        }
    }

    /// Records that `host` is now in `state`.
    pub fn set(&self, host: &str, state: HostState) {
        match &self.mode {
            Mode::Plain(last) => {
                let text = state.text();
                let mut last = last.lock().expect("progress lock");
                let now = Instant::now();
                let print = match last.get(host) {
                    None => true,
                    Some((prev, _)) if *prev == text => false,
                    Some((_, at)) => match &state {
                        HostState::Building { done, total } => {
                            *done == 0
                                || Some(*done) == *total
                                || now.duration_since(*at) >= PLAIN_EVERY
                        }
                        _ => true,
                    },
                };
                if print {
                    eprintln!("[{host}] {text}");
                    last.insert(host.to_string(), (text, now));
                }
            }
            Mode::Bars(bars) => {
                let mut b = bars.lock().expect("progress lock");
                if state.ended() {
                    if let Some(bar) = b.hosts.remove(host) {
                        bar.finish_and_clear();
                        b.multi.remove(&bar);
                    }
                    b.ended += 1;
                    if matches!(state, HostState::Failed(_)) {
                        b.failed += 1;
                    }
                    let mark = match state {
                        HostState::Done(_) => "✓",
                        HostState::Failed(_) => "✗",
                        _ => "-",
                    };
                    let _ = b.multi.println(format!("{mark} {host} {}", state.text()));
                    b.total.set_position(b.ended as u64);
                    let failed = b.failed;
                    if failed > 0 {
                        b.total.set_prefix(format!("{failed} failed"));
                    }
                    return;
                }
                let bar = match b.hosts.get(host) {
                    Some(bar) => bar.clone(),
                    None => {
                        let bar = b.multi.insert_from_back(0, ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {prefix:20} {wide_msg}")
                                .expect("a valid template"),
                        );
                        bar.set_prefix(host.to_string());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        b.hosts.insert(host.to_string(), bar.clone());
                        bar
                    }
                };
                bar.set_message(state.text());
            }
        }
    }

    /// Prints a line above the bars (or as is, in plain mode).
    pub fn println(&self, line: &str) {
        match &self.mode {
            Mode::Plain(_) => eprintln!("{line}"),
            Mode::Bars(b) => {
                let _ = b.lock().expect("progress lock").multi.println(line);
            }
        }
    }

    /// Removes the bars; what was printed above them stays.
    pub fn finish(&self) {
        if let Mode::Bars(b) = &self.mode {
            let mut b = b.lock().expect("progress lock");
            for (_, bar) in b.hosts.drain() {
                bar.finish_and_clear();
            }
            let count = b.count;
            b.total.set_position(b.ended.min(count) as u64);
            b.total.finish_and_clear();
        }
    }
}
