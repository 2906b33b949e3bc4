start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
wait_healthy(cp, ["web-01", "web-02"])

with subtest("A staged rollout is started"):
    release = create_release(cp, {"web-01": current_system(web_01), "web-02": current_system(web_02)})
    rid = create_rollout(cp, release, tags=["web"], strategy="staged", batch_sizes=["1", "100%"], health_timeout=60)
    wait_for(lambda: "BatchStarted" in kinds(events(cp, stream=f"rollout:{rid}")), timeout=30,
             what="the first batch to start")
    seq_before = events(cp)[-1]["seq"]

with subtest("SIGKILL: the control plane dies and systemd restarts it"):
    pid_before = cp.get_unit_info("nixfleet-control-plane.service")["MainPID"]
    cp.succeed("systemctl kill --signal=SIGKILL nixfleet-control-plane.service")
    cp.wait_until_succeeds("test \"$(systemctl show -p MainPID --value nixfleet-control-plane.service)\" != "
                           f"{pid_before} && systemctl is-active nixfleet-control-plane.service", timeout=30)
    cp.wait_for_open_port(8080)

with subtest("After the restart nothing acknowledged was lost and the rollout completes"):
    evs = events(cp)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "the log has gaps"
    assert evs[-1]["seq"] >= seq_before
    wait_rollout_status(cp, rid, "completed", timeout=120)
    assert kinds(events(cp, stream=f"rollout:{rid}")) == [
        "RolloutCreated", "BatchStarted", "BatchSucceeded", "BatchStarted", "BatchSucceeded", "RolloutCompleted"]

with subtest("The restarted control plane verified and replayed its log at startup"):
    # The control plane checks the log's hash chain and order when it opens it, and refuses to start
    # on a broken log; two starts means two verified replays.
    replays = cp.succeed("journalctl -u nixfleet-control-plane --no-pager | grep -c 'event log replayed'").strip()
    assert int(replays) >= 2, replays
