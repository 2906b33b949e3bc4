start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
web_01.wait_for_unit("multi-user.target")
web_01.fail("systemctl is-active nixfleet-agent.service")
wait_healthy(cp, ["web-02"])
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}
# G2 is in each host's own store, the silent one's included: only its agent could switch to it.
g2 = {h: build_fake_system(m, h, 2) for h, m in agents.items()}

with subtest("The silent machine is registered by the operator"):
    api(cp, "POST", "/api/v1/machines/web-01/register", {"tags": ["web"]}, expect=201)

with subtest("The rollout pauses when the health timeout elapses"):
    release = create_release(cp, g2)
    rid = create_rollout(cp, release, tags=["web"], health_timeout=10)
    detail = wait_rollout_status(cp, rid, "paused", timeout=90)
    assert detail["batches"][0]["status"] == "failed", detail["batches"]
    cp.succeed("journalctl -u nixfleet-control-plane --no-pager | grep -q 'Health timeout elapsed'")

with subtest("The event stream shows the timeout, in order"):
    evs = events(cp, stream=f"rollout:{rid}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], kinds(evs)
    failed = evs[2]["data"]
    assert failed["reason"].lower() == "timeout", failed
    assert failed["unhealthy"] == 1 and failed["healthy"] == 1 and failed["batch_index"] == 0, failed
    assert dict(evs[1]["data"]["previous"]) == {"web-01": None, "web-02": g1["web-02"]}, evs[1]

with subtest("No report from the silent machine is in the log"):
    machine_kinds = kinds(machine_events(cp, "web-01"))
    assert "MachineRegistered" in machine_kinds and "DesiredGenerationSet" in machine_kinds, machine_kinds
    assert "ReportReceived" not in machine_kinds and "HealthReported" not in machine_kinds, machine_kinds

with subtest("The silent machine stays on G1; the healthy one moved to G2"):
    assert_runs(web_01, "web-01", g1["web-01"], 1)
    assert_switches(web_01, "2", 0)
    web_01.fail("test -e /tmp/stub-switch-called")
    assert_deployed(cp, "web-02", g2["web-02"])
    assert_runs(web_02, "web-02", g2["web-02"], 2)
