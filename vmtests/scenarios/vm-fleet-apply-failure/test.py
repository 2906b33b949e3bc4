start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
web_01.wait_for_unit("multi-user.target")
original = current_system(web_01)

with subtest("The sentinel is armed before the agent starts"):
    web_01.succeed("touch /var/lib/fail-next-health")
    web_01.succeed("systemctl start nixfleet-agent.service")
    wait_for(lambda: machine_status(cp, "web-01"), timeout=60, what="web-01 to register")

with subtest("The first health report is unhealthy and the rollout pauses"):
    release = create_release(cp, {"web-01": original})
    rid = create_rollout(cp, release, tags=["web"], health_timeout=30)
    wait_rollout_status(cp, rid, "paused", timeout=90)
    evs = events(cp, stream=f"rollout:{rid}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], kinds(evs)
    assert evs[2]["data"]["reason"].lower() == "unhealthy", evs[2]

with subtest("The current generation is still the original one and the agent runs"):
    assert machine_status(cp, "web-01")["current_generation"] == original
    assert current_system(web_01) == original
    web_01.succeed("systemctl is-active nixfleet-agent.service")

with subtest("Cleared, the agent sends a passing health report"):
    paused_at = events(cp, stream=f"rollout:{rid}")[-1]["seq"]
    web_01.succeed("rm /var/lib/fail-next-health")
    wait_for(lambda: any(e["kind"] == "HealthReported" and e["data"]["all_passed"]
                         for e in events(cp, after=paused_at, stream="machine:web-01")),
             timeout=30, what="a passing health report")

with subtest("Resume completes the rollout"):
    api(cp, "POST", f"/api/v1/rollouts/{rid}/resume", expect=200)
    wait_rollout_status(cp, rid, "completed", timeout=120)
    assert_in_order(kinds(events(cp, stream=f"rollout:{rid}")),
                    ["BatchFailed", "RolloutPaused", "RolloutResumed", "BatchStarted", "BatchSucceeded",
                     "RolloutCompleted"])
