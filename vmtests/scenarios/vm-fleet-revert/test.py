start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
wait_healthy(cp, ["web-01", "web-02"])
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}
ROLLOUT = dict(tags=["web"], strategy="staged", batch_sizes=["1", "1"], on_failure="revert", health_timeout=40,
               seed=20261125)

with subtest("The plan for a fixed seed names the machine of each batch"):
    # The plan depends on the machines, not on the release's paths: plan with a release of G1.
    plan = plan_rollout(cp, create_release(cp, g1), **ROLLOUT)
    (h1,), (h2,) = [b["machine_ids"] for b in plan["batches"]]
    assert {h1, h2} == set(agents), plan

with subtest("G2 is built on each host; the second batch's G2 serves a failing demo service"):
    g2 = {h1: build_fake_system(agents[h1], h1, 2), h2: build_fake_system(agents[h2], h2, 2, "unhealthy")}
    for h, m in agents.items():
        assert_runs(m, h, g1[h], 1)
    release = create_release(cp, g2)

with subtest("The first batch moves to G2 and succeeds; the second batch's machine fails on G2"):
    rid = create_rollout(cp, release, **ROLLOUT)
    assert [b["machine_ids"] for b in rollout(cp, rid)["batches"]] == [[h1], [h2]]
    detail = wait_rollout_status(cp, rid, "reverted", timeout=90)
    first, second = detail["batches"]
    assert first["status"] == "succeeded" and second["status"] == "failed", detail["batches"]
    assert first["previous_generations"] == {h1: g1[h1]}, first
    assert second["previous_generations"] == {h2: g1[h2]}, second
    assert_deployed(cp, h1, g2[h1])
    # h2 did switch to its G2: the demo service it started answered 503 and the agent rolled back.
    assert_switches(agents[h2], "2-unhealthy", 1)
    back = [r for r in reports(cp, h2) if r.get("rolled_back_from") == g2[h2]]
    assert back and "health checks failed" in back[0]["message"], reports(cp, h2)

with subtest("The revert sends every machine of every started batch back to its G1"):
    evs = events(cp, stream=f"rollout:{rid}")
    assert_in_order(kinds(evs), ["BatchStarted", "BatchSucceeded", "BatchStarted", "BatchFailed", "RolloutFailed",
                                 "RolloutReverted"])
    reverted = next(e for e in evs if e["kind"] == "RolloutReverted")
    restored = dict(reverted["data"]["restored"])
    assert restored == g1, restored
    for h in agents:
        sets = [e for e in machine_events(cp, h, "DesiredGenerationSet") if e["seq"] < reverted["seq"]]
        assert sets[-1]["data"]["path"] == g1[h], (h, sets[-1])
        assert "revert" in json.dumps(sets[-1]["data"]["cause"]).lower(), sets[-1]
        assert machine_status(cp, h)["desired_generation"] == g1[h]

with subtest("On the hosts: both machines run G1 again, the one of the succeeded batch included"):
    # h1 was healthy on G2: only the revert brings it back.
    wait_for(lambda: current_system(agents[h1]) == g1[h1], timeout=60, what=f"{h1} to switch back to G1")
    for h, m in agents.items():
        assert_runs(m, h, g1[h], 1)
        wait_for(lambda: (machine_status(cp, h) or {}).get("current_generation") == g1[h], timeout=30,
                 what=f"{h} to report G1")
    # h1 switched G1 -> G2 -> G1: the second G1 switch after boot is the revert's.
    assert_switches(agents[h1], "2", 1)
    assert_switches(agents[h1], "1", 2)

with subtest("Both agents still run"):
    for m in agents.values():
        m.succeed("systemctl is-active nixfleet-agent.service")
