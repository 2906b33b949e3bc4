"""PostgreSQL on the database containers (role "database"): the shared event log of several control planes.

Why: on NixOS the database host runs `services.postgresql` (vmtests/nix/helpers.nix: a database and
its owner, `trust` for the test network). Here the root filesystem has no PostgreSQL, and rebuilding
it for one scenario would throw away the cached one under every concurrent run, so the host's own
Debian server (package postgresql, which scripts/test-all installs) is bound read-only into the
container, as harmonia is: /usr/lib/postgresql, /usr/share/postgresql and libpq.so.5. Both are
Debian 12, so every other library it links is already in the root filesystem. The unit does what NixOS's does at
start: initdb on first boot, the database and its owner made idempotently after the server is up.
"""

from __future__ import annotations

from pathlib import Path

HOST_LIB = Path("/usr/lib/postgresql")
HOST_SHARE = Path("/usr/share/postgresql")
HOST_LIBPQ = Path("/usr/lib/x86_64-linux-gnu/libpq.so.5")
HBA_IN_CONTAINER = "/etc/nixfleet-vmtests/pg_hba.conf"
SETUP_IN_CONTAINER = "/etc/nixfleet-vmtests/postgres-setup.sh"
# The postgres system user, made at boot by systemd-sysusers (NixOS has one too). Not a dynamic
# user: initdb looks its user up, and the root filesystem has no nss-systemd.
SYSUSERS_IN_CONTAINER = "/etc/sysusers.d/postgres.conf"
SYSUSERS = "u postgres - \"PostgreSQL\" /var/lib/postgresql\n"


class PostgresError(Exception):
    pass


def bin_dir() -> Path:
    """The host's PostgreSQL server binaries (the newest major version installed)."""
    versions = sorted((p for p in HOST_LIB.glob("*/bin/postgres")), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise PostgresError("a database node needs PostgreSQL on the host: apt-get install postgresql")
    return versions[-1].parent


def binds() -> list[tuple[str, str, bool]]:
    """The server, its data files, and libpq (initdb and psql link it; the root filesystem has none)."""
    bin_dir()  # fails with the package to install
    libpq = HOST_LIBPQ.resolve()
    if not libpq.is_file():
        raise PostgresError("a database node needs libpq on the host: apt-get install libpq5")
    return [(str(HOST_LIB), str(HOST_LIB), True), (str(HOST_SHARE), str(HOST_SHARE), True),
            (str(libpq), str(HOST_LIBPQ), True)]


def hba() -> str:
    """What the NixOS side's `authentication` says: trust for the test network (and the host itself)."""
    return "\n".join([
        "local all all trust",
        "host all all 127.0.0.1/32 trust",
        "host all all samenet trust",
        "",
    ])


def setup_script(database: dict) -> str:
    """ensureDatabases/ensureUsers of nixpkgs' module: the owner role and its database, idempotent."""
    name, user = database["name"], database["user"]
    return "\n".join([
        "#!/bin/sh",
        "set -eu",
        f'psql="{bin_dir()}/psql -h /run/postgresql -p {int(database["port"])} -U postgres -d postgres -v ON_ERROR_STOP=1 -tA"',
        f"$psql -c \"SELECT 1 FROM pg_roles WHERE rolname = '{user}'\" | grep -q 1 || $psql -c 'CREATE ROLE \"{user}\" LOGIN'",
        f"$psql -c \"SELECT 1 FROM pg_database WHERE datname = '{name}'\" | grep -q 1 "
        f"|| $psql -c 'CREATE DATABASE \"{name}\" OWNER \"{user}\"'",
        "",
    ])


def units(database: dict) -> dict[str, str]:
    """postgresql.service: initdb on first start, the server on the port, then the setup."""
    port = int(database["port"])
    b = bin_dir()
    service = "\n".join([
        "[Unit]",
        "Description=PostgreSQL (the host's Debian server, bound read-only)",
        "After=network.target",
        "[Service]",
        "Type=notify",
        "User=postgres",
        "Group=postgres",
        "StateDirectory=postgresql",
        "StateDirectoryMode=0700",
        "RuntimeDirectory=postgresql",
        "Environment=PGDATA=/var/lib/postgresql/data",
        "ExecStartPre=/bin/sh -c 'test -f $PGDATA/PG_VERSION || "
        f"{b}/initdb -D $PGDATA -U postgres --auth=trust --locale=C -E UTF8 >/dev/null'",
        f"ExecStart={b}/postgres -D /var/lib/postgresql/data -c listen_addresses=* -c port={port} "
        f"-c unix_socket_directories=/run/postgresql -c hba_file={HBA_IN_CONTAINER}",
        f"ExecStartPost=/bin/sh {SETUP_IN_CONTAINER}",
        "KillMode=mixed",
        "KillSignal=SIGINT",
        "TimeoutSec=120",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
    return {"postgresql.service": service}
