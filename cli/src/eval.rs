//! One evaluation of a flake's selected hosts: for each, its toplevel derivation, out path,
//! platform and agent tags, from a single `nix eval` of `nixosConfigurations`.
//!
//! Evaluating a flake is the slow part of a release (seconds per NixOS configuration, and each
//! `nix` process starts over), so all hosts are evaluated in one process. The `--hosts` globs
//! are applied inside that evaluation (as `builtins.match` regexes), so unselected hosts are
//! never evaluated. A host whose configuration throws or fails an assertion is caught by
//! `builtins.tryEval` and reported alone; an error `tryEval` cannot catch (a type error, an
//! undefined variable) fails the whole evaluation, and only then is each host evaluated on its
//! own to tell the broken ones from the rest.

use crate::nix::{self, CommandFailed};
use nixfleet_ids::StorePath;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Hosts evaluated at once when the single evaluation failed and each host is tried alone.
const FALLBACK_JOBS: usize = 4;

/// The expression applied to `nixosConfigurations`. `SELECT` is a Nix list of regexes; the
/// `nixfleet-select:` comment carries the same globs for the VM tests' nix shim, which cannot
/// evaluate Nix.
const EXPR: &str = r#"cs: let
  # nixfleet-select: GLOBS
  sel = n: builtins.any (r: builtins.match r n != null) SELECT;
  strict = v: builtins.deepSeq v v;
  top = c: let t = c.config.system.build.toplevel; in
    strict { drv = t.drvPath; out = t.outPath; system = t.system or ""; };
  tags = c: let r = builtins.tryEval (strict (c.config.services.nixfleet-agent.tags or [ ])); in
    if r.success then r.value else [ ];
  host = n: let c = cs.${n}; r = builtins.tryEval (top c); in
    if r.success then r.value // { ok = true; tags = tags c; } else { ok = false; };
  names = builtins.filter sel (builtins.attrNames cs);
in {
  all = builtins.attrNames cs;
  hosts = builtins.listToAttrs (map (n: { name = n; value = host n; }) names);
}"#;

/// A host that evaluated.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// Its name in `nixosConfigurations`.
    pub host: String,
    /// The toplevel's derivation (`.drv` path).
    pub drv: String,
    /// The toplevel's out path: the system store path of the release.
    pub out: StorePath,
    /// `toplevel.system`, "" when absent.
    pub platform: String,
    /// `services.nixfleet-agent.tags`, empty without the agent module.
    pub tags: Vec<String>,
}

/// A host whose evaluation failed.
#[derive(Debug, Clone)]
pub struct EvalFailed {
    /// Its name.
    pub host: String,
    /// Nix's error, its last lines.
    pub error: String,
    /// The command that shows the error in full.
    pub reproduce: String,
}

/// The outcome of evaluating the selected hosts.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Every host of the flake, selected or not (for error messages).
    pub all: Vec<String>,
    /// The selected hosts that evaluated, in name order.
    pub ok: Vec<Evaluated>,
    /// The selected hosts that did not.
    pub failed: Vec<EvalFailed>,
}

#[derive(Deserialize)]
struct Answer {
    all: Vec<String>,
    hosts: BTreeMap<String, HostAnswer>,
}

#[derive(Deserialize)]
struct HostAnswer {
    ok: bool,
    #[serde(default)]
    drv: String,
    #[serde(default)]
    out: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// A shell glob (`*`, `?`) as a POSIX extended regex for `builtins.match`, written as a Nix
/// string. Host names hold letters, digits, '-', '_' and '.'; a glob with any other character
/// can match no usable host, so it becomes a regex that matches only "/", which no host is.
fn glob_regex(glob: &str) -> String {
    let mut re = String::new();
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '.' => re.push_str("[.]"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => re.push(c),
            _ => return "\"[/]\"".to_string(),
        }
    }
    format!("\"{re}\"")
}

/// The `--apply` expression selecting the hosts that match any of `globs` (comma-separated).
fn expression(globs: &[&str]) -> String {
    let regexes: Vec<String> = globs.iter().map(|g| glob_regex(g)).collect();
    EXPR.replace("GLOBS", &globs.join(","))
        .replace("SELECT", &format!("[ {} ]", regexes.join(" ")))
}

/// The globs of `--hosts`, trimmed, empty ones dropped.
pub fn globs(hosts: &str) -> Vec<&str> {
    hosts
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect()
}

/// One `nix eval` of the hosts matching `globs`.
fn eval_once(flake: &str, globs: &[&str], verbose: u8) -> Result<Answer, CommandFailed> {
    let attr = format!("{flake}#nixosConfigurations");
    let what = format!("nix eval {attr}");
    let out = nix::run(
        nix::nix().args(["eval", "--json", &attr, "--apply", &expression(globs)]),
        &what,
        verbose,
    )?;
    serde_json::from_str(&out).map_err(|e| CommandFailed {
        what,
        code: Some(0),
        stderr: format!("unexpected output ({e}): {}", out.trim()),
    })
}

/// The command that shows why `host` does not evaluate.
pub fn reproduce_eval(flake: &str, host: &str) -> String {
    format!(
        "nix --extra-experimental-features 'nix-command flakes' eval --raw {}",
        crate::process::quote(&format!("{}.drvPath", nix::toplevel_attr(flake, host)))
    )
}

/// Nix's error for a host that `tryEval` caught (its message is not in the answer).
fn eval_error(flake: &str, host: &str, verbose: u8) -> String {
    let attr = format!("{}.drvPath", nix::toplevel_attr(flake, host));
    match nix::run(
        nix::nix().args(["eval", "--raw", &attr]),
        "nix eval",
        verbose,
    ) {
        Ok(_) => "the configuration threw or failed an assertion".to_string(),
        Err(e) => tail(&e.stderr, 8),
    }
}

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sort_answer(flake: &str, answer: Answer, verbose: u8) -> Result<Evaluation, String> {
    let mut e = Evaluation {
        all: answer.all,
        ..Evaluation::default()
    };
    for (host, h) in answer.hosts {
        if h.ok {
            let out = StorePath::try_from(h.out.as_str())
                .map_err(|why| format!("{host}: toplevel.outPath: {why}"))?;
            e.ok.push(Evaluated {
                host,
                drv: h.drv,
                out,
                platform: h.system,
                tags: h.tags,
            });
        } else {
            e.failed.push(EvalFailed {
                error: eval_error(flake, &host, verbose),
                reproduce: reproduce_eval(flake, &host),
                host,
            });
        }
    }
    Ok(e)
}

/// Evaluates the hosts of `flake` matching `hosts` (comma-separated globs): once for all of
/// them, or, if that evaluation fails, each host alone. `Err` means the flake itself could not
/// be read (no such flake, no `nixosConfigurations`).
pub fn evaluate(flake: &str, hosts: &str, verbose: u8) -> Result<Evaluation, CommandFailed> {
    let globs = globs(hosts);
    let whole = match eval_once(flake, &globs, verbose) {
        Ok(answer) => return sort_answer(flake, answer, verbose).map_err(|why| bad(flake, why)),
        Err(e) => e,
    };
    // Something tryEval cannot catch: find out which hosts it is.
    let all = nix::discover_hosts(flake, verbose).map_err(|_| whole)?;
    let selected = nix::filter_hosts(&all, hosts);
    let next = AtomicUsize::new(0);
    let answers: Mutex<Vec<Result<Answer, (String, CommandFailed)>>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..FALLBACK_JOBS.min(selected.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(host) = selected.get(i) else { break };
                let exact = [host.as_str()];
                let r = eval_once(flake, &exact, verbose).map_err(|e| (host.clone(), e));
                answers
                    .lock()
                    .expect("an evaluation thread panicked")
                    .push(r);
            });
        }
    });
    let mut e = Evaluation {
        all,
        ..Evaluation::default()
    };
    for r in answers.into_inner().expect("an evaluation thread panicked") {
        match r {
            Ok(answer) => {
                let one = sort_answer(flake, answer, verbose).map_err(|why| bad(flake, why))?;
                e.ok.extend(one.ok);
                e.failed.extend(one.failed);
            }
            Err((host, err)) => e.failed.push(EvalFailed {
                error: tail(&err.stderr, 8),
                reproduce: reproduce_eval(flake, &host),
                host,
            }),
        }
    }
    e.ok.sort_by(|a, b| a.host.cmp(&b.host));
    e.failed.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(e)
}

/// [`evaluate`] for a command: an unreadable flake or globs that match no host are usage
/// errors (exit 2) that say what to fix.
pub fn select(flake: &str, hosts: &str, verbose: u8) -> crate::error::Result<Evaluation> {
    use crate::error::CliError;
    let e = evaluate(flake, hosts, verbose).map_err(|e| {
        CliError::usage(format!(
            "{e}; is --flake {flake} a flake with nixosConfigurations?"
        ))
    })?;
    if e.ok.is_empty() && e.failed.is_empty() {
        return Err(CliError::usage(format!(
            "--hosts {hosts:?} matches none of the flake's hosts ({}); adjust the globs",
            e.all.join(", ")
        )));
    }
    Ok(e)
}

impl Evaluation {
    /// How many hosts were selected, evaluated or not.
    pub fn selected(&self) -> usize {
        self.ok.len() + self.failed.len()
    }
}

fn bad(flake: &str, why: String) -> CommandFailed {
    CommandFailed {
        what: format!("nix eval {flake}#nixosConfigurations"),
        code: Some(0),
        stderr: why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_regexes_that_match_host_names_only() {
        assert_eq!(glob_regex("web-*"), "\"web-.*\"");
        assert_eq!(glob_regex("db-0?.eu"), "\"db-0.[.]eu\"");
        assert_eq!(glob_regex("x;y"), "\"[/]\"");
        let e = expression(&["web-*", "db"]);
        assert!(e.contains("# nixfleet-select: web-*,db\n"), "{e}");
        assert!(e.contains("[ \"web-.*\" \"db\" ]"), "{e}");
    }
}
