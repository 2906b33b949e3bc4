"""`vmtests/run`: run scenarios on containers, report PASS/FAIL, always clean up.

Why one entry point: the README's test command, CI and a developer chasing one
scenario all run the same thing: `vmtests/run [--list] [SCENARIO...]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import log, net
from .machine import remove_cgroup
from .rootfs import cache_dir, ensure_rootfs
from .scenario import (Keys, Run, ScenarioError, discover, format_exception, load_nodes, needed_binaries,
                       run_script)

REPO = Path(__file__).resolve().parents[2]
PREFIX_ROOT = "nfvt"
# Host tools the harness uses, and the Debian package of each.
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nix-store": "nix-bin",
    "ip": "iproute2",
    "openssl": "openssl",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
}


class ScenarioTimeout(Exception):
    pass


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    log.info("vmtests", f"installing {' '.join(missing)}")
    cmd = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *missing]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=600"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def clean_stale(work_root: Path) -> None:
    """Remove what an earlier run of this harness left behind when it was killed hard."""
    def owner_dead(name: str) -> bool:
        digits = name[len(PREFIX_ROOT):].split("-", 1)[0]
        return digits.isdigit() and not _pid_alive(int(digits))

    for ns in net.stale_namespaces(PREFIX_ROOT):
        if owner_dead(ns):
            net.delete_namespace(ns)
    for h in ("systemd", "unified"):
        base = Path("/sys/fs/cgroup") / h
        for d in base.glob(f"{PREFIX_ROOT}*"):
            if owner_dead(d.name):
                remove_cgroup(d.name)
    if work_root.is_dir():
        for d in work_root.iterdir():
            if d.name.isdigit() and not _pid_alive(int(d.name)):
                mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                          if line.split()[1].startswith(str(d) + "/")]
                for m in sorted(mounts, key=len, reverse=True):
                    subprocess.run(["umount", "-l", m], check=False)
                shutil.rmtree(d, ignore_errors=True)


def bin_dir() -> Path:
    return Path(os.environ.get("NIXFLEET_BIN_DIR", str(REPO / "target" / "debug")))


def missing_binaries(need: list[str]) -> list[str]:
    d = bin_dir()
    return [b for b in need if not os.access(d / b, os.X_OK)]


def run_one(name: str, rootfs: Path, work: Path, keys: Keys, prefix: str) -> tuple[bool, str]:
    spec = load_nodes(name)
    need = needed_binaries(spec["nodes"])
    missing = missing_binaries(need)
    if missing:
        return False, (f"needs {', '.join(missing)} in {bin_dir()}, which do(es) not exist: "
                       f"build them (cargo build) or point NIXFLEET_BIN_DIR at them")
    run = Run(name, spec, rootfs, work, keys, bin_dir(), prefix)
    timeout = int(os.environ.get("NIXFLEET_VMTESTS_SCENARIO_TIMEOUT", "300"))

    def on_alarm(signum, frame):
        raise ScenarioTimeout(f"scenario {name} exceeded {timeout} s (NIXFLEET_VMTESTS_SCENARIO_TIMEOUT)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    try:
        run.setup()
        run_script(run)
        return True, ""
    except (Exception, ScenarioTimeout) as e:
        signal.alarm(0)
        detail = format_exception()
        try:
            diag = run.diagnostics()
        except Exception as de:
            diag = f"(diagnostics failed: {de})"
        return False, f"{type(e).__name__}: {e}\n{detail}\n{diag}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        t0 = time.monotonic()
        run.cleanup()
        log.info("vmtests", f"cleanup of {name} took {time.monotonic() - t0:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vmtests/run", description="Run nixfleet's multi-host scenarios in containers.")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--quiet", action="store_true", help="do not echo every command")
    ap.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    args = ap.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [s for s in args.scenarios if s not in available]
    if unknown:
        print(f"vmtests: unknown scenario(s): {', '.join(unknown)}; see vmtests/run --list", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("vmtests: must run as root (it creates network namespaces and containers)", file=sys.stderr)
        return 2
    log.quiet = args.quiet
    selected = args.scenarios or available

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background with SIGINT ignored
    work_root = Path(os.environ.get("NIXFLEET_VMTESTS_RUNDIR", "/var/tmp/nixfleet-vmtests"))
    work = work_root / str(os.getpid())
    prefix = f"{PREFIX_ROOT}{os.getpid()}"
    t_all = time.monotonic()
    results: list[tuple[str, bool, float, str]] = []
    try:
        ensure_tools()
        clean_stale(work_root)
        work.mkdir(parents=True, exist_ok=True)
        rootfs, built = ensure_rootfs()
        if built is not None:
            print(f"vmtests: cold root filesystem build took {built:.1f} s", flush=True)
        names = sorted({h for s in selected for h in load_nodes(s)["nodes"]})
        keys = Keys(work / "keys", names)
        for name in selected:
            print(f"===== {name} =====", flush=True)
            log.reset_clock()
            t0 = time.monotonic()
            try:
                ok, why = run_one(name, rootfs, work, keys, prefix)
            except ScenarioError as e:
                ok, why = False, str(e)
            dt = time.monotonic() - t0
            results.append((name, ok, dt, why))
            if ok:
                print(f"PASS {name} ({dt:.1f} s)", flush=True)
            else:
                print(f"FAIL {name} ({dt:.1f} s): {why}", flush=True)
    except KeyboardInterrupt:
        print("vmtests: interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    print("----- summary -----")
    for name, ok, dt, why in results:
        first = why.splitlines()[0] if why else ""
        print(f"{'PASS' if ok else 'FAIL'} {name:32} {dt:6.1f} s {first[:150]}")
    print(f"total {time.monotonic() - t_all:.1f} s (root filesystem cache: {cache_dir()})")
    print(f"vmtests: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1
