start_all()
agent.wait_for_unit("nixfleet-agent.service")

with subtest("The first poll hits a closed port and a retry is scheduled"):
    cp.fail("systemctl is-active nixfleet-control-plane.service")
    agent.wait_until_succeeds(
        "journalctl -u nixfleet-agent --no-pager | grep -q 'Initial poll failed, scheduling retry'", timeout=60)

with subtest("Once the control plane starts, the agent's retry registers it"):
    cp.succeed("systemctl start nixfleet-control-plane.service")
    cp.wait_for_open_port(8080)
    seed_admin_key(cp)
    wait_for(lambda: len(list_machines(cp)) == 1, timeout=90, what="the agent to register")
    agent.succeed("systemctl is-active nixfleet-agent.service")
    # The agent kept the same process: it retried, it was not restarted by systemd.
    assert agent.get_unit_info("nixfleet-agent.service")["NRestarts"] == "0"
