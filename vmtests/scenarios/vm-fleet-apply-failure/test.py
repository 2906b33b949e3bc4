start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: machine_status(cp, "web-01"), timeout=60, what="web-01 to register")
wait_healthy(cp, ["web-01"])
g1 = current_system(web_01)

with subtest("G2, whose switch fails before it changes anything, is built on web-01"):
    g2 = build_fake_system(web_01, "web-01", 2, "switch-fails")
    assert_runs(web_01, "web-01", g1, 1)
    web_01.fail("test -e /tmp/stub-switch-called")

with subtest("The switch to G2 fails, the agent rolls back to G1 and the rollout pauses"):
    release = create_release(cp, {"web-01": g2})
    rid = create_rollout(cp, release, tags=["web"], health_timeout=60)
    wait_rollout_status(cp, rid, "paused", timeout=60)
    evs = events(cp, stream=f"rollout:{rid}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], kinds(evs)
    assert evs[2]["data"]["reason"].lower() == "unhealthy", evs[2]
    back = [r for r in reports(cp, "web-01") if r.get("rolled_back_from") == g2]
    assert len(back) == 1, reports(cp, "web-01")
    assert not back[0]["success"] and back[0]["generation"] == g1, back
    assert back[0]["message"].startswith("rolled back") and "switch" in back[0]["message"], back

with subtest("On the host: G2's switch ran once and G1 runs again, profile included"):
    assert_switches(web_01, "2-switch-fails", 1)
    # The rollback switched G1 again (the boot activation was the first).
    assert_switches(web_01, "1", 2)
    assert web_01.succeed("cat /tmp/stub-switch-called").strip() == "switch"
    assert_runs(web_01, "web-01", g1, 1)
    assert machine_status(cp, "web-01")["current_generation"] == g1

with subtest("The failed path is quarantined: the agent does not try G2 again"):
    quarantined = machine_events(cp, "web-01", "MachineQuarantined")
    assert [q["data"]["path"] for q in quarantined] == [g2], quarantined
    seq = events(cp)[-1]["seq"]
    # Several polls (every 2 s) see G2 as desired and skip it.
    wait_for(lambda: len([r for r in reports(cp, "web-01", after=seq) if "quarantined" in r["message"]]) >= 3,
             timeout=30, what="three polls that skip the quarantined path")
    assert_switches(web_01, "2-switch-fails", 1)
    assert current_system(web_01) == g1
    assert rollout(cp, rid)["status"] == "paused"

with subtest("The operator resumes: the quarantine is lifted and the agent tries G2 exactly once more"):
    api(cp, "POST", f"/api/v1/rollouts/{rid}/resume", expect=200)
    wait_for(lambda: rollout(cp, rid)["status"] == "paused" and
             kinds(events(cp, stream=f"rollout:{rid}")).count("RolloutPaused") == 2, timeout=60,
             what="the resumed rollout to pause again")
    assert_in_order(kinds(events(cp, stream=f"rollout:{rid}")),
                    ["RolloutPaused", "RolloutResumed", "BatchStarted", "BatchFailed", "RolloutPaused"])
    assert "QuarantineCleared" in kinds(machine_events(cp, "web-01"))
    again = machine_events(cp, "web-01", "MachineQuarantined")
    assert len(again) == 2, again
    wait_for(lambda: len([r for r in reports(cp, "web-01", after=again[-1]["seq"])
                          if r["message"].startswith("quarantined:")]) >= 2,
             timeout=30, what="two polls that skip G2 again")
    assert_switches(web_01, "2-switch-fails", 2)
    assert_runs(web_01, "web-01", g1, 1)

with subtest("A fixed release G3 completes and the host runs it"):
    api(cp, "POST", f"/api/v1/rollouts/{rid}/cancel", expect=200)
    wait_rollout_status(cp, rid, "cancelled", timeout=30)
    g3 = build_fake_system(web_01, "web-01", 3)
    fixed = create_release(cp, {"web-01": g3})
    rid3 = create_rollout(cp, fixed, tags=["web"], health_timeout=60)
    wait_rollout_status(cp, rid3, "completed", timeout=90)
    story = kinds(events(cp, stream=f"rollout:{rid3}"))
    assert story == ["RolloutCreated", "BatchStarted", "BatchSucceeded", "RolloutCompleted"], story
    assert_deployed(cp, "web-01", g3)
    assert_runs(web_01, "web-01", g3, 3)
    assert_switches(web_01, "2-switch-fails", 2)
