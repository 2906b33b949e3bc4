start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
wait_healthy(cp, ["web-01", "web-02"])
agents = {"web-01": web_01, "web-02": web_02}
g1 = {h: current_system(m) for h, m in agents.items()}
ROLLOUT = dict(tags=["web"], strategy="staged", batch_sizes=["1", "100%"], health_timeout=90, seed=4242)

with subtest("G2 is built on each host; the canary's switch takes 15 s, long enough to kill the control plane"):
    plan = plan_rollout(cp, create_release(cp, g1), **ROLLOUT)
    (canary,), (rest,) = [b["machine_ids"] for b in plan["batches"]]
    g2 = {canary: build_fake_system(agents[canary], canary, 2, "slow", delay=15),
          rest: build_fake_system(agents[rest], rest, 2)}
    label = {canary: "2-slow", rest: "2"}
    release = create_release(cp, g2)

with subtest("The rollout is mid-flight: the canary's batch started and is switching, the next one pending"):
    rid = create_rollout(cp, release, **ROLLOUT)
    agents[canary].wait_until_succeeds(f"grep -q '^2-slow switch start$' {SWITCH_LOG}", timeout=30)
    before = rollout(cp, rid)
    assert before["status"] == "running", before
    assert [b["status"] for b in before["batches"]] == ["deploying", "pending"], before["batches"]
    assert [b["machine_ids"] for b in before["batches"]] == [[canary], [rest]], before["batches"]
    assert kinds(events(cp, stream=f"rollout:{rid}")) == ["RolloutCreated", "BatchStarted"], events(cp, stream=f"rollout:{rid}")
    assert current_system(agents[canary]) == g1[canary] and current_system(agents[rest]) == g1[rest]
    log_before = events(cp)
    seq_before = log_before[-1]["seq"]

with subtest("SIGKILL: the control plane dies mid-rollout and systemd restarts it"):
    pid_before = cp.get_unit_info("nixfleet-control-plane.service")["MainPID"]
    cp.succeed("systemctl kill --signal=SIGKILL nixfleet-control-plane.service")
    cp.wait_until_succeeds("test \"$(systemctl show -p MainPID --value nixfleet-control-plane.service)\" != "
                           f"{pid_before} && systemctl is-active nixfleet-control-plane.service", timeout=30)
    cp.wait_for_open_port(8080)

with subtest("The restarted control plane replayed its log: every record is back and the rollout is still in flight"):
    # The canary is still switching, so nothing new can have decided the batch yet.
    agents[canary].fail(f"grep -q '^2-slow switch done$' {SWITCH_LOG}")
    after = rollout(cp, rid)
    assert after["status"] == "running", after
    assert [b["status"] for b in after["batches"]] == ["deploying", "pending"], after["batches"]
    replayed = events(cp)
    assert replayed[:len(log_before)] == log_before, "records acknowledged before the kill differ after the restart"

with subtest("After the restart the rollout completes, every host on G2, and the log has no gap"):
    wait_rollout_status(cp, rid, "completed", timeout=120)
    story = kinds(events(cp, stream=f"rollout:{rid}"))
    assert story == ["RolloutCreated", "BatchStarted", "BatchSucceeded", "BatchStarted", "BatchSucceeded",
                     "RolloutCompleted"], story
    evs = events(cp)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "the log has gaps"
    assert evs[-1]["seq"] > seq_before
    for h, m in agents.items():
        assert_deployed(cp, h, g2[h])
        assert_runs(m, h, g2[h], 2)
        assert_switches(m, label[h], 1)
    # The canary's deploy report reached the restarted control plane, after the kill.
    canary_deploy = assert_deployed(cp, canary, g2[canary])
    assert canary_deploy["seq"] > seq_before, canary_deploy

CLI = cli_env(CERT_PREFIX, url=API, key=TEST_KEY)

with subtest("nixfleet timeline tells the rollout's story, with the report that decided each batch"):
    story = cp.succeed(f"{CLI} nixfleet timeline {rid}")
    for text in ["created: release", "batch 0 succeeded: 1 healthy", "batch 1 succeeded: 1 healthy", "completed"]:
        assert text in story, f"{text!r} missing from:\n{story}"
    assert story.rstrip().splitlines()[-1].startswith("Status: completed"), story
    t = json.loads(cp.succeed(f"{CLI} nixfleet --json timeline {rid}"))
    decided = [line for line in t["lines"] if "succeeded" in line["text"]]
    assert len(decided) == 2, t
    assert all(e["verdict"] == "healthy" and e["seq"] for line in decided for e in line["evidence"]), decided
    failed = cp.succeed(f"{CLI} nixfleet events --kind BatchFailed")
    assert len(failed.splitlines()) == 1, f"only the header, no failed batch:\n{failed}"

with subtest("nixfleet verify passes online, and on the data directory once the control plane is stopped"):
    out = cp.succeed(f"{CLI} nixfleet verify")
    assert out.startswith("ok: "), out
    online = int(out.split()[1])
    assert online >= evs[-1]["seq"], out
    cp.succeed("systemctl stop nixfleet-control-plane.service")
    out = cp.succeed("nixfleet verify --data-dir /var/lib/nixfleet-cp")
    assert out.startswith("ok: ") and "The head" in out and "matches" in out, out
    assert int(out.split()[1]) >= online, out
    # The check can fail: a directory without a log is refused with exit 2 (a tampered log
    # exits 1 naming the record; cli/tests/replay.rs proves that on real data directories).
    status, err = cp.execute("nixfleet verify --data-dir /var/lib 2>&1")
    assert status == 2 and "holds no nixfleet event log" in err, (status, err)
