"""The cached root filesystem every container boots from.

Why: debootstrap plus the packages takes about two minutes, so it is built once
and kept under NIXFLEET_VMTESTS_CACHE (default /var/cache/nixfleet-vmtests). The
cache key is a hash of the two build scripts: editing them rebuilds. Runs never
write to it (containers see it as a read-only overlay layer).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import log

HERE = Path(__file__).resolve().parent
SCRIPTS = [HERE / "rootfs.sh", HERE / "rootfs-customize.sh"]


def cache_dir() -> Path:
    return Path(os.environ.get("NIXFLEET_VMTESTS_CACHE", "/var/cache/nixfleet-vmtests"))


def _discard(tree: Path) -> None:
    """Remove a half-built tree; an interrupted debootstrap can leave /proc or /sys mounted in it."""
    prefix = str(tree) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(prefix)]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(tree, ignore_errors=True)


def build_key() -> str:
    h = hashlib.sha256()
    for s in SCRIPTS:
        h.update(s.read_bytes())
    return h.hexdigest()[:16]


def ensure_rootfs() -> tuple[Path, float | None]:
    """Path of the root filesystem, building it if needed; and the build time when it was built."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"rootfs-{build_key()}"
    if (dest / "etc/nixfleet-vmtests-rootfs").is_file():
        return dest, None
    tmp = cache / f"rootfs-{build_key()}.tmp"
    _discard(tmp)
    log.info("vmtests", f"building the root filesystem in {dest} (cold build, about 2 minutes)")
    t0 = time.monotonic()
    logfile = cache / "rootfs-build.log"
    with open(logfile, "w") as out:
        for script in SCRIPTS:
            r = subprocess.run([str(script), str(tmp)], stdout=out, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                _discard(tmp)
                raise RuntimeError(f"{script.name} failed (exit {r.returncode}); see {logfile}")
    tmp.rename(dest)
    # Older builds are dead weight (a rootfs is about 400 MB).
    for old in cache.glob("rootfs-*"):
        if old != dest and old.is_dir():
            _discard(old)
    elapsed = time.monotonic() - t0
    (cache / "last-build-seconds").write_text(f"{elapsed:.1f}\n")
    log.info("vmtests", f"root filesystem built in {elapsed:.1f} s")
    return dest, elapsed
