start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}

with subtest("The first batch succeeds"):
    release = create_release(cp, g1)
    rid = create_rollout(cp, release, tags=["web"], strategy="staged", batch_sizes=["1", "1"],
                         on_failure="revert", health_timeout=10)
    wait_for(lambda: [b["status"] for b in rollout(cp, rid)["batches"]][0] == "succeeded", timeout=90,
             what="batch 0 to succeed")

with subtest("Armed sentinels fail the second batch and the rollout is reverted"):
    for m in agents.values():
        m.succeed("touch /var/lib/fail-next-health")
    detail = wait_rollout_status(cp, rid, "reverted", timeout=90)
    first, second = detail["batches"]
    assert first["status"] == "succeeded" and second["status"] == "failed", detail["batches"]
    (h1,) = first["machine_ids"]
    assert first["previous_generations"] == {h1: g1[h1]}, first

with subtest("Every machine of the rollout is sent back, the failed batch included"):
    evs = events(cp, stream=f"rollout:{rid}")
    assert_in_order(kinds(evs), ["BatchSucceeded", "BatchStarted", "BatchFailed", "RolloutReverted"])
    restored = dict(next(e for e in evs if e["kind"] == "RolloutReverted")["data"]["restored"])
    assert restored == g1, restored
    for h in agents:
        assert machine_status(cp, h)["desired_generation"] == g1[h]

with subtest("The failing machine logged its failing check and both agents still run"):
    (h2,) = second["machine_ids"]
    agents[h2].succeed("journalctl -u nixfleet-agent --no-pager | grep -qi health")
    for m in agents.values():
        m.succeed("systemctl is-active nixfleet-agent.service")
