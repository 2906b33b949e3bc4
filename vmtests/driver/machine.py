"""One test host: a systemd-nspawn container with systemd as PID 1, driven like a nixosTest machine.

Why: the seed's test scripts call machine.succeed(), wait_for_unit(), crash(),
block() and friends. Here each machine is a container booted from the cached
Debian root filesystem, in its own network namespace, with its own /nix store,
and these methods act on its real systemd through `nsenter` into the
container's PID 1.

Disk semantics follow a NixOS test VM: the root is an overlay whose lower layers
are the node's generated files and the cached root filesystem (never written),
and whose upper layer is this run's disk for the node. crash() and start() keep
that disk, as a VM keeps its qcow2 image; the next run starts from scratch.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import log

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 900
CGROUP_HIERARCHIES = ("systemd", "unified")


class MachineError(AssertionError):
    """A command or wait on a machine did not do what the test asked."""


def python_name(node: str) -> str:
    """The Python variable a test script uses for node `node` (as nixosTest does)."""
    return re.sub(r"[^0-9a-zA-Z_]", "_", node)


class Machine:
    def __init__(self, name: str, run_dir: Path, rootfs: Path, netns: str, binds: list[tuple[str, str, bool]],
                 network, cgroup_name: str):
        self.name = name
        self.dir = run_dir
        self.rootfs = rootfs
        self.netns = netns
        self.binds = binds
        self.network = network
        self.cgroup_name = cgroup_name
        self.layer = run_dir / "layer"
        self.upper = run_dir / "upper"
        self.work = run_dir / "work"
        self.root = run_dir / "root"
        self.console_log = run_dir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.mounted = False
        self.booted = False

    # -- lifecycle ---------------------------------------------------------

    def _mount(self) -> None:
        if self.mounted:
            return
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.layer}:{self.rootfs},upperdir={self.upper},workdir={self.work}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)], check=True)
        self.mounted = True

    def _cgroup_dirs(self) -> list[Path]:
        return [Path("/sys/fs/cgroup") / h / self.cgroup_name for h in CGROUP_HIERARCHIES]

    def _enter_cgroup(self) -> None:
        # Runs in the child between fork and exec: the container gets its own cgroup
        # subtree; without it the containers' systemds fight over one cgroup.
        for d in self._cgroup_dirs():
            with open(d / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def is_up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Boot the container (no-op when it runs). Does not wait for the boot to finish."""
        if self.is_up():
            return
        self._mount()
        for d in self._cgroup_dirs():
            d.mkdir(parents=True, exist_ok=True)
        args = [
            "systemd-nspawn", "--quiet", "--boot", "--directory", str(self.root),
            "--register=no", "--keep-unit", f"--machine={self.name}", f"--hostname={self.name}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
            # The network namespace is the container's own: let it run its firewall (nftables).
            "--capability=CAP_NET_ADMIN",
        ]
        for src, dst, ro in self.binds:
            args.append(f"--bind{'-ro' if ro else ''}={src}:{dst}")
        log.info(self.name, "starting container")
        out = open(self.console_log, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     preexec_fn=self._enter_cgroup)
        out.close()
        self.leader = None
        self.booted = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MachineError(f"{self.name}: systemd-nspawn exited with {self.proc.returncode}; "
                                   f"see {self.console_log}:\n{self.console_log.read_text()[-2000:]}")
            leader = self._find_leader()
            if leader:
                self.leader = leader
                return
            time.sleep(0.02)
        raise MachineError(f"{self.name}: container systemd did not appear within 30 s")

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for c in children:
            try:
                if Path(f"/proc/{c}/comm").read_text().strip() == "systemd":
                    return int(c)
            except OSError:
                continue
        return None

    def wait_for_boot(self, timeout: int = 120) -> None:
        """Wait until systemd has finished booting (running or degraded)."""
        if self.booted:
            return
        if not self.is_up():
            self.start()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self._raw(["systemctl", "is-system-running"], timeout=10)[1].strip()
            if state in ("running", "degraded"):
                self.booted = True
                return
            if not self.is_up():
                raise MachineError(f"{self.name}: container stopped during boot")
            time.sleep(0.05)
        raise MachineError(f"{self.name}: boot did not finish within {timeout} s (state {state!r})")

    def shutdown(self, timeout: int = 30) -> None:
        """Clean poweroff through systemd; the disk is kept."""
        if not self.is_up():
            return
        log.info(self.name, "shutting down")
        self._raw(["systemctl", "poweroff", "--no-block"], timeout=10)
        try:
            assert self.proc is not None
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.info(self.name, f"did not power off within {timeout} s, killing")
            self.crash()
        self._after_stop()

    def crash(self) -> None:
        """Stop the container at once, like pulling the plug; the disk is kept."""
        if self.proc is None:
            return
        log.info(self.name, "crashing")
        self._kill_cgroup()
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._after_stop()

    def _kill_cgroup(self) -> None:
        unified = Path("/sys/fs/cgroup/unified") / self.cgroup_name
        kill_file = unified / "cgroup.kill"
        if kill_file.exists():
            try:
                kill_file.write_text("1")
                return
            except OSError:
                pass
        for d in self._cgroup_dirs():
            for procs in d.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass

    def _after_stop(self) -> None:
        self.leader = None
        self.booted = False

    def request_halt(self) -> None:
        """Ask nspawn to halt the container cleanly (it forwards SIGTERM as a halt request)."""
        if self.is_up():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop_for_cleanup(self, deadline: float) -> None:
        """Wait for the halt until `deadline` (monotonic), then kill; release the mount and cgroups."""
        if self.is_up():
            assert self.proc is not None
            try:
                self.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.info(self.name, "did not halt in time, killing")
                self.crash()
        self._kill_cgroup()
        for _ in range(50):
            if not any(p.read_text().strip() for d in self._cgroup_dirs() if d.exists()
                       for p in d.rglob("cgroup.procs")):
                break
            time.sleep(0.1)
            self._kill_cgroup()
        remove_cgroup(self.cgroup_name)
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)
            self.mounted = False

    # -- commands ------------------------------------------------------------

    def _raw(self, argv: list[str], timeout: float | None = None, input: str | None = None) -> tuple[int, str, str]:
        if self.leader is None:
            raise MachineError(f"{self.name} is not running (call {python_name(self.name)}.start())")
        env = {"PATH": PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8", "TERM": "dumb"}
        try:
            p = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv], env=env,
                               capture_output=True, text=True, timeout=timeout, input=input,
                               errors="replace")
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return 124, out, f"timed out after {timeout} s"
        return p.returncode, p.stdout, p.stderr

    def execute(self, command: str, check_return: bool = True, check_output: bool = True,
                timeout: float | None = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """Run `command` with /bin/sh in the container; returns (status, stdout)."""
        self.wait_for_boot()
        log.cmd(self.name, command)
        status, out, err = self._raw(["/bin/sh", "-c", command], timeout=timeout)
        if err.strip():
            log.output(self.name, err)
        return status, out

    def succeed(self, *commands: str, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Run each command; all must exit 0. Returns their concatenated stdout."""
        output = ""
        for command in commands:
            self.wait_for_boot()
            log.cmd(self.name, command)
            status, out, err = self._raw(["/bin/sh", "-c", command], timeout=timeout)
            if status != 0:
                raise MachineError(f"{self.name}: command `{command}` failed (exit code {status})\n"
                                   f"stdout:\n{out}\nstderr:\n{err}")
            if err.strip():
                log.output(self.name, err)
            output += out
        return output

    def fail(self, *commands: str, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Run each command; all must exit non-zero. Returns their concatenated stdout."""
        output = ""
        for command in commands:
            self.wait_for_boot()
            log.cmd(self.name, command)
            status, out, err = self._raw(["/bin/sh", "-c", command], timeout=timeout)
            if status == 0:
                raise MachineError(f"{self.name}: command `{command}` unexpectedly succeeded\nstdout:\n{out}")
            output += out
        return output

    def _retry(self, what: str, attempt, timeout: float):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            ok, last = attempt()
            if ok:
                return last
            if time.monotonic() >= deadline:
                raise MachineError(f"{self.name}: timed out after {timeout} s waiting for {what}"
                                   + (f"\nlast output:\n{last}" if last else ""))
            time.sleep(0.5)

    def wait_until_succeeds(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        self.wait_for_boot()
        log.cmd(self.name, f"(until it succeeds, {timeout} s) {command}")

        def attempt():
            status, out, err = self._raw(["/bin/sh", "-c", command], timeout=max(1.0, timeout))
            return status == 0, (out if status == 0 else out + err)
        return self._retry(f"`{command}` to succeed", attempt, timeout)

    def wait_until_fails(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        self.wait_for_boot()
        log.cmd(self.name, f"(until it fails, {timeout} s) {command}")

        def attempt():
            status, out, err = self._raw(["/bin/sh", "-c", command], timeout=max(1.0, timeout))
            return status != 0, out + err
        return self._retry(f"`{command}` to fail", attempt, timeout)

    def get_unit_info(self, unit: str) -> dict[str, str]:
        self.wait_for_boot()
        status, out, err = self._raw(["systemctl", "show", "--no-pager", unit], timeout=30)
        if status != 0:
            raise MachineError(f"{self.name}: systemctl show {unit} failed: {err}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for_unit(self, unit: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until `unit` is active; fail at once if it failed or nothing will start it."""
        log.info(self.name, f"waiting for unit {unit}")
        self.wait_for_boot()

        def attempt():
            info = self.get_unit_info(unit)
            state = info.get("ActiveState", "")
            if state == "active":
                return True, state
            if info.get("LoadState") == "not-found":
                raise MachineError(f"{self.name}: unit {unit} does not exist")
            if state == "failed":
                raise MachineError(f"{self.name}: unit {unit} reached state failed\n"
                                   + self._raw(["systemctl", "status", "--no-pager", "-n", "30", unit])[1])
            restarts = int(info.get("NRestarts") or 0)
            if info.get("SubState") == "auto-restart" and restarts >= 3:
                raise MachineError(f"{self.name}: unit {unit} keeps failing (restarted {restarts} times)\n"
                                   + self._raw(["systemctl", "status", "--no-pager", "-n", "30", unit])[1])
            if state == "inactive":
                jobs = self._raw(["systemctl", "list-jobs", "--full", "--no-legend"])[1]
                if unit not in jobs and info.get("SubState") == "dead":
                    # Give a unit with Restart= the time of its restart delay.
                    if not info.get("NRestarts") or info.get("Result") == "success":
                        raise MachineError(f"{self.name}: unit {unit} is inactive and no job is queued to start it")
            return False, state
        self._retry(f"unit {unit}", attempt, timeout)

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_until_succeeds(f"bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null", timeout=timeout)

    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_until_fails(f"bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null", timeout=timeout)

    def wait_for_file(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_until_succeeds(f"test -e {shlex.quote(path)}", timeout=timeout)

    def systemctl(self, q: str) -> tuple[int, str]:
        return self.execute(f"systemctl {q}")

    def start_job(self, unit: str) -> tuple[int, str]:
        return self.systemctl(f"start {unit}")

    def stop_job(self, unit: str) -> tuple[int, str]:
        return self.systemctl(f"stop {unit}")

    def copy_from_host(self, source: str, target: str) -> None:
        """Copy a host file or directory into the running machine's disk."""
        self.wait_for_boot()
        dest = self.root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--", source, str(dest)], check=True)

    def block(self) -> None:
        """Cut the machine's network link (a partition), as nixosTest's block()."""
        log.info(self.name, "network link down")
        self.network.block(self.name)

    def unblock(self) -> None:
        log.info(self.name, "network link up")
        self.network.unblock(self.name)

    def sleep(self, secs: float) -> None:
        time.sleep(secs)

    def journal(self, units: list[str] | None = None, lines: int = 200) -> str:
        if self.leader is None:
            return "(machine not running)"
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        for u in units or []:
            argv += ["-u", u]
        status, out, err = self._raw(argv, timeout=20)
        return out + err

    def __repr__(self) -> str:
        return f"<Machine {self.name}>"


def remove_cgroup(name: str) -> None:
    """Remove a container's cgroup subtrees (deepest first) in every hierarchy used."""
    for h in CGROUP_HIERARCHIES:
        top = Path("/sys/fs/cgroup") / h / name
        if not top.exists():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError as e:
            print(f"vmtests: could not remove cgroup {top}: {e}", file=sys.stderr)
