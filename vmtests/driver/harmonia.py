"""harmonia, the cache server services.nixfleet-cache-server runs on NixOS, on the cache-server containers.

Why: the cache host must serve what NixOS serves, so the scenarios' cache lines (narinfo
fields, signatures, `nar/<nar hash>.nar?hash=...`) hold on both sides. harmonia 3.2 reads the
Nix database and the store directly (no daemon), so it serves the container's Debian Nix 2.8
store as it is. It is built once from ../shared/harmonia into the vmtests cache by
scripts/harmonia-build (NIXFLEET_HARMONIA names a binary instead), bound read-only into the
container, and started with the units nixpkgs' harmonia module writes (socket activation,
Type=notify, the key as a systemd credential), except that it runs as root (see units()).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINARY_IN_CONTAINER = "/opt/harmonia/harmonia-cache"
CONFIG_IN_CONTAINER = "/etc/nixfleet-vmtests/harmonia.toml"


class HarmoniaError(Exception):
    pass


def binary() -> Path:
    """The harmonia-cache binary: NIXFLEET_HARMONIA, else scripts/harmonia-build (cached, built once)."""
    given = os.environ.get("NIXFLEET_HARMONIA")
    if given:
        if not os.access(given, os.X_OK):
            raise HarmoniaError(f"NIXFLEET_HARMONIA={given} is not an executable harmonia-cache")
        return Path(given)
    out = subprocess.run([str(REPO / "scripts" / "harmonia-build")], capture_output=True, text=True)
    if out.returncode != 0:
        raise HarmoniaError(f"scripts/harmonia-build failed: {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def config_toml(port: int) -> str:
    """What nixpkgs' module generates (format.toml of cache.settings): our bind plus its mkDefault settings."""
    return "\n".join([
        f'bind = "[::]:{port}"',
        "max_connection_rate = 256",
        "priority = 50",
        "workers = 4",
        "",
    ])


def units(cache_server: dict) -> dict[str, str]:
    """harmonia.socket and harmonia.service (alias nixfleet-cache-server.service), as nixpkgs writes them."""
    port = int(cache_server["port"])
    key = cache_server["signingKeyFile"]
    socket = "\n".join([
        "[Unit]",
        "Description=harmonia binary cache socket",
        "[Socket]",
        f"ListenStream=[::]:{port}",
        "[Install]",
        "WantedBy=sockets.target",
        "",
    ])
    service = "\n".join([
        "[Unit]",
        "Description=harmonia binary cache service",
        "Requires=harmonia.socket",
        "After=harmonia.socket",
        "[Service]",
        "Type=notify",
        "WatchdogSec=15",
        "Restart=on-failure",
        f"ExecStart={BINARY_IN_CONTAINER}",
        f"Environment=CONFIG_FILE={CONFIG_IN_CONTAINER}",
        "Environment=HOME=/run/harmonia",
        "Environment=SIGN_KEY_PATHS=%d/sign-key-0",
        "Environment=RUST_LOG=info",
        f"LoadCredential=sign-key-0:{key}",
        # nixpkgs runs it as a dynamic user. Here it runs as root with write access to the
        # database directory only: Debian's Nix runs without a daemon, so no -wal/-shm files
        # stay behind for a read-only reader, and SQLite must create them to read the WAL database.
        "ReadWritePaths=/nix/var/nix/db",
        "RuntimeDirectory=harmonia",
        "UMask=0066",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=65536",
        "[Install]",
        "WantedBy=multi-user.target",
        "Alias=nixfleet-cache-server.service",
        "",
    ])
    return {"harmonia.socket": socket, "harmonia.service": service}
