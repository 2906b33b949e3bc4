start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
web_01.wait_for_unit("multi-user.target")
web_01.fail("systemctl is-active nixfleet-agent.service")

with subtest("The silent machine is registered by the operator"):
    api(cp, "POST", "/api/v1/machines/web-01/register", {"tags": ["web"]}, expect=201)

with subtest("The rollout pauses when the health timeout elapses"):
    release = create_release(cp, {"web-01": current_system(web_01)})
    rid = create_rollout(cp, release, tags=["web"], health_timeout=5)
    detail = wait_rollout_status(cp, rid, "paused", timeout=90)
    assert detail["batches"][0]["status"] == "failed", detail["batches"]
    cp.succeed("journalctl -u nixfleet-control-plane --no-pager | grep -q 'Health timeout elapsed'")

with subtest("The event stream shows the timeout, in order"):
    evs = events(cp, stream=f"rollout:{rid}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], kinds(evs)
    failed = evs[2]["data"]
    assert failed["reason"].lower() == "timeout", failed
    assert failed["unhealthy"] == 1 and failed["batch_index"] == 0, failed

with subtest("No report from the silent machine is in the log"):
    machine_kinds = kinds(events(cp, stream="machine:web-01"))
    assert "MachineRegistered" in machine_kinds, machine_kinds
    assert "ReportReceived" not in machine_kinds and "HealthReported" not in machine_kinds, machine_kinds
