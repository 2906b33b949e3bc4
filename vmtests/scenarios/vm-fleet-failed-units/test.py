start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: machine_status(cp, "web-01"), timeout=60, what="web-01 to register")
wait_healthy(cp, ["web-01"])
g1 = current_system(web_01)
g2 = build_fake_system(web_01, "web-01", 2, "exit4")
release = create_release(cp, {"web-01": g2})


def switch_reports(after=0):
    return [e["data"] for e in machine_events(cp, "web-01", "SwitchReported", after=after)]


with subtest("By default a switch that exits 4 fails the batch, though it activated and its checks pass"):
    rid = create_rollout(cp, release, tags=["web"], health_timeout=60)
    wait_rollout_status(cp, rid, "paused", timeout=90)
    story = kinds(events(cp, stream=f"rollout:{rid}"))
    assert story == ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"], story
    outcomes = switch_reports()
    assert [(s["path"], s["outcome"], s["exit_code"]) for s in outcomes] == [(g2, "FailedUnits", 4)], outcomes
    # Not a failed switch: the agent kept G2 (no rollback) and left the verdict to the gate.
    assert not [r for r in reports(cp, "web-01") if r.get("rolled_back_from")], reports(cp, "web-01")
    assert_switches(web_01, "2-exit4", 1)
    assert_runs(web_01, "web-01", g2, 2)
    assert machine_events(cp, "web-01", "MachineQuarantined") == []

with subtest("Back to G1, then the same G2 with allow_failed_units completes"):
    api(cp, "POST", f"/api/v1/rollouts/{rid}/cancel", expect=200)
    wait_rollout_status(cp, rid, "cancelled", timeout=30)
    back = create_rollout(cp, create_release(cp, {"web-01": g1}), tags=["web"], health_timeout=60)
    wait_rollout_status(cp, back, "completed", timeout=90)
    assert_runs(web_01, "web-01", g1, 1)
    seq = events(cp)[-1]["seq"]
    body = rollout_request(release, tags=["web"], health_timeout=60)
    body["allow_failed_units"] = True
    _, r = api(cp, "POST", "/api/v1/rollouts", body, expect=201)
    allowed = r["rollout_id"]
    wait_rollout_status(cp, allowed, "completed", timeout=90)
    story = kinds(events(cp, stream=f"rollout:{allowed}"))
    assert story == ["RolloutCreated", "RolloutOptionsSet", "BatchStarted", "BatchSucceeded", "RolloutCompleted"], story
    assert [(s["outcome"], s["exit_code"]) for s in switch_reports(after=seq)] == [("FailedUnits", 4)]
    assert_switches(web_01, "2-exit4", 2)
    assert_runs(web_01, "web-01", g2, 2)
