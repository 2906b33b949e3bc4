start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
wait_healthy(cp, ["web-01", "web-02"])
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}
g2 = {h: build_fake_system(m, h, 2) for h, m in agents.items()}
release = create_release(cp, g2)

with subtest("web-02 is cut off; the batch it is in times out and the rollout pauses"):
    web_02.block()
    web_02.fail("curl -s --max-time 3 -o /dev/null https://cp:8080/health")
    rid = create_rollout(cp, release, tags=["web"], strategy="all_at_once", health_timeout=15)
    detail = wait_rollout_status(cp, rid, "paused", timeout=60)
    evs = events(cp, stream=f"rollout:{rid}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], kinds(evs)
    assert evs[2]["data"]["reason"].lower() == "timeout", evs[2]
    assert evs[2]["data"]["unhealthy"] == 1 and evs[2]["data"]["healthy"] == 1, evs[2]
    health = detail["batches"][0]["machine_health"]
    assert health["web-01"] == "healthy" and health["web-02"] != "healthy", health
    web_02.succeed("systemctl is-active nixfleet-agent.service")

with subtest("The connected machine moved to G2; the cut-off one still runs G1"):
    assert_deployed(cp, "web-01", g2["web-01"])
    assert_runs(web_01, "web-01", g2["web-01"], 2)
    assert_runs(web_02, "web-02", g1["web-02"], 1)
    assert_switches(web_02, "2", 0)
    assert "ReportReceived" not in kinds(machine_events(cp, "web-02", after=evs[0]["seq"]))

with subtest("web-02 rejoins and reports again"):
    paused_seq = evs[-1]["seq"]
    web_02.unblock()
    wait_for(lambda: reports(cp, "web-02", after=paused_seq), timeout=60, what="web-02 to report after the partition")

with subtest("Resume completes the rollout and web-02 moves to G2 too"):
    api(cp, "POST", f"/api/v1/rollouts/{rid}/resume", expect=200)
    wait_rollout_status(cp, rid, "completed", timeout=60)
    assert_deployed(cp, "web-02", g2["web-02"])
    for h, m in agents.items():
        assert_runs(m, h, g2[h], 2)
        assert_switches(m, "2", 1)
