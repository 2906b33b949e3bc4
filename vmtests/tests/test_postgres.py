"""The database role: what the driver makes of a `database` node (vmtests/driver/postgres.py).

Why: vm-ha-failover's control planes share a log on this server; a wrong default, a closed
port or a setup that is not idempotent would show up only as a control plane that cannot start.
Run: python3 -m pytest vmtests/tests
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

VMTESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(VMTESTS))

from driver import postgres, scenario  # noqa: E402


def test_a_database_node_gets_the_defaults_and_its_port_is_open(tmp_path, monkeypatch):
    monkeypatch.setattr(scenario, "SCENARIOS", tmp_path)
    (tmp_path / "vm-x").mkdir()
    (tmp_path / "vm-x" / "nodes.json").write_text(json.dumps(
        {"nodes": {"db": {"role": "database"}, "db2": {"role": "database", "database": {"port": 5433}}}}))
    nodes = scenario.load_nodes("vm-x")["nodes"]
    assert nodes["db"]["database"] == {"port": 5432, "name": "nixfleet", "user": "nixfleet"}
    assert nodes["db2"]["database"]["port"] == 5433 and nodes["db2"]["database"]["name"] == "nixfleet"
    assert scenario.open_ports(nodes["db"]) == [22, 5432]


def test_the_server_trusts_the_test_network_and_makes_its_database_idempotently():
    if not postgres.HOST_LIB.is_dir():
        pytest.skip("no PostgreSQL on this host (apt-get install postgresql)")
    db = {"port": 5432, "name": "nixfleet", "user": "nixfleet"}
    assert "host all all samenet trust" in postgres.hba()
    script = postgres.setup_script(db)
    # Each object is made only when the catalog lacks it, so a restart does not fail.
    assert "rolname = 'nixfleet'\" | grep -q 1 || $psql -c 'CREATE ROLE \"nixfleet\" LOGIN'" in script
    assert "datname = 'nixfleet'\" | grep -q 1 || $psql -c 'CREATE DATABASE \"nixfleet\" OWNER \"nixfleet\"'" in script
    unit = postgres.units(db)["postgresql.service"]
    assert "Type=notify" in unit and "-c port=5432" in unit and "listen_addresses=*" in unit
    assert "test -f $PGDATA/PG_VERSION ||" in unit  # initdb on the first start only


def test_without_postgresql_on_the_host_the_scenario_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(postgres, "HOST_LIB", tmp_path / "none")
    with pytest.raises(postgres.PostgresError, match="apt-get install postgresql"):
        postgres.binds()
