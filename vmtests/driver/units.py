"""systemd units for the nixfleet services, rendered from nixos/service-flags.json.

Why this exists: the NixOS modules render every option of
services.nixfleet-{control-plane,agent} to the `flag` that service-flags.json
names for it. The local harness must start the binaries identically, so it reads
the same file and applies the same rule, and tests/test_units.py checks it:

- an option's value is the node's setting, else the default in the flag map;
- null (unset) renders nothing; a bool renders the bare flag when true;
- a commaList renders `--flag a,b` when non-empty; anything else `--flag value`;
- an option with a `credential` is passed through systemd's LoadCredential=, and
  its flag points at the credential (`%d/<credential>`), as the module does.
Options are rendered in the order of service-flags.json.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLAGS_FILE = REPO / "nixos" / "service-flags.json"
BIN_DIR_IN_CONTAINER = "/opt/nixfleet/bin"
# Words that need no quoting in an ExecStart= line.
_PLAIN = re.compile(r"[A-Za-z0-9_./:%,@+=-]+")


def load_flag_map(path: Path = FLAGS_FILE) -> dict:
    """The whole flag map, as written in nixos/service-flags.json."""
    return json.loads(path.read_text())


def lookup(cfg: dict, dotted: str):
    """Value of option `dotted` ("tls.cert") in a nested node config, or KeyError."""
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def render_args(service: str, cfg: dict, flag_map: dict | None = None) -> tuple[list[str], list[str]]:
    """(arguments, LoadCredential= entries) for `service` configured with `cfg`."""
    flag_map = flag_map or load_flag_map()
    options = flag_map[service]["options"]
    known = set(options) | {"enable", "autoStart", "healthChecks", "package", "openFirewall"}
    unknown = sorted(k for k in _flatten(cfg) if k not in known and not k.startswith("healthChecks."))
    if unknown:
        raise ValueError(f"{service}: unknown option(s) {', '.join(unknown)}; see nixos/service-flags.json")
    args: list[str] = []
    creds: list[str] = []
    for name, spec in options.items():
        if "flag" not in spec:
            continue
        try:
            value = lookup(cfg, name)
        except KeyError:
            value = spec.get("default")
        if value is None:
            continue
        kind = spec["type"]
        flag = spec["flag"]
        if kind == "bool":
            if value:
                args.append(flag)
        elif kind == "commaList":
            if value:
                args += [flag, ",".join(value)]
        elif spec.get("credential"):
            creds.append(f"{spec['credential']}:{value}")
            args += [flag, f"%d/{spec['credential']}"]
        else:
            args += [flag, str(value)]
    return args, creds


def _flatten(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "healthChecks":
            out += _flatten(v, key + ".")
        else:
            out.append(key)
    return out


def _exec_start(binary: str, args: list[str]) -> str:
    # systemd unit syntax: quote each word; `%` in values other than our %d must be escaped.
    words = [f"{BIN_DIR_IN_CONTAINER}/{binary}"]
    for a in args:
        if not a.startswith("%d/"):
            a = a.replace("%", "%%")
        words.append(a if _PLAIN.fullmatch(a) else json.dumps(a))
    return " ".join(words)


def control_plane_unit(cfg: dict, flag_map: dict | None = None) -> str:
    """nixfleet-control-plane.service as services.nixfleet-control-plane generates it."""
    flag_map = flag_map or load_flag_map()
    args, creds = render_args("nixfleet-control-plane", cfg, flag_map)
    binary = flag_map["nixfleet-control-plane"]["binary"]
    lines = [
        "[Unit]",
        "Description=nixfleet control plane",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_exec_start(binary, args)}",
        "Restart=always",
        "RestartSec=2",
        "StateDirectory=nixfleet-cp",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
    ]
    lines += [f"LoadCredential={c}" for c in creds]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def agent_unit(cfg: dict, flag_map: dict | None = None) -> str:
    """nixfleet-agent.service as services.nixfleet-agent generates it."""
    flag_map = flag_map or load_flag_map()
    args, creds = render_args("nixfleet-agent", cfg, flag_map)
    binary = flag_map["nixfleet-agent"]["binary"]
    lines = [
        "[Unit]",
        "Description=nixfleet agent",
        "After=network-online.target nixfleet-vmtests-boot.service",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "X-RestartIfChanged=false",
        "X-StopOnRemoval=false",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_exec_start(binary, args)}",
        "Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "Environment=XDG_CACHE_HOME=/var/lib/nixfleet/.cache",
        "Restart=always",
        "RestartSec=5",
        "StateDirectory=nixfleet",
        "NoNewPrivileges=yes",
    ]
    lines += [f"LoadCredential={c}" for c in creds]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def health_checks_json(cfg: dict) -> str:
    """/etc/nixfleet/health-checks.json as the agent module writes it."""
    hc = cfg.get("healthChecks", {}) or {}
    doc = {
        "systemd": [{"units": list(e.get("units", []))} for e in hc.get("systemd", [])],
        "http": [
            {
                "url": e["url"],
                "interval": e.get("interval", 5),
                "timeout": e.get("timeout", 3),
                "expectedStatus": e.get("expectedStatus", 200),
            }
            for e in hc.get("http", [])
        ],
        "command": [
            {
                "name": e["name"],
                "command": e["command"],
                "interval": e.get("interval", 10),
                "timeout": e.get("timeout", 5),
            }
            for e in hc.get("command", [])
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def exec_start_words(unit_text: str) -> list[str]:
    """The words of the ExecStart= line of a rendered unit (used by the tests)."""
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):])
    raise ValueError("unit has no ExecStart=")
