start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)

with subtest("All three agents register with their tags"):
    wait_for(lambda: len(list_machines(cp)) == 3, timeout=60, what="3 machines")
    assert sorted(m["machine_id"] for m in list_machines(cp, ["web"])) == ["web-01", "web-02"]
    assert [m["machine_id"] for m in list_machines(cp, ["db"])] == ["db-01"]

with subtest("A canary rollout on tag web completes"):
    # "Both agents healthy" first (as in the seed): the web checks probe the demo service, which
    # may start after an agent's first check.
    for web in (web_01, web_02):
        web.wait_for_open_port(9000)
    wait_healthy(cp, ["web-01", "web-02"])
    # Dry-run agents: each machine's release path is the system it runs.
    web_release = create_release(cp, {"web-01": current_system(web_01), "web-02": current_system(web_02)})
    web_rollout = create_rollout(cp, web_release, tags=["web"], strategy="staged", batch_sizes=["1", "100%"],
                                 health_timeout=30)
    detail = wait_rollout_status(cp, web_rollout, "completed", timeout=120)
    assert [len(b["machine_ids"]) for b in detail["batches"]] == [1, 1], detail["batches"]
    assert all(b["status"] == "succeeded" for b in detail["batches"]), detail["batches"]
    evs = events(cp, stream=f"rollout:{web_rollout}")
    assert kinds(evs) == ["RolloutCreated", "BatchStarted", "BatchSucceeded", "BatchStarted", "BatchSucceeded",
                          "RolloutCompleted"], kinds(evs)

with subtest("Control plane metrics expose fleet size and rollout totals"):
    metrics = cp.succeed(f"{CURL} {API}/metrics")
    assert "nixfleet_fleet_size" in metrics, metrics
    assert "nixfleet_rollouts_total" in metrics, metrics

with subtest("web-01 serves node metrics, also to another host"):
    web_01.wait_for_open_port(9100)
    assert "node_cpu" in web_01.succeed("curl -sf http://localhost:9100/metrics")
    assert "node_cpu" in cp.succeed("curl -sf http://web-01:9100/metrics")

with subtest("An all_at_once rollout on tag db pauses on the health timeout"):
    db_release = create_release(cp, {"db-01": current_system(db_01)})
    db_rollout = create_rollout(cp, db_release, tags=["db"], strategy="all_at_once", health_timeout=10)
    detail = wait_rollout_status(cp, db_rollout, "paused", timeout=60)
    assert detail["batches"][0]["status"] == "failed", detail["batches"]
    evs = events(cp, stream=f"rollout:{db_rollout}")
    assert_in_order(kinds(evs), ["RolloutCreated", "BatchStarted", "BatchFailed", "RolloutPaused"])
    failed = next(e for e in evs if e["kind"] == "BatchFailed")
    assert failed["data"]["unhealthy"] == 1, failed
    # db-01 reported a failing check (nothing listens on :9999): a health failure, not silence.
    db_health = [e for e in events(cp, stream="machine:db-01") if e["kind"] == "HealthReported"]
    assert db_health and not db_health[-1]["data"]["all_passed"], db_health[-1:]

with subtest("Resuming the paused rollout moves it out of paused"):
    api(cp, "POST", f"/api/v1/rollouts/{db_rollout}/resume", expect=200)
    wait_for(lambda: rollout(cp, db_rollout)["status"] != "paused", timeout=30, what="rollout to leave paused")
    assert "RolloutResumed" in kinds(events(cp, stream=f"rollout:{db_rollout}"))
