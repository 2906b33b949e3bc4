//! A supervisor of child processes: each child in its own process group with its output in a
//! log file, a check that none has exited, and a stop of every group (SIGTERM, then SIGKILL
//! after [`STOP_GRACE`]) at the end, on an error, on a panic and on Ctrl-C.
//!
//! `nixfleet demo` runs its control plane and agents under one; the CLI's integration tests run
//! theirs the same way (`cli/tests/common`).

use crate::error::{CliError, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL when stopping the children.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The children, in the order they were started; stopped on drop.
#[derive(Default)]
pub struct Supervisor {
    procs: Mutex<Vec<Proc>>,
    interrupted: AtomicBool,
    /// Held for the whole of a stop, so that a second stop (the signal thread's while the main
    /// thread stops on an error, or the other way round) waits until every child is gone
    /// instead of finding the list empty and letting the process exit under the first.
    stopping: Mutex<()>,
    stopped: AtomicUsize,
}

struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, Vec<Proc>> {
        // A panic elsewhere must not stop us from stopping the children.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `cmd` in its own process group, stdout and stderr into `log` (created), without
    /// the caller's NIXFLEET_* variables that `cmd` does not set itself (they would override
    /// the defaults of the flags it passes). `name` is for messages ("the control plane").
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<()> {
        let file = std::fs::File::create(log)
            .map_err(|e| CliError::failed(format!("cannot create {}: {e}", log.display())))?;
        let err_file = file
            .try_clone()
            .map_err(|e| CliError::failed(format!("cannot reopen {}: {e}", log.display())))?;
        let set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NIXFLEET_") && !set.contains(&k) {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            CliError::failed(format!(
                "cannot start {}: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        self.lock().push(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
        });
        Ok(())
    }

    /// Fails if a child has exited, naming it and its log.
    pub fn check_alive(&self) -> Result<()> {
        for p in self.lock().iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(CliError::failed(format!(
                    "{} exited ({status}); see {}",
                    p.name,
                    p.log.display()
                )));
            }
        }
        Ok(())
    }

    /// Whether a signal stopped the children ([`Supervisor::stop_on_signal`]).
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Stops every child and its process group, the last started first; returns how many
    /// were stopped in all (by this call and any earlier one). A call made while another is
    /// stopping returns once that one is done.
    pub fn stop(&self) -> usize {
        let _one_at_a_time = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        let mut procs = std::mem::take(&mut *self.lock());
        // Agents first, so they do not spend their last moments retrying a stopped control plane.
        procs.reverse();
        for p in procs.iter_mut() {
            if matches!(p.child.try_wait(), Ok(None)) {
                signal_group(&p.child, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in procs.iter_mut() {
            loop {
                match p.child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        signal_group(&p.child, rustix::process::Signal::KILL);
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
        self.stopped.fetch_add(procs.len(), Ordering::SeqCst) + procs.len()
    }

    /// On SIGINT or SIGTERM: mark the supervisor interrupted, stop the children, and exit the
    /// process with the code `then` returns, given how many children were stopped.
    pub fn stop_on_signal(
        self: &Arc<Self>,
        then: impl FnOnce(usize) -> i32 + Send + 'static,
    ) -> Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .map_err(|e| CliError::failed(format!("cannot install signal handlers: {e}")))?;
        let this = Arc::clone(self);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    this.interrupted.store(true, Ordering::SeqCst);
                    let n = this.stop();
                    std::process::exit(then(n));
                }
            })
            .map_err(|e| CliError::failed(format!("cannot start the signal thread: {e}")))?;
        Ok(())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a shared supervisor's children when dropped, so that an early return or a panic
/// leaves no process behind even while a signal thread holds the supervisor.
pub struct StopOnDrop<'a>(pub &'a Supervisor);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn signal_group(child: &Child, signal: rustix::process::Signal) {
    // The child leads its own group (process_group(0)), so its pid is the group id.
    let _ = rustix::process::kill_process_group(rustix::process::Pid::from_child(child), signal);
}
