"""systemd units for the nixfleet services, rendered from nixos/service-flags.json.

Why this exists: the NixOS modules (nixos/modules/{control-plane,agent}.nix,
through nixos/lib/flags.nix and nixos/lib/health-checks.nix) render every option
to the `flag` that service-flags.json names for it. The local harness must start
the binaries identically, so this is the Python twin of those two Nix files, and
tests/test_units.py evaluates the Nix files with nix-instantiate and checks that
both render the same argv, LoadCredential= lines and health-check file:

- options are rendered in sorted name order (builtins.attrNames);
- an option's value is the node's setting, else the default in the flag map;
- null renders nothing; a bool renders the bare flag when true; a commaList
  renders `--flag a,b` when non-empty; anything else `--flag value`;
- an option with a `credential` is passed with LoadCredential= and its flag
  points at `%d/<credential>` (control plane only, as in the module);
- ExecStart= words are quoted like flags.nix's escapeSystemdArg.
The unit bodies copy the modules' serviceConfig (type, restart policy, state
directory, hardening), so the binaries run under the same constraints.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLAGS_FILE = REPO / "nixos" / "service-flags.json"
BIN_DIR_IN_CONTAINER = "/opt/nixfleet/bin"
_SAFE = re.compile(r"[A-Za-z0-9_./:,=@+-]+")
_CREDENTIAL_ARG = re.compile(r"%d/[A-Za-z0-9_.-]+")
# Keys a scenario may set on a service that are not flags (module-only options).
NON_FLAG_KEYS = {
    "nixfleet-control-plane": {"enable", "autoStart", "openFirewall", "package", "checkConfig"},
    "nixfleet-agent": {"enable", "autoStart", "healthChecks", "metricsOpenFirewall", "package"},
}


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


def _flatten(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "healthChecks":
            out += _flatten(v, key + ".")
        else:
            out.append(key)
    return out


def values_from(service: str, cfg: dict, flag_map: dict | None = None) -> dict:
    """The value of every option of `service` (dotted names), defaults filled in."""
    flag_map = flag_map or load_flag_map()
    options = flag_map[service]["options"]
    unknown = sorted(k for k in _flatten(cfg) if k not in options and k not in NON_FLAG_KEYS[service])
    if unknown:
        raise ValueError(f"{service}: unknown option(s) {', '.join(unknown)}; see nixos/service-flags.json")
    values = {}
    for name, spec in options.items():
        try:
            values[name] = lookup(cfg, name)
        except KeyError:
            values[name] = spec.get("default")
    return values


def render_args(service: str, values: dict, flag_map: dict | None = None,
                credential_dir: str | None = None) -> list[str]:
    """argv (without the program), as flags.nix's `args`."""
    flag_map = flag_map or load_flag_map()
    options = flag_map[service]["options"]
    args: list[str] = []
    for name in sorted(options):
        spec = options[name]
        value = values.get(name)
        if value is None:
            continue
        kind, flag = spec["type"], spec["flag"]
        if kind == "bool":
            if value:
                args.append(flag)
        elif kind == "int":
            args += [flag, str(value)]
        elif kind == "commaList":
            if value:
                args += [flag, ",".join(value)]
        elif kind == "path" and spec.get("credential") and credential_dir is not None:
            args += [flag, f"{credential_dir}/{spec['credential']}"]
        elif kind in ("str", "path"):
            args += [flag, str(value)]
        else:
            raise ValueError(f"nixos/service-flags.json: option {name} has unknown type {kind}")
    return args


def credentials(service: str, values: dict, flag_map: dict | None = None) -> list[str]:
    """LoadCredential= entries ("id:path"), as flags.nix's `credentials`."""
    flag_map = flag_map or load_flag_map()
    options = flag_map[service]["options"]
    return [f"{options[n]['credential']}:{values[n]}" for n in sorted(options)
            if options[n].get("credential") and values.get(n) is not None]


def escape_systemd_arg(arg: str) -> str:
    """flags.nix's escapeSystemdArg."""
    if _SAFE.fullmatch(arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$").replace("\n", "\\n")
    return f'"{escaped}"'


def exec_line(program: str, argv: list[str]) -> str:
    """flags.nix's execLine: program and arguments quoted for ExecStart=, "%d/…" kept."""
    words = [escape_systemd_arg(program)]
    words += [a if _CREDENTIAL_ARG.fullmatch(a) else escape_systemd_arg(a) for a in argv]
    return " ".join(words)


def _port(listen: str) -> int | None:
    m = re.fullmatch(r".*:([0-9]+)", listen)
    return int(m.group(1)) if m else None


def control_plane_unit(cfg: dict, flag_map: dict | None = None) -> str:
    """nixfleet-control-plane.service as services.nixfleet-control-plane generates it."""
    flag_map = flag_map or load_flag_map()
    service = "nixfleet-control-plane"
    values = values_from(service, cfg, flag_map)
    argv = render_args(service, values, flag_map, credential_dir="%d")
    binary = f"{BIN_DIR_IN_CONTAINER}/{flag_map[service]['binary']}"
    state_dir = str(values["dataDir"]).removeprefix("/var/lib/")
    port = _port(str(values["listen"]))
    low_port = port is not None and port < 1024
    lines = [
        "[Unit]",
        "Description=nixfleet control plane",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_line(binary, argv)}",
        "Restart=on-failure",
        "RestartSec=5s",
    ]
    lines += [f"LoadCredential={c}" for c in credentials(service, values, flag_map)]
    lines += [
        "DynamicUser=yes",
        f"StateDirectory={state_dir}",
        "StateDirectoryMode=0700",
        f"WorkingDirectory={values['dataDir']}",
        "UMask=0077",
        "CapabilityBoundingSet=" + ("CAP_NET_BIND_SERVICE" if low_port else ""),
        "AmbientCapabilities=" + ("CAP_NET_BIND_SERVICE" if low_port else ""),
        "DeviceAllow=",
        "DevicePolicy=closed",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "PrivateMounts=yes",
        "PrivateTmp=yes",
        f"PrivateUsers={'no' if low_port else 'yes'}",
        "ProcSubset=pid",
        "ProtectClock=yes",
        "ProtectControlGroups=yes",
        "ProtectHome=yes",
        "ProtectHostname=yes",
        "ProtectKernelLogs=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
        "ProtectProc=invisible",
        "ProtectSystem=strict",
        "RemoveIPC=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@resources",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def agent_unit(cfg: dict, flag_map: dict | None = None) -> str:
    """nixfleet-agent.service as services.nixfleet-agent generates it."""
    flag_map = flag_map or load_flag_map()
    service = "nixfleet-agent"
    values = values_from(service, cfg, flag_map)
    argv = render_args(service, values, flag_map)
    binary = f"{BIN_DIR_IN_CONTAINER}/{flag_map[service]['binary']}"
    state_dir = str(values["stateDir"])
    lines = [
        "[Unit]",
        "Description=nixfleet agent",
        "Wants=network-online.target",
        # nixfleet-vmtests-boot gives the machine its current system, as a NixOS boot does.
        "After=network-online.target nix-daemon.service nixfleet-vmtests-boot.service",
        "StartLimitIntervalSec=0",
        "X-StopOnRemoval=false",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line(binary, argv)}",
        # NixOS: path = [ nix systemd ] (plus the module system's coreutils, findutils, grep, sed).
        "Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"Environment=XDG_CACHE_HOME={state_dir}/.cache",
        'Environment="NIX_CONFIG=extra-experimental-features = nix-command"',
        "User=root",
        "Restart=always",
        "RestartSec=30s",
        f"StateDirectory={state_dir.removeprefix('/var/lib/')}",
        "StateDirectoryMode=0700",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _drop_nulls(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def health_checks(cfg: dict) -> dict:
    """The agent's health check file, as nixos/lib/health-checks.nix renders it."""
    hc = cfg.get("healthChecks", {}) or {}
    return {
        "systemd": [_drop_nulls({"units": c["units"], "interval": c.get("interval")}) for c in hc.get("systemd", [])],
        "http": [
            _drop_nulls({
                "url": c["url"],
                "interval": c.get("interval", 5),
                "timeout": c.get("timeout", 3),
                "expected_status": c.get("expectedStatus", c.get("expected_status", 200)),
            })
            for c in hc.get("http", [])
        ],
        "command": [
            _drop_nulls({
                "name": c["name"],
                "command": c["command"],
                "interval": c.get("interval", 10),
                "timeout": c.get("timeout", 5),
            })
            for c in hc.get("command", [])
        ],
    }


def health_checks_json(cfg: dict) -> str:
    return json.dumps(health_checks(cfg), indent=2) + "\n"


def exec_start_words(unit_text: str) -> list[str]:
    """The words of the ExecStart= line of a rendered unit (used by the tests)."""
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):])
    raise ValueError("unit has no ExecStart=")
