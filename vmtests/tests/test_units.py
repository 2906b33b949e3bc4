"""The local units start the binaries exactly as the NixOS modules do.

Why: both sides read nixos/service-flags.json, but each renders it with its own
code (driver/units.py here, nixos/lib/flags.nix and nixos/lib/health-checks.nix
there). These tests evaluate the Nix files with the real nix-instantiate and
compare, so the local and the NixOS runs cannot drift apart silently.
Run: python3 -m pytest vmtests/tests
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VMTESTS = Path(__file__).resolve().parents[1]
REPO = VMTESTS.parent
sys.path.insert(0, str(VMTESTS))

from driver import scenario, units  # noqa: E402

FLAG_MAP = units.load_flag_map()


def nix_eval(expr: str, tmp_path: Path, data: object) -> object:
    """Evaluate `expr` (which may use `data`, read from JSON) with nix-instantiate."""
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    full = f"let data = builtins.fromJSON (builtins.readFile {data_file}); in {expr}"
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", full],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def nix_render(service: str, values: dict, credential_dir: str | None, tmp_path: Path) -> dict:
    cred = "null" if credential_dir is None else json.dumps(credential_dir)
    expr = f"""
      let f = import {REPO}/nixos/lib/flags.nix;
          argv = f.args {{ service = "{service}"; values = data; credentialDir = {cred}; }};
      in {{ inherit argv;
            creds = f.credentials {{ service = "{service}"; values = data; }};
            exec = f.execLine "/opt/nixfleet/bin/{service}" argv; }}"""
    return nix_eval(expr, tmp_path, values)


def scenario_configs(key: str) -> list[tuple[str, dict]]:
    """Every node configuration of `key` ("agent" or "controlPlane") in every scenario, defaults merged."""
    out = []
    for name in scenario.discover():
        for host, node in scenario.load_nodes(name)["nodes"].items():
            if key in node:
                out.append((f"{name}/{host}", node[key]))
    return out


def every_option_set(service: str) -> dict:
    """A configuration that sets every option of `service` to a value that renders."""
    cfg: dict = {}
    for name, spec in FLAG_MAP[service]["options"].items():
        value = {"bool": True, "int": 4242, "commaList": ["a", "b"], "str": f"v-{name}", "path": f"/etc/x/{name}"}[spec["type"]]
        cur = cfg
        parts = name.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return cfg


SERVICES = [("nixfleet-control-plane", "%d"), ("nixfleet-agent", None)]
CONFIGS = (
    [(s, d, f"defaults-{s}", {}) for s, d in SERVICES]
    + [(s, d, f"all-options-{s}", every_option_set(s)) for s, d in SERVICES]
    + [("nixfleet-control-plane", "%d", n, c) for n, c in scenario_configs("controlPlane")]
    + [("nixfleet-agent", None, n, c) for n, c in scenario_configs("agent")]
)


@pytest.mark.parametrize("service,credential_dir,label,cfg", CONFIGS, ids=[c[2] for c in CONFIGS])
def test_argv_credentials_and_exec_line_match_the_nix_renderer(service, credential_dir, label, cfg, tmp_path):
    values = units.values_from(service, cfg, FLAG_MAP)
    ours = units.render_args(service, values, FLAG_MAP, credential_dir=credential_dir)
    theirs = nix_render(service, values, credential_dir, tmp_path)
    assert ours == theirs["argv"]
    assert units.credentials(service, values, FLAG_MAP) == theirs["creds"]
    assert units.exec_line(f"/opt/nixfleet/bin/{service}", ours) == theirs["exec"]


@pytest.mark.parametrize("service,credential_dir", SERVICES)
def test_a_unit_with_every_option_set_uses_exactly_the_flags_of_service_flags_json(service, credential_dir):
    render = units.control_plane_unit if service == "nixfleet-control-plane" else units.agent_unit
    words = units.exec_start_words(render(every_option_set(service), FLAG_MAP))
    assert words[0] == f"/opt/nixfleet/bin/{FLAG_MAP[service]['binary']}"
    used = {w for w in words[1:] if w.startswith("--")}
    declared = {spec["flag"] for spec in FLAG_MAP[service]["options"].values()}
    assert used == declared


def test_the_control_plane_unit_reads_tls_material_through_credentials():
    unit = units.control_plane_unit({"tls": {"cert": "/etc/nixfleet-tls/cp-cert.pem", "key": "/etc/k.pem",
                                             "clientCa": "/etc/ca.pem"}}, FLAG_MAP)
    words = units.exec_start_words(unit)
    assert words[words.index("--tls-cert") + 1] == "%d/tls-cert"
    assert "LoadCredential=tls-cert:/etc/nixfleet-tls/cp-cert.pem" in unit.splitlines()
    assert "LoadCredential=client-ca:/etc/ca.pem" in unit.splitlines()


def test_agent_tags_render_as_one_comma_separated_flag():
    words = units.exec_start_words(units.agent_unit({"tags": ["web", "canary", "eu-west"]}, FLAG_MAP))
    assert words[words.index("--tags") + 1] == "web,canary,eu-west"
    assert words.count("--tags") == 1


def test_a_false_bool_and_an_unset_option_render_nothing():
    words = units.exec_start_words(units.agent_unit({"dryRun": False}, FLAG_MAP))
    assert "--dry-run" not in words
    assert "--cache-url" not in words  # default null
    assert "--dry-run" in units.exec_start_words(units.agent_unit({"dryRun": True}, FLAG_MAP))


def test_an_option_unknown_to_service_flags_json_is_refused_with_its_name():
    with pytest.raises(ValueError, match="pollIntervall"):
        units.agent_unit({"pollIntervall": 3}, FLAG_MAP)


def test_arguments_with_spaces_and_percent_are_quoted_as_flags_nix_does(tmp_path):
    values = units.values_from("nixfleet-agent", {"machineId": "a b%c$d"}, FLAG_MAP)
    ours = units.render_args("nixfleet-agent", values, FLAG_MAP)
    assert units.exec_line("/p", ours) == nix_render("nixfleet-agent", values, None, tmp_path)["exec"].replace(
        "/opt/nixfleet/bin/nixfleet-agent", "/p")
    assert '"a b%%c$$d"' in units.exec_line("/p", ours)


HEALTH = [
    {},
    {"healthChecks": {"http": [{"url": "http://localhost:9999/health"}]}},
    {"healthChecks": {"systemd": [{"units": ["fake-app.service"]}, {"units": ["a", "b"], "interval": 7}],
                      "http": [{"url": "http://x/", "expectedStatus": 204, "timeout": 9, "interval": 2}],
                      "command": [{"name": "sentinel", "command": "test ! -f /var/lib/fail-next-health"}]}},
] + [c for _, c in scenario_configs("agent")]


@pytest.mark.parametrize("cfg", HEALTH)
def test_the_health_check_file_matches_the_nix_renderer(cfg, tmp_path):
    theirs = nix_eval(f"(import {REPO}/nixos/lib/health-checks.nix).render (data.healthChecks or {{}})", tmp_path, cfg)
    assert units.health_checks(cfg) == theirs


def test_every_scenario_declares_valid_nodes():
    names = scenario.discover()
    assert "vm-core" in names
    for name in names:
        spec = scenario.load_nodes(name)
        assert spec["name"] == name, f"{name}/nodes.json says name {spec['name']!r}"
        for host, node in spec["nodes"].items():
            if "agent" in node:
                units.agent_unit(node["agent"], FLAG_MAP)
            if "controlPlane" in node:
                units.control_plane_unit(node["controlPlane"], FLAG_MAP)
