start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
wait_healthy(cp, ["web-01", "web-02"])
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}

release = create_release(cp, g1)
ROLLOUT = dict(tags=["web"], strategy="staged", batch_sizes=["1", "1"], on_failure="revert", health_timeout=10,
               seed=20261125)

with subtest("The plan for a fixed seed names the machine of each batch"):
    plan = plan_rollout(cp, release, **ROLLOUT)
    (h1,), (h2,) = [b["machine_ids"] for b in plan["batches"]]
    assert {h1, h2} == set(agents), plan

with subtest("The second batch's machine fails its check; the first batch succeeds"):
    # Armed before the rollout: batches follow each other within seconds here.
    agents[h2].succeed("touch /var/lib/fail-next-health")
    wait_for(lambda: machine_status(cp, h2)["health"] == "unhealthy", timeout=30, what=f"{h2} to report unhealthy")
    rid = create_rollout(cp, release, **ROLLOUT)
    assert [b["machine_ids"] for b in rollout(cp, rid)["batches"]] == [[h1], [h2]]
    detail = wait_rollout_status(cp, rid, "reverted", timeout=90)
    first, second = detail["batches"]
    assert first["status"] == "succeeded" and second["status"] == "failed", detail["batches"]
    assert first["previous_generations"] == {h1: g1[h1]}, first

with subtest("Every machine of the rollout is sent back, the failed batch included"):
    evs = events(cp, stream=f"rollout:{rid}")
    assert_in_order(kinds(evs), ["BatchSucceeded", "BatchStarted", "BatchFailed", "RolloutReverted"])
    restored = dict(next(e for e in evs if e["kind"] == "RolloutReverted")["data"]["restored"])
    assert restored == g1, restored
    for h in agents:
        assert machine_status(cp, h)["desired_generation"] == g1[h]

with subtest("The failing machine logged its failing check and both agents still run"):
    agents[h2].succeed("journalctl -u nixfleet-agent --no-pager | grep -qi health")
    for m in agents.values():
        m.succeed("systemctl is-active nixfleet-agent.service")
