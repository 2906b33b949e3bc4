"""Scenario loading and node layers: what the driver makes of nodes.json before any container boots.

Why: a mistake here (a default not merged, a scope not applied, a port not opened)
would show up only as a confusing failure deep inside a scenario.
Run: python3 -m pytest vmtests/tests
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VMTESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(VMTESTS))

from driver import scenario  # noqa: E402
from driver.machine import python_name  # noqa: E402
from driver.net import Network  # noqa: E402


@pytest.fixture
def scenarios_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(scenario, "SCENARIOS", tmp_path)
    return tmp_path


def write_scenario(root: Path, name: str, nodes: dict) -> None:
    d = root / name
    d.mkdir()
    (d / "nodes.json").write_text(json.dumps({"name": name, "nodes": nodes}))
    (d / "test.py").write_text("start_all()\n")


def test_node_defaults_are_merged_under_the_nodes_settings(scenarios_dir):
    write_scenario(scenarios_dir, "vm-x", {"web-01": {"role": "agent", "agent": {"tags": ["web"], "pollInterval": 9}}})
    agent = scenario.load_nodes("vm-x")["nodes"]["web-01"]["agent"]
    assert agent["machineId"] == "web-01"
    assert agent["tls"]["clientCert"] == "/etc/nixfleet-tls/web-01-cert.pem"
    assert agent["pollInterval"] == 9 and agent["healthInterval"] == 5
    assert agent["tags"] == ["web"]


def test_an_unknown_role_is_refused_with_the_file_and_the_node(scenarios_dir):
    write_scenario(scenarios_dir, "vm-x", {"h": {"role": "kitchen-sink"}})
    with pytest.raises(scenario.ScenarioError, match=r"nodes.json: node h: unknown role 'kitchen-sink'"):
        scenario.load_nodes("vm-x")


def test_an_unknown_scope_is_refused(scenarios_dir):
    write_scenario(scenarios_dir, "vm-x", {"h": {"role": "plain", "scopes": ["core", "desktop"]}})
    with pytest.raises(scenario.ScenarioError, match="unknown scope 'desktop'"):
        scenario.load_nodes("vm-x")


def test_discovery_needs_both_nodes_json_and_test_py(scenarios_dir):
    write_scenario(scenarios_dir, "vm-a", {"h": {"role": "plain"}})
    (scenarios_dir / "vm-b").mkdir()
    (scenarios_dir / "vm-b" / "nodes.json").write_text("{}")
    assert scenario.discover() == ["vm-a"]


def test_binaries_are_required_by_role():
    nodes = {"cp": {"role": "control-plane"}, "a": {"role": "agent", "agent": {}}, "o": {"role": "operator"},
             "t": {"role": "ssh-target"}}
    assert scenario.needed_binaries(nodes) == ["nixfleet", "nixfleet-agent", "nixfleet-control-plane"]
    assert scenario.needed_binaries({"t": {"role": "ssh-target"}}) == []


def test_open_ports_follow_roles_and_scopes():
    cp = {"role": "control-plane", "scopes": ["core"], "controlPlane": {"listen": "0.0.0.0:8443"}}
    web = {"role": "agent", "scopes": ["core", "monitoring"], "agent": {"metricsPort": 9101}, "openPorts": [80]}
    assert scenario.open_ports(cp) == [22, 8443]
    assert scenario.open_ports(web) == [22, 80, 9100, 9101]


def test_node_names_become_python_names_as_in_nixos_tests():
    assert python_name("web-01") == "web_01"
    assert python_name("cp") == "cp"


def test_every_node_resolves_every_other_by_name():
    net = Network("nfvt0", ["cp", "web-01"])
    hosts = net.hosts_file()
    assert "10.232.0.10 cp cp.test" in hosts and "10.232.0.11 web-01 web-01.test" in hosts
    assert net.veth("web-01") == "v1"


def test_the_firewall_scope_adds_the_ssh_rate_limit_and_logged_drops(tmp_path):
    run = lambda scope, **env: subprocess.run(  # noqa: E731
        ["sh", str(scenario.LIB / "scopes" / f"{scope}.sh")], check=True,
        env={"PATH": "/usr/bin:/bin", "ROOT": str(tmp_path), "NODE": "h", "OPEN_TCP_PORTS": "22 8080", **env})
    (tmp_path / "etc").mkdir()
    run("core")
    core = (tmp_path / "etc/nftables.conf").read_text()
    assert "chain input" in core and "tcp dport { 8080 } accept" in core and "limit rate" not in core
    run("firewall")
    fw = (tmp_path / "etc/nftables.conf").read_text()
    assert "tcp dport 22 ct state new limit rate 5/minute accept" in fw
    assert 'log prefix "nixfleet-fw ssh-rate-limit: " level info drop' in fw
    assert 'log prefix "refused connection: "' in fw
    # nft itself loads this file in the containers: vm-core and vm-infra wait for nftables.service.
