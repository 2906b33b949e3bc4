"""One scenario: its nodes (nodes.json), their generated files, the network, and its test script.

Why: a scenario is declared once (vmtests/scenarios/<name>/nodes.json and test.py)
and read by both the NixOS side and this driver. Here each node becomes a
container whose "layer" (the files a NixOS module would put in place: units,
/etc/nix/nix.conf, certificates, health checks, scope files) is written fresh
for every run, then test.py runs with the nixosTest API against the containers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import time
import traceback
from pathlib import Path

from . import harmonia, log, postgres, units
from .machine import Machine, MachineError, python_name
from .net import Network

VMTESTS = Path(__file__).resolve().parents[1]
LIB = VMTESTS / "lib"
SCENARIOS = VMTESTS / "scenarios"
ROLES = {"control-plane", "agent", "operator", "builder", "cache-server", "database", "ssh-target", "plain"}
SCOPES_ORDER = ["core", "minimal", "firewall", "monitoring", "backup", "secrets"]
BINARIES = ("nixfleet-control-plane", "nixfleet-agent", "nixfleet")


class ScenarioError(Exception):
    """The scenario cannot run as declared (bad nodes.json, missing binaries)."""


def discover() -> list[str]:
    return sorted(p.name for p in SCENARIOS.iterdir() if (p / "nodes.json").is_file() and (p / "test.py").is_file())


def deep_merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _subst(value, host: str):
    if isinstance(value, str):
        return value.replace("@HOST@", host)
    if isinstance(value, list):
        return [_subst(v, host) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, host) for k, v in value.items()}
    return value


def load_nodes(name: str) -> dict:
    """nodes.json of scenario `name`, with node-defaults.json merged under every node."""
    path = SCENARIOS / name / "nodes.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from e
    defaults = json.loads((LIB / "node-defaults.json").read_text())
    nodes = {}
    for host, spec in doc.get("nodes", {}).items():
        role = spec.get("role", "plain")
        if role not in ROLES:
            raise ScenarioError(f"{path}: node {host}: unknown role {role!r} (one of {', '.join(sorted(ROLES))})")
        node = {"role": role, "scopes": spec.get("scopes", defaults["scopes"])}
        for s in node["scopes"]:
            if s not in SCOPES_ORDER:
                raise ScenarioError(f"{path}: node {host}: unknown scope {s!r} (one of {', '.join(SCOPES_ORDER)})")
        if role == "control-plane":
            node["controlPlane"] = _subst(deep_merge(defaults["controlPlane"], spec.get("controlPlane", {})), host)
        if role == "agent" or "agent" in spec:
            node["agent"] = _subst(deep_merge(defaults["agent"], spec.get("agent", {})), host)
        if role == "cache-server":
            node["cacheServer"] = _subst(deep_merge(defaults["cacheServer"], spec.get("cacheServer", {})), host)
        if role == "database":
            node["database"] = _subst(deep_merge(defaults["database"], spec.get("database", {})), host)
        # "systems" matters only on the NixOS side (helpers.nix): here every node runs fake systems.
        for key in ("openPorts", "nix", "extraFiles", "systems"):
            if key in spec:
                node[key] = spec[key]
        nodes[host] = node
    if not nodes:
        raise ScenarioError(f"{path}: no nodes")
    return {"name": doc.get("name", name), "description": doc.get("description", ""), "nodes": nodes}


def needed_binaries(nodes: dict) -> list[str]:
    need = []
    for node in nodes.values():
        role = node["role"]
        if role == "control-plane":
            need.append("nixfleet-control-plane")
        if "agent" in node:
            need.append("nixfleet-agent")
        if role in ("operator", "builder"):
            need.append("nixfleet")
    return sorted(set(need))


def open_ports(node: dict) -> list[int]:
    ports = [22] + list(node.get("openPorts", []))
    if "controlPlane" in node:
        ports.append(int(node["controlPlane"]["listen"].rsplit(":", 1)[1]))
    if "cacheServer" in node:
        ports.append(int(node["cacheServer"]["port"]))
    if "database" in node:
        ports.append(int(node["database"]["port"]))
    if "monitoring" in node["scopes"]:
        ports.append(9100)
    if node.get("agent", {}).get("metricsPort"):
        ports.append(int(node["agent"]["metricsPort"]))
    return sorted(set(ports))


class Keys:
    """Material shared by all scenarios of one invocation (made once: it costs about 0.3 s)."""

    def __init__(self, root: Path, names: list[str]):
        from . import pki
        self.root = root
        self.tls = root / "tls"
        self.ssh = root / "ssh"
        self.cache = root / "cache-key"
        pki.make_tls(self.tls, names)
        pki.make_ssh_key(self.ssh)
        self.cache_public = pki.make_cache_key(self.cache)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _enable(layer: Path, unit: str, target: str = "multi-user.target", unit_dir: str = "/etc/systemd/system") -> None:
    wants = layer / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"{unit_dir}/{unit}")


def write_layer(layer: Path, host: str, node: dict, network: Network, keys: Keys, scenario: str) -> None:
    """The files that the node's NixOS configuration would put in place."""
    etc = layer / "etc"
    _write(etc / "hostname", host + "\n")
    _write(etc / "hosts", network.hosts_file())
    _write(etc / "resolv.conf", "# no DNS in the test network: names come from /etc/hosts\n")
    # Nix: no substituter unless the node declares one, and no negative cache between tests.
    nix = node.get("nix", {})
    conf = [
        "sandbox = false",
        "substituters = " + " ".join(nix.get("substituters", [])),
        f"trusted-public-keys = {keys.cache_public}",
        "require-sigs = true",
        "narinfo-cache-negative-ttl = 0",
        "experimental-features = nix-command flakes",
        "build-users-group =",
    ]
    if "cacheServer" in node:
        conf.append(f"secret-key-files = {node['cacheServer']['signingKeyFile']}")
    _write(etc / "nix/nix.conf", "\n".join(conf) + "\n")
    vt = etc / "nixfleet-vmtests"
    _write(vt / "node.json", json.dumps({"scenario": scenario, "host": host, **node}, indent=2) + "\n")
    shutil.copyfile(LIB / "fake-system.nix.tmpl", vt / "fake-system.nix")
    _write(vt / "cache-key.pub", keys.cache_public + "\n")
    if "cacheServer" in node:
        shutil.copyfile(keys.cache / "cache-key.sec", vt / "cache-key.sec")
        (vt / "cache-key.sec").chmod(0o600)
    # The first system generation, activated at every boot as NixOS does.
    _write(etc / "systemd/system/nixfleet-vmtests-boot.service", "\n".join([
        "[Unit]",
        "Description=vmtests: activate the system profile (build generation 1 on first boot)",
        "After=local-fs.target",
        "Before=multi-user.target nixfleet-agent.service nixfleet-control-plane.service",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Environment=PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "ExecStart=/opt/nixfleet/vmtests/boot.sh",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]))
    _enable(layer, "nixfleet-vmtests-boot.service")
    # sshd generates missing host keys before it starts (NixOS's sshd does the same).
    _write(etc / "systemd/system/ssh.service.d/keygen.conf",
           "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n")
    # Root's SSH identity, trusted by every node of the run (the seed's test key).
    ssh = layer / "root/.ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    ssh.chmod(0o700)
    pub = (keys.ssh / "id_ed25519.pub").read_text()
    _write(ssh / "authorized_keys", pub, 0o600)
    _write(ssh / "id_ed25519", (keys.ssh / "id_ed25519").read_text(), 0o600)
    _write(ssh / "id_ed25519.pub", pub)
    _write(ssh / "config", "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          "  BatchMode yes\n  LogLevel ERROR\n", 0o600)
    # The fleet PKI (the seed's shared certificate set).
    tls = etc / "nixfleet-tls"
    shutil.copytree(keys.tls, tls, dirs_exist_ok=True)
    # The nixfleet binaries, bound read-only at /opt/nixfleet/bin, on every user's PATH.
    for b in BINARIES:
        link = layer / "usr/local/bin" / b
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(f"/opt/nixfleet/bin/{b}")
    if "controlPlane" in node:
        cp = node["controlPlane"]
        _write(etc / "systemd/system/nixfleet-control-plane.service", units.control_plane_unit(cp))
        if cp.get("autoStart", True):
            _enable(layer, "nixfleet-control-plane.service")
    if "agent" in node:
        agent = node["agent"]
        health_path = agent.get("healthConfig", "/etc/nixfleet/health-checks.json")
        if health_path.startswith("/etc/"):
            _write(layer / health_path.lstrip("/"), units.health_checks_json(agent))
        _write(etc / "systemd/system/nixfleet-agent.service", units.agent_unit(agent))
        if agent.get("enable", True) and agent.get("autoStart", True):
            _enable(layer, "nixfleet-agent.service")
    if "cacheServer" in node:
        # harmonia, with the units nixpkgs writes (vmtests/driver/harmonia.py).
        cs = node["cacheServer"]
        for unit, text in harmonia.units(cs).items():
            _write(etc / "systemd/system" / unit, text)
        _write(layer / harmonia.CONFIG_IN_CONTAINER.lstrip("/"), harmonia.config_toml(int(cs["port"])))
        _enable(layer, "harmonia.socket", target="sockets.target")
        _enable(layer, "harmonia.service")
        alias = etc / "systemd/system/nixfleet-cache-server.service"
        if not alias.is_symlink():
            alias.symlink_to("/etc/systemd/system/harmonia.service")
    if "database" in node:
        # PostgreSQL, the host's Debian server bound read-only (vmtests/driver/postgres.py).
        db = node["database"]
        for unit, text in postgres.units(db).items():
            _write(etc / "systemd/system" / unit, text)
        _enable(layer, "postgresql.service")
        _write(layer / postgres.HBA_IN_CONTAINER.lstrip("/"), postgres.hba())
        _write(layer / postgres.SYSUSERS_IN_CONTAINER.lstrip("/"), postgres.SYSUSERS)
        _write(layer / postgres.SETUP_IN_CONTAINER.lstrip("/"), postgres.setup_script(db), 0o755)
        psql = layer / "usr/local/bin/psql"
        psql.parent.mkdir(parents=True, exist_ok=True)
        if not psql.is_symlink():
            psql.symlink_to(postgres.bin_dir() / "psql")
    for path, content in node.get("extraFiles", {}).items():
        _write(layer / path.lstrip("/"), content)
    env = dict(os.environ, ROOT=str(layer), NODE=host, OPEN_TCP_PORTS=" ".join(map(str, open_ports(node))))
    for scope in SCOPES_ORDER:
        if scope in node["scopes"]:
            subprocess.run(["sh", str(LIB / "scopes" / f"{scope}.sh")], env=env, check=True)


class Run:
    """Everything one scenario run created, so that cleanup can undo all of it."""

    def __init__(self, name: str, spec: dict, rootfs: Path, work: Path, keys: Keys, bin_dir: Path, prefix: str):
        self.name = name
        self.spec = spec
        self.dir = work / name
        self.network = Network(prefix, list(spec["nodes"]))
        self.machines: dict[str, Machine] = {}
        binds = [(str(LIB), "/opt/nixfleet/vmtests", True)]
        binds.append((str(bin_dir) if bin_dir.is_dir() else str(self.dir / "no-binaries"), "/opt/nixfleet/bin", True))
        if any("cacheServer" in n for n in spec["nodes"].values()):
            try:
                binds.append((str(harmonia.binary()), harmonia.BINARY_IN_CONTAINER, True))
            except harmonia.HarmoniaError as e:
                raise ScenarioError(str(e)) from e
        if any("database" in n for n in spec["nodes"].values()):
            try:
                binds += postgres.binds()
            except postgres.PostgresError as e:
                raise ScenarioError(str(e)) from e
        for i, (host, node) in enumerate(spec["nodes"].items()):
            mdir = self.dir / host
            layer = mdir / "layer"
            layer.mkdir(parents=True, exist_ok=True)
            write_layer(layer, host, node, self.network, keys, name)
            self.machines[host] = Machine(host, mdir, rootfs, self.network.netns(host), binds, self.network,
                                          f"{prefix}-{host}")
        (self.dir / "no-binaries").mkdir(parents=True, exist_ok=True)

    def setup(self) -> None:
        self.network.up()

    def start_all(self) -> None:
        for m in self.machines.values():
            m.start()

    def cleanup(self) -> None:
        # A host left cut off by a failed test would make its halt wait on the network.
        for host in self.machines:
            try:
                self.network.unblock(host)
            except Exception:
                pass
        # Halt all at once (a clean halt takes about 0.2 s each), then collect them.
        for m in self.machines.values():
            m.request_halt()
        deadline = time.monotonic() + 5
        for m in self.machines.values():
            try:
                m.stop_for_cleanup(deadline)
            except Exception as e:  # cleanup must go on for the others
                log.err(f"vmtests: cleanup of {m.name}: {e}")
        self.network.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    def diagnostics(self) -> str:
        """Each host's relevant unit journal and the tail of the control plane's event log."""
        out = []
        for host, m in self.machines.items():
            node = self.spec["nodes"][host]
            units_of_interest = ["nixfleet-vmtests-boot.service"]
            if "controlPlane" in node:
                units_of_interest.append("nixfleet-control-plane.service")
            if "agent" in node:
                units_of_interest += ["nixfleet-agent.service", "nixfleet-switch.service", "fake-app.service"]
            if "cacheServer" in node:
                units_of_interest.append("harmonia.service")
            if "database" in node:
                units_of_interest.append("postgresql.service")
            out.append(f"===== {host}: journal of {', '.join(units_of_interest)} =====")
            out.append(m.journal(units_of_interest, lines=150) if m.is_up() else "(machine not running)")
            if m.is_up():
                out.append(f"===== {host}: failed units =====")
                out.append(m._raw(["systemctl", "--failed", "--no-pager", "--no-legend"], timeout=10)[1]
                           if m.leader else "")
        for host, m in self.machines.items():
            node = self.spec["nodes"][host]
            if "controlPlane" in node and m.is_up():
                out.append(f"===== {host}: tail of the event log (GET /api/v1/events) =====")
                out.append(self.event_tail(m))
        return "\n".join(out)

    def event_tail(self, m: Machine, lines: int = 60) -> str:
        auth = getattr(self, "auth_header", None)
        hdr = f"-H {json.dumps(auth)}" if auth else ""
        port = self.spec["nodes"][m.name]["controlPlane"]["listen"].rsplit(":", 1)[1]
        cmd = (f"curl -sS --max-time 10 --cacert /etc/nixfleet-tls/ca.pem --cert /etc/nixfleet-tls/cp-cert.pem "
               f"--key /etc/nixfleet-tls/cp-key.pem {hdr} 'https://localhost:{port}/api/v1/events?after=0' "
               f"| tail -n {lines}")
        status, out, err = m._raw(["/bin/sh", "-c", cmd], timeout=20)
        return out + err


@contextlib.contextmanager
def _subtest(name: str):
    log.info("subtest", name)
    t0 = time.monotonic()
    try:
        yield
    except Exception:
        log.info("subtest", f"FAILED: {name} ({time.monotonic() - t0:.1f} s)")
        raise
    log.info("subtest", f"ok: {name} ({time.monotonic() - t0:.1f} s)")


def test_globals(run: Run) -> dict:
    """The names a nixosTest script can use, bound to this run's machines."""
    machines = list(run.machines.values())

    def start_all():
        run.start_all()

    def retry(fn, timeout: float = 900):
        deadline = time.monotonic() + timeout
        while True:
            if fn(False):
                return
            if time.monotonic() > deadline:
                fn(True)
                raise MachineError(f"retry: condition not met within {timeout} s")
            time.sleep(1)

    g = {
        "start_all": start_all,
        "machines": machines,
        "subtest": _subtest,
        "retry": retry,
        "log": log,
        "MachineError": MachineError,
        "__name__": "__vmtest__",
    }
    for host, m in run.machines.items():
        g[python_name(host)] = m
    return g


def script_text(name: str) -> str:
    """The test script as both sides run it: the shared prelude, then the scenario's test.py."""
    return (LIB / "prelude.py").read_text() + "\n" + (SCENARIOS / name / "test.py").read_text()


def run_script(run: Run) -> None:
    g = test_globals(run)
    # Same as running script_text(): the prelude and test.py share one namespace; compiled
    # apart only so that tracebacks name the right file and line.
    prelude = compile((LIB / "prelude.py").read_text(), str(LIB / "prelude.py"), "exec")
    test = compile((SCENARIOS / run.name / "test.py").read_text(), str(SCENARIOS / run.name / "test.py"), "exec")
    try:
        exec(prelude, g)
        exec(test, g)
    finally:
        # The prelude keeps the admin key here once bootstrapped; the event-log dump uses it.
        if g.get("AUTH"):
            run.auth_header = g["AUTH"].split(" ", 1)[1].strip("'\"") if g["AUTH"].startswith("-H") else g["AUTH"]


def format_exception() -> str:
    return traceback.format_exc()
