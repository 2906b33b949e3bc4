"""Checks of the Nix side (flake.nix, nixos/, vmtests/*.nix) that run without nixpkgs.

Why this exists: this machine (and CI) has Debian's nix-bin 2.8 but no nixpkgs and
no KVM, so `nix flake check` cannot run here. What can run here, does:

- every .nix file parses (`nix-instantiate --parse`);
- the pure parts evaluate for real with builtins only: scenario discovery, the
  nodes.json reader, the flag renderer, the health-check renderer, the key script,
  the nix shim and the fake-system adaptation;
- every module (control plane, agent, cache server, cache client, every scope and role)
  is evaluated with the real module system: nixpkgs' `lib.evalModules` from
  ../shared/nixpkgs-lib (or NIXFLEET_NIXPKGS_LIB / NIX_PATH), with the NixOS options they
  touch declared as nixpkgs declares them (tests/nix/nixos-options.nix), so types,
  merging of several definitions, priorities and assertions behave as on NixOS; only
  packages are stand-ins (tests/nix/pkgs.nix);
- the flake's outputs are evaluated with the same lib and package stand-ins.

docs/nixos.md says which of these are real evaluations and what only
`nix flake check` on a machine with nixpkgs and KVM can show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "vmtests" / "scenarios"
FLAGS = json.loads((REPO / "nixos" / "service-flags.json").read_text())
MODULE_FILES = sorted(
    p for d in ("modules", "scopes", "roles") for p in (REPO / "nixos" / d).glob("*.nix")
)

# The seed's VM tests (shared/seed/vm-tests.txt) plus the two the vmtests issue adds.
SEED_CHECKS = [
    "vm-core", "vm-minimal", "vm-infra", "vm-fleet",
    "vm-fleet-agent-rebuild", "vm-fleet-tag-sync", "vm-fleet-bootstrap", "vm-fleet-release",
    "vm-fleet-deploy-ssh", "vm-fleet-apply-failure", "vm-fleet-revert", "vm-fleet-timeout",
    "vm-fleet-poll-retry", "vm-fleet-mtls-missing", "vm-fleet-mtls-cn-mismatch",
    "vm-fleet-rollback-ssh", "vm-fleet-cp-restart", "vm-fleet-partition",
]

NO_SUBSTITUTERS = ["--option", "substituters", ""]


def ensure_tools() -> None:
    """Install what these tests run (Debian's nix-bin, openssl, ssh-keygen) when a fresh machine lacks it."""
    wanted = {"nix-instantiate": "nix-bin", "openssl": "openssl", "ssh-keygen": "openssh-client"}
    missing = sorted({pkg for tool, pkg in wanted.items() if not shutil.which(tool)})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


ensure_tools()


def nix_eval(expr: str):
    """Evaluate a Nix expression strictly with builtins only and return it as Python data."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", *NO_SUBSTITUTERS, "-E", expr],
        capture_output=True, text=True, cwd=REPO,
    )
    if out.returncode != 0:
        raise AssertionError(f"nix-instantiate failed on:\n{expr}\n{out.stderr}")
    return json.loads(out.stdout)


def nix_eval_fails(expr: str) -> str:
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0, f"expected an evaluation error, got {out.stdout}"
    return out.stderr


def nix_str(value: str) -> str:
    """A Nix string literal for `value` (JSON escapes are Nix escapes; "${" must not interpolate)."""
    assert value.isascii(), "Nix string literals have no \\u escapes"
    return json.dumps(value).replace("${", "\\${")


def _lib_dir(path: Path) -> Path | None:
    """The lib/ directory of a nixpkgs or nixpkgs.lib checkout given as `path` (or lib/ itself)."""
    for candidate in (path, path / "lib"):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate
    return None


def find_nixpkgs_lib() -> Path | None:
    """nixpkgs' lib: NIXFLEET_NIXPKGS_LIB, else nixpkgs-lib= or nixpkgs= on NIX_PATH, else ../shared/nixpkgs-lib."""
    given = os.environ.get("NIXFLEET_NIXPKGS_LIB")
    if given:
        return _lib_dir(Path(given))
    for entry in os.environ.get("NIX_PATH", "").split(":"):
        name, _, path = entry.partition("=")
        if name in ("nixpkgs-lib", "nixpkgs") and path:
            found = _lib_dir(Path(path))
            if found:
                return found
    return _lib_dir(REPO.parent / "shared" / "nixpkgs-lib")


NIXPKGS_LIB = find_nixpkgs_lib()
NO_LIB = ("nixpkgs' lib not found: set NIXFLEET_NIXPKGS_LIB (or NIX_PATH=nixpkgs-lib=...) to a nixpkgs "
          "or nixpkgs.lib checkout; the default is ../shared/nixpkgs-lib")


def lib_expr() -> str:
    """`(import <nixpkgs lib>)`; fails the calling test with one line when there is none."""
    if NIXPKGS_LIB is None:
        pytest.fail(NO_LIB, pytrace=False)
    return f"(import {NIXPKGS_LIB})"


def evaluation(modules: str = "[ ]", harmonia_layout: str = "cache", with_nixfleet: bool = True) -> str:
    """A Nix expression: tests/nix/eval.nix on `modules` (Nix source of a list) with the real lib."""
    return (f"(import {REPO}/tests/nix/eval.nix {{ lib = {lib_expr()}; modules = {modules}; "
            f"harmoniaLayout = \"{harmonia_layout}\"; withNixfleet = {str(with_nixfleet).lower()}; }})")


def json_module(values: dict) -> str:
    return f"(builtins.fromJSON {nix_str(json.dumps(values))})"


def declared(file: Path) -> list[str]:
    return nix_eval(f"{evaluation()}.declaredBy {file}")


def all_declared() -> set[str]:
    return set(nix_eval(f"{evaluation()}.nixfleetOptions"))


def eval_module(file: str, values: dict, harmonia_layout: str = "cache"):
    """config (the part tests read, see eval.nix `view`) of every nixfleet module with `values` set.
    `file` names the module under test; all of nixos/ is imported, as on a host."""
    assert (REPO / file).is_file(), file
    return nix_eval(f"{evaluation(f'[ {json_module(values)} ]', harmonia_layout)}.view")


def eval_failure(modules: str) -> str:
    """The error of evaluating `modules` (Nix list source) with every nixfleet module."""
    return nix_eval_fails(f"{evaluation(modules)}.view")


def failed_assertions(values: dict) -> list[str]:
    return nix_eval(f"{evaluation(f'[ {json_module(values)} ]')}.failedAssertions")


def nix_files() -> list[Path]:
    skip = {"target", ".git", ".vmtests-cache"}
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip]
        out += [Path(root) / f for f in files if f.endswith(".nix")]
    return sorted(out)


def scenario_dirs() -> list[str]:
    if not SCENARIOS.is_dir():
        return []
    return sorted(p.name for p in SCENARIOS.iterdir() if p.is_dir())


def check_name(directory: str) -> str:
    return directory if directory.startswith("vm-") else f"vm-{directory}"


# 1. Parsing ---------------------------------------------------------------------------


def test_every_nix_file_in_the_repository_parses():
    files = nix_files()
    assert REPO / "flake.nix" in files and REPO / "vmtests" / "default.nix" in files
    failures = []
    for f in files:
        r = subprocess.run(["nix-instantiate", "--parse", str(f)], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{f.relative_to(REPO)}: {r.stderr.strip()}")
    assert not failures, "\n".join(failures)


def test_the_parse_check_catches_a_syntax_error(tmp_path):
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }\n")
    r = subprocess.run(["nix-instantiate", "--parse", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "syntax error" in r.stderr


# 2. and 3. Scenario discovery ------------------------------------------------------------


def test_discovery_lists_exactly_the_scenario_directories():
    found = nix_eval(f"builtins.attrNames (import {REPO}/vmtests/nix/discover.nix {SCENARIOS})")
    assert sorted(found) == sorted(check_name(d) for d in scenario_dirs())


def test_a_new_scenario_directory_becomes_a_check_without_editing_anything(tmp_path):
    for d in ("vm-fleet-new-thing", "vm-core", "fleet-other"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "nodes.json").write_text('{"nodes": {"web-01": {"role": "agent"}}}')
        (tmp_path / d / "test.py").write_text("start_all()\n")
    (tmp_path / "README.md").write_text("not a scenario\n")
    found = nix_eval(f"builtins.attrNames (import {REPO}/vmtests/nix/discover.nix {tmp_path})")
    assert found == ["vm-core", "vm-fleet-new-thing", "vm-fleet-other"]
    dirs = nix_eval(f"builtins.mapAttrs (_: s: s.name) (import {REPO}/vmtests/nix/discover.nix {tmp_path})")
    assert dirs["vm-fleet-other"] == "fleet-other"


def test_every_scenario_has_nodes_json_and_test_py_for_both_suites():
    missing = [f"{d}/{f}" for d in scenario_dirs() for f in ("nodes.json", "test.py")
               if not (SCENARIOS / d / f).is_file()]
    assert not missing, f"scenario files missing: {missing}"


def test_every_seed_scenario_is_a_nix_check():
    found = set(nix_eval(f"builtins.attrNames (import {REPO}/vmtests/nix/discover.nix {SCENARIOS})"))
    missing = [c for c in SEED_CHECKS if c not in found]
    assert not missing, f"seed scenarios with no directory under vmtests/scenarios: {missing}"


def load_plan(directory: Path) -> dict:
    return nix_eval(
        f"(import {REPO}/vmtests/nix/nodes.nix).load {{ scenarioDir = {directory}; libDir = {REPO}/vmtests/lib; }}"
    )


def test_every_scenario_node_sets_only_options_the_modules_declare():
    if not scenario_dirs():
        pytest.skip("no scenario directories yet")
    agent = {o.removeprefix("services.nixfleet-agent.") for o in declared(REPO / "nixos/modules/agent.nix")}
    cp = {o.removeprefix("services.nixfleet-control-plane.")
          for o in declared(REPO / "nixos/modules/control-plane.nix")}
    cache = {o.removeprefix("services.nixfleet-cache-server.")
             for o in declared(REPO / "nixos/modules/cache-server.nix")}
    # Keys the test glue handles itself (vmtests/nix/helpers.nix).
    glue = {"autoStart"}
    problems = []
    for d in scenario_dirs():
        if not (SCENARIOS / d / "nodes.json").is_file():
            continue
        plan = load_plan(SCENARIOS / d)
        for host, node in plan["nodes"].items():
            for key, known in (("agent", agent), ("controlPlane", cp), ("cacheServer", cache)):
                if key not in node:
                    continue
                names = nix_eval(f"(import {REPO}/vmtests/nix/nodes.nix).optionNames "
                                 f"(builtins.fromJSON {nix_str(json.dumps(node[key]))})")
                unknown = sorted(set(names) - known - glue)
                if unknown:
                    problems.append(f"{d}: {host}.{key}: {unknown}")
    assert not problems, "options not declared by the modules:\n" + "\n".join(problems)


def test_the_nodes_reader_merges_defaults_like_the_local_driver(tmp_path):
    d = tmp_path / "vm-fleet-x"
    d.mkdir()
    (d / "nodes.json").write_text(json.dumps({
        "name": "vm-fleet-x",
        "nodes": {
            "cp": {"role": "control-plane"},
            "web-01": {"role": "agent", "agent": {"tags": ["web"], "tls": {"caCert": "/other/ca.pem"}},
                       "scopes": ["core", "monitoring"], "openPorts": [80]},
            "op": {"role": "operator"},
        },
    }))
    plan = load_plan(d)["nodes"]
    web = plan["web-01"]
    assert web["agent"]["machineId"] == "web-01"
    assert web["agent"]["tls"] == {"caCert": "/other/ca.pem", "clientCert": "/etc/nixfleet-tls/web-01-cert.pem",
                                   "clientKey": "/etc/nixfleet-tls/web-01-key.pem"}
    assert web["agent"]["tags"] == ["web"] and web["openPorts"] == [80]
    assert web["scopes"] == ["core", "monitoring"]
    assert plan["cp"]["controlPlane"]["tls"]["clientCa"] == "/etc/nixfleet-tls/ca.pem"
    assert "agent" not in plan["op"] and plan["op"]["scopes"] == ["core"]
    # The local driver reads the same file the same way.
    import sys
    sys.path.insert(0, str(REPO / "vmtests"))
    from driver import scenario  # type: ignore

    old = scenario.SCENARIOS
    scenario.SCENARIOS = tmp_path
    try:
        theirs = scenario.load_nodes("vm-fleet-x")["nodes"]
    finally:
        scenario.SCENARIOS = old
    assert theirs == plan


def test_an_unknown_role_in_nodes_json_is_an_evaluation_error(tmp_path):
    d = tmp_path / "vm-bad"
    d.mkdir()
    (d / "nodes.json").write_text('{"nodes": {"x": {"role": "kitchen-sink"}}}')
    err = nix_eval_fails(
        f"(import {REPO}/vmtests/nix/nodes.nix).load {{ scenarioDir = {d}; libDir = {REPO}/vmtests/lib; }}"
    )
    assert "unknown role kitchen-sink" in err


# 4. Options: documented and contracted options exist ----------------------------------------


def test_every_option_in_service_flags_json_is_declared_by_its_module():
    for service, file in (("nixfleet-control-plane", "control-plane.nix"), ("nixfleet-agent", "agent.nix"),
                          ("nixfleet-cache-server", "cache-server.nix")):
        have = set(declared(REPO / "nixos" / "modules" / file))
        want = {f"services.{service}.{o}" for o in FLAGS[service]["options"]}
        assert not want - have, f"{file} lacks {sorted(want - have)}"


def test_module_defaults_equal_the_defaults_in_service_flags_json():
    for service, file in (("nixfleet-control-plane", "control-plane.nix"), ("nixfleet-agent", "agent.nix")):
        cfg = nix_eval(
            f"let opts = {evaluation()}.options.services.{service}; "
            f"flags = import {REPO}/nixos/lib/flags.nix; in "
            f"builtins.listToAttrs (map (n: {{ name = n; value = "
            f"let o = flags.valueOf opts n; in if o ? default then o.default else \"<required>\"; }}) "
            f"(flags.optionNames \"{service}\"))"
        )
        for name, spec in FLAGS[service]["options"].items():
            if cfg[name] == "<required>":
                assert spec["default"] is None, f"{service}.{name} is required but the JSON has a default"
                continue
            if service == "nixfleet-agent" and name == "machineId":
                continue  # defaults to networking.hostName
            assert cfg[name] == spec["default"], f"{service}.{name}: module {cfg[name]!r} != JSON {spec['default']!r}"


def documented_options() -> list[str]:
    text = (REPO / "docs" / "nixos.md").read_text()
    return sorted(set(re.findall(r"`((?:services\.nixfleet-[a-z-]+|nixfleet)\.[A-Za-z][A-Za-z0-9_.*]*)`", text)))


def test_every_option_documented_in_docs_nixos_md_exists():
    documented = documented_options()
    assert len(documented) > 60, f"docs/nixos.md documents too few options: {documented}"
    have = all_declared()
    missing = [o for o in documented if o not in have]
    assert not missing, f"docs/nixos.md documents options no module declares: {missing}"


def test_every_declared_option_is_documented():
    documented = set(documented_options())
    undocumented = sorted(o for o in all_declared() if o not in documented)
    assert not undocumented, f"options missing from docs/nixos.md: {undocumented}"


# 5. Rendering from service-flags.json ----------------------------------------------------


def test_flags_render_each_type_as_the_contract_says():
    args = nix_eval(
        f"(import {REPO}/nixos/lib/flags.nix).args {{ service = \"nixfleet-agent\"; values = {{"
        f" controlPlaneUrl = \"https://cp:8080\"; dryRun = true; allowInsecure = false; pollInterval = 2;"
        f" tags = [ \"web\" \"eu\" ]; metricsPort = null; cacheUrl = null; }}; }}"
    )
    # null renders nothing, false renders nothing, true the bare flag, a list "a,b".
    assert args == ["--control-plane-url", "https://cp:8080", "--dry-run", "--poll-interval", "2", "--tags", "web,eu"]


def agent_values(**extra):
    base = {"enable": True, "controlPlaneUrl": "https://cp:8080",
            "tls": {"caCert": "/etc/nixfleet-tls/ca.pem", "clientCert": "/etc/nixfleet-tls/web-01-cert.pem",
                    "clientKey": "/etc/nixfleet-tls/web-01-key.pem"}}
    base.update(extra)
    return {"services": {"nixfleet-agent": base}}


def exec_start(result: dict, unit: str) -> list[str]:
    return result["systemd"]["services"][unit]["serviceConfig"]["ExecStart"].split(" ")


def test_the_agent_module_renders_every_flag_of_service_flags_json():
    # Non-default values for every option in the JSON, so each one must show up.
    values = {"controlPlaneUrl": "https://cp.example:8443", "machineId": "m-1", "pollInterval": 7,
              "controlPlaneUrls": ["https://cp-2.example:8443", "https://cp-3.example:8443"],
              "retryInterval": 9, "cacheUrl": "http://cache:5000", "stateDir": "/var/lib/nf-agent",
              "dryRun": True, "allowInsecure": True,
              "tls": {"caCert": "/a/ca.pem", "clientCert": "/a/c.pem", "clientKey": "/a/k.pem"},
              "healthConfig": "/etc/nixfleet/hc.json", "healthInterval": 11, "tags": ["a", "b"],
              "metricsPort": 9101, "profile": "/p", "currentSystem": "/c", "switchMode": "systemd-run",
              "switchTimeout": 99, "logFormat": "human"}
    result = eval_module("nixos/modules/agent.nix", {"services": {"nixfleet-agent": {"enable": True, **values}}})
    argv = exec_start(result, "nixfleet-agent")
    assert argv[0].endswith("/bin/nixfleet-agent")
    for name, spec in FLAGS["nixfleet-agent"]["options"].items():
        assert spec["flag"] in argv, f"{name}: {spec['flag']} missing from {argv}"
    assert argv[argv.index("--tags") + 1] == "a,b"
    assert argv[argv.index("--metrics-port") + 1] == "9101"
    # Same words as the pure renderer gives for these values: the module adds nothing of its own.
    pure = nix_eval(
        f"let f = import {REPO}/nixos/lib/flags.nix; v = builtins.fromJSON {nix_str(json.dumps(values))}; in "
        f"f.args {{ service = \"nixfleet-agent\"; values = f.valuesFrom \"nixfleet-agent\" v; }}"
    )
    assert argv[1:] == pure


@pytest.mark.parametrize("values, urls", [
    ({"controlPlaneUrls": ["https://cp-1:8080", "https://cp-2:8080"]}, ["https://cp-1:8080,https://cp-2:8080"]),
    ({"controlPlaneUrl": "https://cp-0:8080", "controlPlaneUrls": ["https://cp-1:8080"]},
     ["https://cp-0:8080", "https://cp-1:8080"]),
    ({"controlPlaneUrl": "https://cp-0:8080"}, ["https://cp-0:8080"]),
], ids=["list", "single-and-list", "single"])
def test_several_control_planes_render_as_the_agents_repeated_flag_old_single_url_first(values, urls):
    module = {"services": {"nixfleet-agent": {"enable": True, **values}}}
    result = eval_module("nixos/modules/agent.nix", module)
    assert all(a["assertion"] for a in result["assertions"]), result["assertions"]
    argv = exec_start(result, "nixfleet-agent")
    given = [argv[i + 1] for i, a in enumerate(argv) if a == "--control-plane-url"]
    assert given == urls, argv
    # Two list definitions merge, as lists do on NixOS.
    other = {"services": {"nixfleet-agent": {"controlPlaneUrls": ["https://cp-9:8080"]}}}
    out = nix_eval(f"{evaluation(f'[ {json_module(module)} {json_module(other)} ]')}.config.services.nixfleet-agent.controlPlaneUrls")
    assert out == ["https://cp-9:8080", *values.get("controlPlaneUrls", [])], out


def test_the_agent_unit_survives_its_own_switch_and_runs_as_root_with_nix_on_path():
    result = eval_module("nixos/modules/agent.nix", agent_values())
    unit = result["systemd"]["services"]["nixfleet-agent"]
    assert unit["restartIfChanged"] is False
    assert unit["unitConfig"]["X-StopOnRemoval"] is False
    assert unit["serviceConfig"]["User"] == "root"
    assert any(p.endswith("-nix") for p in unit["path"]) and any(p.endswith("-systemd") for p in unit["path"])
    assert all(a["assertion"] for a in result["assertions"])


def test_the_agent_writes_health_checks_in_the_wire_format_of_the_proto_crate():
    hc = {"http": [{"url": "http://localhost/health", "expectedStatus": 204}],
          "command": [{"name": "sentinel", "command": "test ! -f /var/lib/fail-next-health"}],
          "systemd": [{"units": ["nginx.service"]}]}
    result = eval_module("nixos/modules/agent.nix", agent_values(healthChecks=hc))
    doc = json.loads(result["environment"]["etc"]["nixfleet/health-checks.json"]["text"])
    assert doc == {
        "http": [{"url": "http://localhost/health", "expected_status": 204, "timeout": 3, "interval": 5}],
        "command": [{"name": "sentinel", "command": "test ! -f /var/lib/fail-next-health", "timeout": 5,
                     "interval": 10}],
        "systemd": [{"units": ["nginx.service"]}],
    }
    # Every key is a field of the Rust structs (proto/src/api/v1.rs).
    rust = (REPO / "proto" / "src" / "api" / "v1.rs").read_text()

    def fields(struct: str) -> set[str]:
        body = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", rust, re.S)
        assert body, f"struct {struct} not found in v1.rs"
        return set(re.findall(r"pub (\w+):", body.group(1)))

    assert set(doc) <= fields("HealthChecksConfig")
    for key, struct in (("http", "HttpCheck"), ("command", "CommandCheck"), ("systemd", "SystemdCheck")):
        for entry in doc[key]:
            assert set(entry) <= fields(struct), f"{key}: {set(entry) - fields(struct)}"


def test_the_agent_refuses_a_client_key_in_the_store_and_plain_http():
    result = eval_module("nixos/modules/agent.nix", agent_values(
        controlPlaneUrl="http://cp:8080",
        tls={"clientCert": "/etc/c.pem", "clientKey": "/nix/store/00000000000000000000000000000000-key.pem"}))
    failed = [a["message"] for a in result["assertions"] if not a["assertion"]]
    assert any("clientKey must not be a store path" in m for m in failed)
    assert any("plain http://" in m for m in failed)
    # Any URL of the list counts.
    result = eval_module("nixos/modules/agent.nix", agent_values(
        controlPlaneUrls=["https://cp-2:8080", "http://cp-3:8080"]))
    failed = [a["message"] for a in result["assertions"] if not a["assertion"]]
    assert failed == ["services.nixfleet-agent.controlPlaneUrl(s) is plain http:// (http://cp-3:8080); "
                      "use https:// or set allowInsecure = true (tests only)."], failed


def cp_values(**extra):
    base = {"enable": True, "tls": {"cert": "/etc/nixfleet-tls/cp-cert.pem", "key": "/etc/nixfleet-tls/cp-key.pem",
                                    "clientCa": "/etc/nixfleet-tls/ca.pem"}}
    base.update(extra)
    return {"services": {"nixfleet-control-plane": base}}


def test_the_control_plane_gets_its_tls_files_through_load_credential():
    result = eval_module("nixos/modules/control-plane.nix", cp_values())
    svc = result["systemd"]["services"]["nixfleet-control-plane"]["serviceConfig"]
    argv = svc["ExecStart"].split(" ")
    assert argv[argv.index("--tls-cert") + 1] == "%d/tls-cert"
    assert argv[argv.index("--tls-key") + 1] == "%d/tls-key"
    assert argv[argv.index("--client-ca") + 1] == "%d/client-ca"
    assert sorted(svc["LoadCredential"]) == ["client-ca:/etc/nixfleet-tls/ca.pem",
                                             "tls-cert:/etc/nixfleet-tls/cp-cert.pem",
                                             "tls-key:/etc/nixfleet-tls/cp-key.pem"]
    # Every option with a default or a value set here is on the command line.
    for name, spec in FLAGS["nixfleet-control-plane"]["options"].items():
        if spec["type"] != "bool" and (spec["default"] is not None or "credential" in spec):
            assert spec["flag"] in argv, f"{name}: {spec['flag']} missing"


def test_the_control_plane_unit_is_notify_type_hardened_and_stateful():
    result = eval_module("nixos/modules/control-plane.nix", cp_values(openFirewall=True))
    svc = result["systemd"]["services"]["nixfleet-control-plane"]["serviceConfig"]
    assert svc["Type"] == "notify"
    assert svc["DynamicUser"] is True and svc["StateDirectory"] == "nixfleet-cp"
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert svc[key] is True, key
    assert svc["ProtectSystem"] == "strict" and "@system-service" in svc["SystemCallFilter"]
    assert result["networking"]["firewall"]["allowedTCPPorts"] == [8080]


def test_the_control_plane_refuses_a_key_in_the_store_and_a_half_tls_setup():
    result = eval_module("nixos/modules/control-plane.nix", cp_values(
        tls={"cert": "/etc/c.pem", "key": "/nix/store/00000000000000000000000000000000-cp-key.pem"}))
    failed = [a["message"] for a in result["assertions"] if not a["assertion"]]
    assert any("tls.key must not be a store path" in m for m in failed)
    result = eval_module("nixos/modules/control-plane.nix", cp_values(tls={"cert": "/etc/c.pem"}))
    failed = [a["message"] for a in result["assertions"] if not a["assertion"]]
    assert any("set tls.cert and tls.key together" in m for m in failed)


def test_the_postgres_log_backend_renders_its_flags_and_is_refused_without_a_url():
    pg = dict(logBackend="postgres", postgresUrl="postgres://nixfleet@db:5432/nixfleet", cpId="cp-1",
              executorLeaseSeconds=4)
    result = eval_module("nixos/modules/control-plane.nix", cp_values(**pg))
    svc = result["systemd"]["services"]["nixfleet-control-plane"]
    argv = svc["serviceConfig"]["ExecStart"].split(" ")
    for flag, value in (("--log-backend", "postgres"), ("--log-postgres-url", "postgres://nixfleet@db:5432/nixfleet"),
                        ("--cp-id", "cp-1"), ("--executor-lease-secs", "4")):
        assert argv[argv.index(flag) + 1] == value, (flag, argv)
    assert not [a for a in result["assertions"] if not a["assertion"]]
    # The database is elsewhere: no ordering on a postgresql.service this host does not run.
    assert "postgresql.service" not in svc["after"] + svc["wants"], svc["after"]
    # The default renders none of the new flags (the binary's sled).
    plain = eval_module("nixos/modules/control-plane.nix", cp_values())
    argv = plain["systemd"]["services"]["nixfleet-control-plane"]["serviceConfig"]["ExecStart"].split(" ")
    assert not {"--log-backend", "--log-postgres-url", "--cp-id", "--executor-lease-secs"} & set(argv), argv
    failed = failed_assertions(cp_values(logBackend="postgres"))
    assert any('logBackend = "postgres" needs postgresUrl' in m for m in failed), failed
    failed = failed_assertions(cp_values(cpId="cp-1", postgresUrl="postgres://db/nixfleet"))
    assert any("apply to logBackend = \"postgres\" only" in m for m in failed), failed
    assert "not of type" in eval_failure(f"[ {json_module(cp_values(**dict(pg, executorLeaseSeconds=1)))} ]")


def test_a_local_database_orders_the_control_plane_after_postgresql():
    values = cp_values(logBackend="postgres", postgresUrl="postgres://nixfleet@localhost/nixfleet")
    values["services"]["postgresql"] = {"enable": True}
    svc = eval_module("nixos/modules/control-plane.nix", values)["systemd"]["services"]["nixfleet-control-plane"]
    assert "postgresql.service" in svc["after"] and "postgresql.service" in svc["wants"], svc
    # A local PostgreSQL with the sled log: no ordering.
    values = cp_values()
    values["services"]["postgresql"] = {"enable": True}
    svc = eval_module("nixos/modules/control-plane.nix", values)["systemd"]["services"]["nixfleet-control-plane"]
    assert "postgresql.service" not in svc["after"], svc["after"]


def test_a_postgres_url_with_a_password_comes_from_an_environment_file_outside_the_store():
    values = cp_values(logBackend="postgres", environmentFile="/run/secrets/nixfleet-cp.env")
    result = eval_module("nixos/modules/control-plane.nix", values)
    svc = result["systemd"]["services"]["nixfleet-control-plane"]["serviceConfig"]
    assert svc["EnvironmentFile"] == "/run/secrets/nixfleet-cp.env"
    assert "--log-postgres-url" not in svc["ExecStart"]
    assert not [a for a in result["assertions"] if not a["assertion"]]
    # The build-time check cannot read the file: it validates with a stand-in URL.
    [script] = nix_eval(f"map (d: d.script) {evaluation(f'[ {json_module(values)} ]')}.config.system.extraDependencies")
    assert "--log-postgres-url postgres://check-config@localhost/nixfleet" in script, script
    failed = failed_assertions(cp_values(logBackend="postgres",
                                         environmentFile="/nix/store/00000000000000000000000000000000-cp.env"))
    assert any("environmentFile must not be a store path" in m for m in failed), failed


def test_the_build_time_config_check_runs_the_binary_with_the_units_own_arguments():
    values = json_module(cp_values(settings={'executor': {'tick_ms': 500}}))
    expr = f"map (d: d.script) {evaluation(f'[ {values} ]')}.config.system.extraDependencies"
    [script] = nix_eval(expr)
    assert "--check-config" in script
    # lib.escapeShellArgs quotes only what needs it.
    assert "--tls-key /run/credentials/nixfleet-control-plane.service/tls-key" in script
    assert "--config /nix/store/00000000000000000000000000000000-nixfleet-control-plane.toml" in script
    off = eval_module("nixos/modules/control-plane.nix", cp_values(checkConfig=False))
    assert off["system"]["extraDependencies"] == []


def test_the_cache_server_signs_with_a_key_harmonia_loads_as_a_credential():
    for layout in ("cache", "flat"):
        result = eval_module("nixos/modules/cache-server.nix", {"services": {"nixfleet-cache-server": {
            "enable": True, "signingKeyFile": "/etc/nixfleet-vmtests/cache-key.sec", "openFirewall": True}}},
            harmonia_layout=layout)
        harmonia = result["services"]["harmonia"]["cache"] if layout == "cache" else result["services"]["harmonia"]
        assert harmonia["enable"] is True
        assert harmonia["signKeyPaths"] == ["/etc/nixfleet-vmtests/cache-key.sec"]
        assert harmonia["settings"]["bind"] == "[::]:5000"
        assert result["nix"]["settings"]["secret-key-files"] == ["/etc/nixfleet-vmtests/cache-key.sec"]
        assert result["networking"]["firewall"]["allowedTCPPorts"] == [5000]
    # What nixpkgs' module makes of it (tests/nix/harmonia-module.nix): the key as credential
    # sign-key-0, named in SIGN_KEY_PATHS; the socket on our bind; nixpkgs' priority 50 kept.
    result_cache = eval_module("nixos/modules/cache-server.nix", {"services": {"nixfleet-cache-server": {
        "enable": True, "signingKeyFile": "/etc/nixfleet-vmtests/cache-key.sec"}}})
    unit = result_cache["systemd"]["services"]["harmonia"]
    assert unit["serviceConfig"]["LoadCredential"] == ["sign-key-0:/etc/nixfleet-vmtests/cache-key.sec"]
    assert unit["environment"]["SIGN_KEY_PATHS"] == "%d/sign-key-0"
    assert result_cache["systemd"]["sockets"]["harmonia"]["socketConfig"]["ListenStream"] == "[::]:5000"
    assert result_cache["services"]["harmonia"]["cache"]["settings"]["priority"] == 50


def test_the_cache_client_adds_the_substituter_and_its_key():
    result = eval_module("nixos/modules/cache.nix", {"services": {"nixfleet-cache": {
        "enable": True, "cacheUrl": "http://cache:5000", "publicKey": "nixfleet-test-cache-1:AAAA"}}})
    assert result["nix"]["settings"]["substituters"] == ["http://cache:5000"]
    assert result["nix"]["settings"]["trusted-public-keys"] == ["nixfleet-test-cache-1:AAAA"]


def test_the_firewall_scope_rate_limits_ssh_and_logs_drops():
    result = eval_module("nixos/scopes/firewall.nix", {"nixfleet": {"firewall": {"enable": True}}})
    rules = result["networking"]["firewall"]["extraInputRules"]
    assert "tcp dport { 22 } ct state new limit rate 5/minute accept" in rules
    assert "log prefix" in rules and "drop" in rules
    assert result["networking"]["nftables"]["enable"] is True
    assert result["services"]["openssh"]["openFirewall"] is False


def test_the_backup_scope_records_each_run_in_status_json():
    result = eval_module("nixos/scopes/backup.nix", {"nixfleet": {"backup": {"enable": True}}})
    svc = result["systemd"]["services"]["nixfleet-backup"]
    assert svc["serviceConfig"]["Type"] == "oneshot" and svc["serviceConfig"]["ExecStopPost"]
    assert result["systemd"]["timers"]["nixfleet-backup"]["timerConfig"]["OnCalendar"] == "daily"


def test_the_backup_status_script_writes_success_and_failure(tmp_path):
    # The status writer's shell, run here for real (store paths replaced by the host's tools).
    text = (REPO / "nixos" / "scopes" / "backup.nix").read_text()
    body = re.search(r'writeShellScript "nixfleet-backup-status" \'\'\n(.*?)\n  \'\';', text, re.S).group(1)
    body = body.replace("''${", "${").replace("${pkgs.coreutils}/bin/date", "date")
    body = re.sub(r"\$\{pkgs\.curl\}/bin/curl", "curl", body)
    body = body.replace("${esc (toString cfg.healthCheck.onSuccess)}", "''")
    body = body.replace("${esc (toString cfg.healthCheck.onFailure)}", "''")
    body = body.replace("${esc cfg.stateDirectory}", str(tmp_path))
    assert not re.search(r"\$\{(pkgs|esc|cfg|toString)", body), body
    script = tmp_path / "status.sh"
    script.write_text(body)
    subprocess.run(["bash", str(script)], check=True, env=dict(os.environ, SERVICE_RESULT="success", EXIT_STATUS="0"))
    status = (tmp_path / "status.json").read_text()
    assert '"status": "success"' in status and json.loads(status)["hostname"]
    subprocess.run(["bash", str(script)], check=True, env=dict(os.environ, SERVICE_RESULT="exit-code", EXIT_STATUS="1"))
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failure"


# The flake and the VM test helpers --------------------------------------------------------


def flake_outputs() -> str:
    """The flake's outputs, with the real lib and the package stand-ins as `nixpkgs`. One change to
    lib: lib.fileset needs builtins.readFileType (Nix >= 2.14), which Debian's Nix 2.8 lacks, so its
    four functions the workspace uses record the file set expression instead of reading the tree."""
    return f"""
let
  realLib = {lib_expr()};
  fileset = {{
    toSource = {{ root, fileset }}: {{ inherit root fileset; }};
    difference = base: minus: {{ inherit base minus; }};
    unions = list: list;
    maybeMissing = path: toString path;
  }};
  lib = realLib // {{ inherit fileset; }};
  pkgs = import {REPO}/tests/nix/pkgs.nix {{ inherit lib; }};
  pkgsFor = system: pkgs // {{ stdenv.hostPlatform.system = system; }};
  nixpkgs = {{
    inherit lib;
    legacyPackages = {{ x86_64-linux = pkgsFor "x86_64-linux"; aarch64-linux = pkgsFor "aarch64-linux"; }};
  }};
  flake = import {REPO}/flake.nix;
  self = flake.outputs {{ inherit nixpkgs; self = self // {{ outPath = "{REPO}"; }}; }};
in self
"""


def test_the_flake_checks_are_the_rust_checks_plus_one_vm_check_per_scenario():
    checks = nix_eval(f"builtins.mapAttrs (_: builtins.attrNames) ({flake_outputs()}).checks")
    vm = sorted(check_name(d) for d in scenario_dirs())
    assert sorted(checks["x86_64-linux"]) == sorted(["cargo-test", "cargo-clippy", "cargo-fmt", "nixos-option-types"] + vm)
    assert sorted(checks["aarch64-linux"]) == ["cargo-clippy", "cargo-fmt", "cargo-test", "nixos-option-types"]


def test_the_flake_exposes_packages_modules_overlay_shell_formatter_and_validate():
    out = nix_eval(
        f"let f = {flake_outputs()}; in {{ top = builtins.attrNames f; "
        f"apps = builtins.attrNames f.apps.x86_64-linux; modules = builtins.attrNames f.nixosModules; "
        f"shells = builtins.attrNames f.devShells.x86_64-linux; "
        f"scenarios = builtins.attrNames f.lib.vmtestScenarios; }}"
    )
    assert {"packages", "nixosModules", "overlays", "devShells", "formatter", "checks", "apps", "lib"} <= set(out["top"])
    assert out["apps"] == ["validate"] and "default" in out["modules"] and out["shells"] == ["default"]
    assert sorted(out["scenarios"]) == sorted(check_name(d) for d in scenario_dirs())
    flake = (REPO / "flake.nix").read_text()
    for name in ("nixfleet-control-plane", "nixfleet-agent", '"nixfleet"'):
        assert name in (REPO / "nixos" / "pkgs" / "packages.nix").read_text()
    assert "--all) " in flake and "--vm) " in flake and "--rust) " in flake
    assert 'cargoLock.lockFile = root + "/Cargo.lock"' in (REPO / "nixos" / "pkgs" / "workspace.nix").read_text()


def test_the_packages_are_one_workspace_build_split_per_binary():
    out = nix_eval(
        f"let f = {flake_outputs()}; p = f.packages.x86_64-linux; w = p.nixfleet-workspace; in {{ "
        f"names = builtins.attrNames p; lock = toString w.cargoLock.lockFile; flags = w.cargoBuildFlags; "
        f"tests = w.cargoTestFlags; version = w.version; "
        f"base = toString w.src.fileset.base; excluded = w.src.fileset.minus; "
        f"bins = map (n: {{ inherit n; script = p.${{n}}.script; main = p.${{n}}.env.meta.mainProgram; }}) "
        f"[ \"nixfleet\" \"nixfleet-agent\" \"nixfleet-control-plane\" ]; "
        f"clippy = f.checks.x86_64-linux.cargo-clippy.buildPhase; test = f.checks.x86_64-linux.cargo-test.doCheck; }}"
    )
    assert out["names"] == ["default", "nixfleet", "nixfleet-agent", "nixfleet-control-plane", "nixfleet-workspace"]
    assert out["lock"] == str(REPO / "Cargo.lock")
    assert out["flags"] == ["--workspace"] and out["tests"] == ["--workspace", "--lib", "--bins"]
    assert out["version"] == re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    # Editing modules, VM tests, docs or these tests must not rebuild the binaries.
    assert out["base"] == str(REPO)
    for d in ("nixos", "vmtests", "docs", "tests", "target"):
        assert str(REPO / d) in out["excluded"], d
    for b in out["bins"]:
        assert b["main"] == b["n"] and f"/bin/{b['n']} $out/bin/{b['n']}" in b["script"], b
    assert "cargo clippy --workspace --all-targets --offline -- -D warnings" in out["clippy"]
    assert out["test"] is True


def test_the_flake_module_defaults_the_packages_to_its_own_builds():
    out = nix_eval(
        f"let f = {flake_outputs()}; e = {evaluation('[ f.nixosModules.default ]', with_nixfleet=False)}; "
        f"m = f.nixosModules.default {{ inherit (e) pkgs; lib = {lib_expr()}; }}; in "
        f"{{ imports = map toString m.imports; "
        f"agent = e.config.services.nixfleet-agent.package.script; "
        f"cp = e.config.services.nixfleet-control-plane.package.script; }}"
    )
    assert out["imports"] == [str(REPO / "nixos")]
    assert "/bin/nixfleet-agent $out" in out["agent"] and "/bin/nixfleet-control-plane $out" in out["cp"]


def clap_long_flags(src_dir: Path) -> set[str]:
    """`--flag` names of clap fields (`#[arg(long ...)] pub field_name`) in a crate's sources."""
    flags = set()
    for f in src_dir.rglob("*.rs"):
        text = f.read_text()
        for m in re.finditer(r"#\[arg\(\s*long\b(?:\s*=\s*\"([^\"]+)\")?[^\]]*\)\]\s*(?:///[^\n]*\n\s*)*pub (\w+):",
                             text, re.S):
            flags.add("--" + (m.group(1) or m.group(2).replace("_", "-")))
    return flags


def test_every_flag_the_modules_pass_is_one_the_binaries_accept():
    checked = 0
    for service, crate in (("nixfleet-agent", "agent"), ("nixfleet-control-plane", "engine")):
        accepted = clap_long_flags(REPO / crate / "src")
        if not accepted:
            continue  # the binary does not parse flags with clap yet; nothing to compare
        wanted = {spec["flag"] for spec in FLAGS[service]["options"].values()}
        if service == "nixfleet-control-plane":
            wanted.add(FLAGS[service]["checkConfigFlag"])
        assert not wanted - accepted, f"{crate} does not accept {sorted(wanted - accepted)}"
        checked += 1
    assert checked >= 1, "neither the agent nor the control plane declares clap flags"


def test_the_agent_package_builds_the_binaries_the_workspace_declares():
    # The per-binary packages link bin/<name>; the workspace must build exactly those names.
    names = {"nixfleet-control-plane": REPO / "engine" / "Cargo.toml", "nixfleet": REPO / "cli" / "Cargo.toml"}
    for binary, manifest in names.items():
        assert f'name = "{binary}"' in manifest.read_text(), f"{manifest} has no [[bin]] {binary}"
    assert 'name = "nixfleet-agent"' in (REPO / "agent" / "Cargo.toml").read_text()
    assert FLAGS["nixfleet-agent"]["binary"] == "nixfleet-agent"
    assert FLAGS["nixfleet-control-plane"]["binary"] == "nixfleet-control-plane"


def scenario_node_definitions(directory: str) -> dict:
    """Every scenario node built by vmtests/nix/helpers.nix mkNode, evaluated with the real module system
    (its specialisations too, each as NixOS builds it: the node's modules extended by its configuration)."""
    return nix_eval(f"""
let
  lib = {lib_expr()};
  pkgs = import {REPO}/tests/nix/pkgs.nix {{ inherit lib; }};
  helpers = import {REPO}/vmtests/nix/helpers.nix {{
    inherit lib pkgs;
    nixosModule = {REPO}/nixos;
    packages = {{ nixfleet = pkgs.nixfleet; nixfleet-control-plane = pkgs.nixfleet-control-plane;
                 nixfleet-agent = pkgs.nixfleet-agent; }};
  }};
  plan = (import {REPO}/vmtests/nix/nodes.nix).load {{
    scenarioDir = {SCENARIOS / directory}; libDir = {REPO}/vmtests/lib; }};
in builtins.mapAttrs (host: p:
  let
    e = import {REPO}/tests/nix/eval.nix {{ inherit lib; withNixfleet = false;
      modules = [ (helpers.mkNode {{ scenario = plan.name; inherit host; plan = p; }}) ]; }};
    c = e.config;
  in {{ role = p.role; systems = p.systems or "nixos"; failed = e.failedAssertions; stats = e.stats; defs = {{
    agent = if p ? agent then c.services.nixfleet-agent else null;
    cp = if p ? controlPlane then c.services.nixfleet-control-plane else null;
    cache = if p ? cacheServer then c.services.nixfleet-cache-server else null;
    postgres = if p ? database then c.services.postgresql else null;
    units = builtins.mapAttrs (_: u: u.wantedBy) c.systemd.services;
    nodeJson = c.environment.etc."nixfleet-vmtests/node.json".text;
    specialisations = builtins.mapAttrs (_: sp:
      let c2 = (e.eval.extendModules {{ modules = [ sp.configuration {{ specialisation = lib.mkOverride 0 {{ }}; }} ]; }}).config; in {{
      demo = c2.systemd.services.fake-app.serviceConfig.ExecStart;
      activation = c2.system.activationScripts.nixfleet-vmtests-generation.text;
      preSwitchChecks = builtins.attrNames c2.system.preSwitchChecks;
    }}) c.specialisation;
    activation = c.system.activationScripts.nixfleet-vmtests-generation.text or null;
  }}; }}) plan.nodes
""")


def test_every_scenario_node_evaluates_through_the_helpers_into_declared_options():
    if not scenario_dirs():
        pytest.skip("no scenario directories yet")
    # An option the modules do not declare is an evaluation error of the real module system.
    problems = []
    for d in scenario_dirs():
        if not (SCENARIOS / d / "nodes.json").is_file():
            continue
        for host, node in scenario_node_definitions(d).items():
            if node["failed"]:
                problems.append(f"{d}/{host}: failed assertions {node['failed']}")
            defs = node["defs"]
            assert json.loads(defs["nodeJson"])["host"] == host
            if node["role"] == "control-plane":
                # The fleet's cp, or one of several control planes with a certificate of its own name.
                assert defs["cp"]["enable"] is True and defs["cp"]["tls"]["key"] in (
                    "/etc/nixfleet-tls/cp-key.pem", f"/etc/nixfleet-tls/{host}-key.pem"), (d, host)
            if node["role"] == "database":
                assert defs["postgres"]["enable"] and defs["postgres"]["ensureDatabases"] == ["nixfleet"], defs
                assert "host all all samenet trust" in defs["postgres"]["authentication"], defs
            if node["role"] == "agent":
                assert defs["agent"]["enable"] is True and defs["agent"]["machineId"] == host, (d, host)
                assert defs["agent"]["tls"]["clientKey"] == f"/etc/nixfleet-tls/{host}-key.pem"
                assert "autoStart" not in defs["agent"]
            if node["role"] == "cache-server":
                assert defs["cache"]["signingKeyFile"] == "/etc/nixfleet-vmtests/cache-key.sec"
                assert defs["units"]["harmonia"] == ["multi-user.target"]
            if node["role"] == "agent" and node["systems"] != "fake":
                # G1 is the node's own NixOS configuration, the other generations its specialisations
                # (vmtests/nix/generations.nix); no fake generation 1 at boot.
                assert "nixfleet-vmtests-boot" not in defs["units"], (d, host)
                assert defs["units"]["fake-app"] == ["multi-user.target"], (d, host)
                assert '"1 ${NIXOS_ACTION:-switch} start"' in defs["activation"], defs["activation"]
                sp = defs["specialisations"]
                assert set(sp) >= {"g2", "g2-switch-fails", "g2-unhealthy", "g2-slow", "g3"}, (d, host, sorted(sp))
                assert '"2 ${NIXOS_ACTION:-switch} start"' in sp["g2"]["activation"], sp["g2"]
                assert "sleep 15" in sp["g2-slow"]["activation"]
                assert sp["g2-switch-fails"]["preSwitchChecks"] == ["nixfleet-vmtests-switch-fails"]
                assert sp["g2"]["preSwitchChecks"] == []
                assert len({v["demo"] for v in sp.values()}) == len(sp), "each generation has its own demo service"
            else:
                assert defs["units"]["nixfleet-vmtests-boot"] == ["multi-user.target"]
                assert defs["specialisations"] == {}
    assert not problems, "\n".join(problems)


def test_an_agent_with_auto_start_off_is_installed_but_not_wanted_at_boot():
    if not all((SCENARIOS / d / "nodes.json").is_file() for d in ("vm-fleet-timeout", "vm-fleet-poll-retry")):
        pytest.skip("vm-fleet-timeout and vm-fleet-poll-retry are not there yet")
    nodes = scenario_node_definitions("vm-fleet-timeout")
    assert nodes["web-01"]["defs"]["units"]["nixfleet-agent"] == []
    nodes = scenario_node_definitions("vm-fleet-poll-retry")
    assert nodes["cp"]["defs"]["units"]["nixfleet-control-plane"] == []
    assert nodes["agent"]["defs"]["units"]["nixfleet-agent"] == ["multi-user.target"]


def build(expr: str) -> Path:
    out = subprocess.run(["nix-build", "--no-out-link", *NO_SUBSTITUTERS, "--option", "sandbox", "false",
                          "-E", expr], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def test_keys() -> Path:
    return build(
        f"let k = import {REPO}/vmtests/nix/test-keys.nix {{ hostnames = [ \"web-01\" \"db-01\" ]; }}; in "
        "builtins.derivation { name = \"nixfleet-test-keys\"; system = builtins.currentSystem; "
        "builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; args = [ \"-c\" k.script ]; }"
    )


def test_the_build_time_pki_gives_every_host_a_certificate_with_its_name(test_keys):
    tls = test_keys / "tls"
    names = sorted(p.name.removesuffix("-cert.pem") for p in tls.glob("*-cert.pem"))
    assert names == sorted({"cp", "web-01", "db-01", "operator", "builder", "cache", "unauth", "wrong-agent",
                            "machine", "agent"})
    assert not (tls / "ca-key.pem").exists()
    for n in names:
        subprocess.run(["openssl", "verify", "-CAfile", tls / "ca.pem", tls / f"{n}-cert.pem"], check=True,
                       capture_output=True)
        subj = subprocess.run(["openssl", "x509", "-in", tls / f"{n}-cert.pem", "-noout", "-subject"],
                              check=True, capture_output=True, text=True).stdout
        assert subj.strip().endswith(f"CN = {n}") or subj.strip().endswith(f"CN={n}"), subj
        assert (tls / f"{n}-key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_the_build_time_pki_does_mutual_tls_and_rejects_a_client_without_a_certificate(test_keys):
    tls = test_keys / "tls"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls / "ca.pem"))
    server_ctx.load_cert_chain(tls / "cp-cert.pem", tls / "cp-key.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = []

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    seen.append(s.getpeercert()["subject"])
                    s.sendall(b"ok")
            except (ssl.SSLError, OSError):
                seen.append(None)

    t = threading.Thread(target=serve, args=(2,), daemon=True)
    t.start()
    client = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    client.load_cert_chain(tls / "web-01-cert.pem", tls / "web-01-key.pem")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.recv(2) == b"ok"
    anonymous = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with anonymous.wrap_socket(raw, server_hostname="cp") as s:
                s.recv(2)
    t.join(timeout=10)
    listener.close()
    assert seen[0] == ((("commonName", "web-01"),),) and seen[1] is None


def test_the_build_time_cache_key_signs_paths_that_nix_then_accepts(test_keys, tmp_path):
    nix = ["nix", "--extra-experimental-features", "nix-command"]
    path = build("builtins.derivation { name = \"signed-by-test-key\"; system = builtins.currentSystem; "
                 f"builder = \"/bin/sh\"; args = [ \"-c\" \"echo {tmp_path.name} > $out\" ]; }}")
    subprocess.run(nix + ["store", "sign", "--key-file", test_keys / "cache" / "cache-key.sec", path], check=True)
    subprocess.run(nix + ["copy", "--to", f"file://{tmp_path}/cache", path], check=True, capture_output=True)
    good = (test_keys / "cache" / "cache-key.pub").read_text().strip()
    assert good.startswith("nixfleet-test-cache-1:")
    assert (test_keys / "cache" / "nix-trusted-keys.conf").read_text() == f"trusted-public-keys = {good}\n"
    ok = subprocess.run(nix + ["copy", "--from", f"file://{tmp_path}/cache", "--to", f"{tmp_path}/store-a", path,
                               "--option", "trusted-public-keys", good, *NO_SUBSTITUTERS],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    other = "nixfleet-test-cache-1:" + "A" * 43 + "="
    bad = subprocess.run(nix + ["copy", "--from", f"file://{tmp_path}/cache", "--to", f"{tmp_path}/store-b", path,
                                "--option", "trusted-public-keys", other, *NO_SUBSTITUTERS],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "lacks a valid signature" in bad.stderr


@pytest.fixture()
def shim(tmp_path) -> Path:
    real = tmp_path / "real-nix"
    real.write_text("#!/bin/sh\necho \"real nix: $*\"\n")
    real.chmod(0o755)
    text = nix_eval(f"import {REPO}/vmtests/nix/nix-shim.nix {{ realNix = \"{real}\"; "
                    f"python = \"{shutil.which('python3')}\"; }}")
    path = tmp_path / "nix"
    path.write_text(text)
    path.chmod(0o755)
    (tmp_path / "responses.json").write_text(json.dumps({"hosts": {
        "web-01": {"toplevel": "/nix/store/aaaa-nixos-system-web-01", "tags": ["web"]},
        "db-01": {"toplevel": "/nix/store/bbbb-nixos-system-db-01"}}}))
    return path


def run_shim(shim: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NIXFLEET_SHIM_RESPONSES=str(shim.parent / "responses.json"))
    return subprocess.run([str(shim), *args], capture_output=True, text=True, env=env, cwd=shim.parent)


def test_the_nix_shim_answers_eval_and_build_from_canned_responses(shim):
    r = run_shim(shim, "eval", "/tmp/fake-flake#nixosConfigurations", "--apply", "builtins.attrNames", "--json")
    assert json.loads(r.stdout) == ["db-01", "web-01"]
    r = run_shim(shim, "eval", "--json", '/tmp/fake-flake#nixosConfigurations."web-01".config.services.nixfleet-agent.tags')
    assert json.loads(r.stdout) == ["web"]
    r = run_shim(shim, "eval", "--raw", "/tmp/fake-flake#nixosConfigurations.db-01.pkgs.system")
    assert r.stdout == "x86_64-linux"
    r = run_shim(shim, "build", "--no-link", "--json",
                 "/tmp/fake-flake#nixosConfigurations.web-01.config.system.build.toplevel")
    assert json.loads(r.stdout)[0]["outputs"]["out"] == "/nix/store/aaaa-nixos-system-web-01"
    r = run_shim(shim, "build", "--no-link", "--print-out-paths",
                 "/tmp/fake-flake#nixosConfigurations.db-01.config.system.build.toplevel")
    assert r.stdout.strip() == "/nix/store/bbbb-nixos-system-db-01"
    r = run_shim(shim, "eval", "--json", "/tmp/fake-flake#nixosConfigurations.nope.config.x")
    assert r.returncode == 1 and "no canned eval result" in r.stderr


def test_the_nix_shim_passes_every_other_command_to_the_real_nix_by_absolute_path(shim):
    r = run_shim(shim, "copy", "--to", "ssh://root@cache", "/nix/store/aaaa-nixos-system-web-01")
    assert r.stdout.strip() == "real nix: copy --to ssh://root@cache /nix/store/aaaa-nixos-system-web-01"
    r = run_shim(shim, "eval", "--expr", "1 + 1")
    assert r.stdout.strip() == "real nix: eval --expr 1 + 1"
    assert str(shim.parent / "real-nix") in shim.read_text()


def test_the_fake_system_template_builds_with_the_nixos_adaptation():
    template = REPO / "vmtests" / "lib" / "fake-system.nix.tmpl"
    if not template.exists():
        pytest.skip("vmtests/lib/fake-system.nix.tmpl is not there yet")
    adapted = nix_eval(
        f"import {REPO}/vmtests/nix/fake-system-nixos.nix {{ template = builtins.readFile {template}; "
        f"coreutils = \"/usr\"; systemd = \"/usr\"; python3 = \"/usr/bin/python3\"; }}"
    )
    assert adapted != template.read_text()
    out = build(f"import (builtins.toFile \"fake-system.nix\" {nix_str(adapted)}) "
                "{ host = \"web-01\"; version = \"7\"; }")
    switch = (out / "bin" / "switch-to-configuration").read_text()
    assert "PATH=/usr/bin:/usr/bin:$PATH" in switch
    assert (out / "nixos-version").read_text().strip() == "7"
    # On a NixOS node the fake generation keeps the booted system's software ...
    assert os.readlink(out / "sw") == "/run/booted-system/sw"
    # ... without dragging that system into its closure.
    refs = subprocess.run(["nix-store", "-q", "--references", str(out)], check=True, capture_output=True,
                          text=True).stdout.split()
    assert refs in ([], [str(out)]), refs


def test_a_changed_fake_system_template_fails_evaluation_loudly():
    err = nix_eval_fails(
        f"import {REPO}/vmtests/nix/fake-system-nixos.nix {{ template = \"builtins.derivation {{ }}\"; "
        f"coreutils = \"/usr\"; systemd = \"/usr\"; python3 = \"/usr/bin/python3\"; }}"
    )
    assert "fake-system.nix.tmpl changed" in err


# The real module system: types, merging, priorities, assertions -----------------------------


def test_the_lib_comes_from_the_variable_or_nix_path_and_without_either_the_tests_fail_with_one_line(monkeypatch,
                                                                                                   tmp_path):
    monkeypatch.delenv("NIXFLEET_NIXPKGS_LIB", raising=False)
    monkeypatch.setenv("NIX_PATH", f"nixpkgs-lib={REPO.parent / 'shared' / 'nixpkgs-lib'}")
    assert find_nixpkgs_lib() == REPO.parent / "shared" / "nixpkgs-lib" / "lib"
    monkeypatch.setenv("NIXFLEET_NIXPKGS_LIB", str(tmp_path))
    assert find_nixpkgs_lib() is None
    # A run without a lib fails (never skips), with one line saying what to set.
    env = dict(os.environ, NIXFLEET_NIXPKGS_LIB=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                        "-k", "test_the_cache_client_adds_the_substituter_and_its_key"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout
    assert NO_LIB in r.stdout and "skipped" not in r.stdout, r.stdout


AGENT = {"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrl": "https://cp:8080"}}}


@pytest.mark.parametrize("option, value, type_name", [
    ("pollInterval", 0, "positive integer, meaning >0"),
    ("metricsPort", 70000, "null or 16 bit unsigned integer; between 0 and 65535 (both inclusive)"),
    ("switchMode", "fast", 'one of "auto", "systemd-run", "direct"'),
    ("tags", "web", "list of string"),
])
def test_a_wrongly_typed_value_is_the_type_error_nixos_gives(option, value, type_name):
    err = eval_failure(f"[ {json_module(AGENT)} {json_module({'services': {'nixfleet-agent': {option: value}}})} ]")
    assert (f"A definition for option `services.nixfleet-agent.{option}' is not of type `{type_name}'."
            in err), err


def test_a_unit_setting_systemd_does_not_know_is_refused_as_on_nixos():
    err = eval_failure(f"[ {json_module(AGENT)} "
                       "{ systemd.services.nixfleet-agent.serviceConfig.Type = (import "
                       f"{NIXPKGS_LIB}).mkForce \"simpel\"; }} ]")
    assert "Systemd Service field `Type' cannot have value `simpel'." in err, err
    assert ("A definition for option `systemd.services.nixfleet-agent.serviceConfig' is not of type "
            "`attribute set of (systemd option)'") in err, err


def test_an_option_no_module_declares_is_an_error():
    err = eval_failure(f"[ {json_module(AGENT)} {json_module({'services': {'nixfleet-agent': {'autoStart': False}}})} ]")
    assert "The option `services.nixfleet-agent.autoStart' does not exist." in err, err


def test_two_conflicting_definitions_are_the_error_nixos_gives():
    other = {"services": {"nixfleet-agent": {"controlPlaneUrl": "https://other:8080"}}}
    err = eval_failure(f"[ {json_module(AGENT)} {json_module(other)} ]")
    assert "The option `services.nixfleet-agent.controlPlaneUrl' has conflicting definition values:" in err, err
    # A host's unit setting against the module's: systemd options merge only when equal.
    err = eval_failure(f"[ {json_module(AGENT)} {{ systemd.services.nixfleet-agent.serviceConfig.User = \"nobody\"; }} ]")
    assert "The option `systemd.services.nixfleet-agent.serviceConfig.User' has conflicting definition values:" in err
    assert "In `/work/main/nixos/modules/agent.nix': \"root\"".replace("/work/main", str(REPO)) in err, err


def test_mk_force_and_mk_default_win_and_lose_as_on_nixos():
    lib = lib_expr()
    out = nix_eval(f"""let e = {evaluation(f'''[ {json_module(AGENT)} {{
        systemd.services.nixfleet-agent.serviceConfig.User = {lib}.mkForce "nobody";
        nixfleet.role = "server"; nixfleet.firewall.enable = false;
        services.nixfleet-agent.tags = [ "a" ]; }} {{ services.nixfleet-agent.tags = [ "b" ]; }} ]''')}; in {{
      user = e.config.systemd.services.nixfleet-agent.serviceConfig.User;
      firewall = e.config.nixfleet.firewall.enable; exporter = e.config.nixfleet.monitoring.nodeExporter.enable;
      nftables = e.config.networking.nftables.enable; tags = e.config.services.nixfleet-agent.tags; }}""")
    # mkForce beats the module's "root"; the role's mkDefault loses to a plain false, keeps the rest;
    # two list definitions merge.
    assert out == {"user": "nobody", "firewall": False, "exporter": True, "nftables": True, "tags": ["b", "a"]}, out


ASSERTION_CASES = [
    ({"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrl": "https://cp:8080", "tls": {
        "clientCert": "/etc/c.pem", "clientKey": "/nix/store/00000000000000000000000000000000-key.pem"}}}},
     "services.nixfleet-agent.tls.clientKey must not be a store path"),
    ({"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrl": "https://cp:8080",
                                      "tls": {"clientCert": "/etc/c.pem"}}}},
     "services.nixfleet-agent: set tls.clientCert and tls.clientKey together."),
    ({"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrl": "http://cp:8080"}}},
     "services.nixfleet-agent.controlPlaneUrl(s) is plain http://"),
    ({"services": {"nixfleet-agent": {"enable": True}}},
     "services.nixfleet-agent: set controlPlaneUrl or controlPlaneUrls."),
    ({"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrls": ["https://cp-1:8080,https://cp-2:8080"]}}},
     "services.nixfleet-agent: a control plane URL holds a comma"),
    ({"services": {"nixfleet-agent": {"enable": True, "controlPlaneUrl": "https://cp:8080", "stateDir": "/srv/a"}}},
     "services.nixfleet-agent.stateDir must be a directory directly under /var/lib"),
    ({"services": {"nixfleet-control-plane": {"enable": True, "tls": {
        "cert": "/etc/c.pem", "key": "/nix/store/00000000000000000000000000000000-k.pem"}}}},
     "services.nixfleet-control-plane.tls.key must not be a store path"),
    ({"services": {"nixfleet-control-plane": {"enable": True, "tls": {"cert": "/etc/c.pem"}}}},
     "services.nixfleet-control-plane: set tls.cert and tls.key together."),
    ({"services": {"nixfleet-control-plane": {"enable": True}}},
     "services.nixfleet-control-plane: set tls.cert and tls.key, or insecure = true (tests only)."),
    ({"services": {"nixfleet-control-plane": {"enable": True, "insecure": True, "listen": "localhost"}}},
     "services.nixfleet-control-plane.listen must be HOST:PORT"),
    ({"services": {"nixfleet-control-plane": {"enable": True, "insecure": True, "dataDir": "/var/lib/a/b"}}},
     "services.nixfleet-control-plane.dataDir must be a directory directly under /var/lib"),
    ({"services": {"nixfleet-control-plane": {"enable": True, "insecure": True, "logBackend": "postgres"}}},
     'services.nixfleet-control-plane: logBackend = "postgres" needs postgresUrl'),
    ({"services": {"nixfleet-control-plane": {"enable": True, "insecure": True, "cpId": "cp-1"}}},
     'services.nixfleet-control-plane: postgresUrl, cpId and executorLeaseSeconds apply to logBackend = "postgres" only'),
    ({"services": {"nixfleet-control-plane": {"enable": True, "insecure": True, "logBackend": "postgres",
                                              "postgresUrl": "postgres://db/nixfleet",
                                              "environmentFile": "/nix/store/00000000000000000000000000000000-e"}}},
     "services.nixfleet-control-plane.environmentFile must not be a store path"),
    ({"services": {"nixfleet-cache-server": {"enable": True}}},
     "services.nixfleet-cache-server.signingKeyFile must be set"),
    ({"nixfleet": {"backup": {"enable": True, "backend": "restic", "restic": {"repository": "/r"}}}},
     "nixfleet.backup: the restic backend needs restic.repository and restic.passwordFile."),
    ({"nixfleet": {"backup": {"enable": True, "backend": "borgbackup", "borgbackup": {"passphraseFile": "/p"}}}},
     "nixfleet.backup: the borgbackup backend needs borgbackup.repository and borgbackup.passphraseFile."),
]


@pytest.mark.parametrize("values, message", ASSERTION_CASES, ids=[m[:40] for _, m in ASSERTION_CASES])
def test_each_assertion_fires_for_the_combination_it_guards_and_only_that_one(values, message):
    failed = failed_assertions(values)
    assert len(failed) == 1 and failed[0].startswith(message), failed


def test_the_modules_declare_assertions_only_these_cases_cover():
    declared = nix_eval(f"map (a: a.message) {evaluation(f'[ {FULL_HOST_NIX} ]')}.config.assertions")
    covered = [m for _, m in ASSERTION_CASES]
    assert len(declared) == len(covered), declared
    for message in declared:
        assert any(message.startswith(c) for c in covered), f"no test makes this assertion fire: {message}"


# Every module on, every scope (tests/nix/full-host.nix; the flake's nixos-option-types check uses it too).
FULL_HOST_NIX = f"(import {REPO}/tests/nix/full-host.nix)"


def test_every_module_evaluates_together_with_every_value_type_checked(capsys):
    stats = nix_eval(f"{evaluation(f'[ {FULL_HOST_NIX} ]')}.stats")
    result = nix_eval(f"{evaluation(f'[ {FULL_HOST_NIX} ]')}.view")
    assert result["assertions"] and all(a["assertion"] for a in result["assertions"])
    assert result["users"]["users"]["alice"]["extraGroups"] == ["wheel", "networkmanager", "video", "audio"]
    assert sorted(result["networking"]["firewall"]["allowedTCPPorts"]) == [5000, 8080, 9101]
    assert result["systemd"]["services"]["prometheus-node-exporter"]["wantedBy"] == ["multi-user.target"] \
        if "prometheus-node-exporter" in result["systemd"]["services"] else True
    assert stats["nixfleetOptions"] >= 75 and stats["options"] >= 120 and stats["definitions"] >= 150, stats
    with capsys.disabled():
        print(f"\nreal module system: {stats['options']} options ({stats['nixfleetOptions']} of nixfleet's) "
              f"type-checked, {stats['definitions']} definitions merged")


def test_the_flake_check_holds_the_local_declarations_against_another_evaluations_options():
    # The flake's nixos-option-types check runs tests/nix/option-types.nix against a real NixOS system;
    # here against our own declarations (nothing differs) and the older harmonia layout (something does).
    same = nix_eval(f"import {REPO}/tests/nix/option-types.nix {{ lib = {lib_expr()}; "
                    f"localOptions = {evaluation()}.options; otherOptions = {evaluation()}.options; }}")
    assert same["mismatches"] == [] and same["count"] >= 40, same
    flat = nix_eval(f"(import {REPO}/tests/nix/option-types.nix {{ lib = {lib_expr()}; "
                    f"localOptions = {evaluation()}.options; "
                    f"otherOptions = {evaluation(harmonia_layout='flat')}.options; }}).mismatches")
    assert "services.harmonia.cache.enable: nixpkgs declares no such option" in flat, flat
    assert "flake.nix" and "tests/nix/option-types.nix" in (REPO / "flake.nix").read_text()
