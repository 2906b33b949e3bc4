# Three control planes on one PostgreSQL log (issue 17); the executor's lease holder dies mid-rollout.
CPS = {"cp-1": cp_1, "cp-2": cp_2, "cp-3": cp_3}
agents = {"web-01": web_01, "web-02": web_02}


def sql(query):
    """One value (or rows joined by newlines, columns by |) from the shared log's database."""
    return db.succeed(f"psql -h 127.0.0.1 -U nixfleet -d nixfleet -tA -c {shlex.quote(query)}").strip()


def lease():
    holder, epoch = sql("SELECT holder || '|' || epoch FROM nixfleet_lease").split("|")
    return holder, int(epoch)


def is_executor(e):
    return str(e["actor"]).lower() == "executor"


with subtest("The database comes up first, then the three control planes on it"):
    db.start()
    db.wait_for_unit("postgresql.service")
    db.wait_for_open_port(5432)
    start_all()
    for name, cp in CPS.items():
        cp.succeed("systemctl start nixfleet-control-plane.service")
        cp.wait_for_unit("nixfleet-control-plane.service")
        cp.wait_for_open_port(8080)
    wait_for(lambda: lease()[0] in CPS, timeout=30, what="a control plane to hold the executor's lease")
    leader, epoch = lease()
    assert epoch >= 1, (leader, epoch)
    CPS[leader].succeed("journalctl -u nixfleet-control-plane.service | grep -q 'now runs the executor'")

with subtest("Every control plane serves the one log: a key made on one works on all, each sees both machines"):
    seed_admin_key(cp_1)
    for name, cp in CPS.items():
        wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what=f"2 machines on {name}")
    wait_healthy(cp_2, ["web-01", "web-02"])
    # The machines' records were appended by whichever control plane their agent reached.
    assert sql("SELECT count(DISTINCT cp) FROM nixfleet_log") != "0"

g1 = {h: current_system(m) for h, m in agents.items()}
ROLLOUT = dict(tags=["web"], strategy="staged", batch_sizes=["1", "100%"], health_timeout=90, seed=4242)
followers = [n for n in CPS if n != leader]
front = CPS[followers[0]]  # writes go through a control plane that does not run the executor

with subtest("A staged rollout is mid-flight: the canary switching to G2 (15 s), the next batch pending"):
    plan = plan_rollout(front, create_release(front, g1), **ROLLOUT)
    (canary,), (rest,) = [b["machine_ids"] for b in plan["batches"]]
    g2 = {canary: build_fake_system(agents[canary], canary, 2, "slow", delay=15),
          rest: build_fake_system(agents[rest], rest, 2)}
    label = {canary: "2-slow", rest: "2"}
    rid = create_rollout(front, create_release(front, g2), **ROLLOUT)
    agents[canary].wait_until_succeeds(f"grep -q '^2-slow switch start$' {SWITCH_LOG}", timeout=30)
    before = rollout(front, rid)
    assert [b["status"] for b in before["batches"]] == ["deploying", "pending"], before["batches"]
    assert kinds(events(front, stream=f"rollout:{rid}")) == ["RolloutCreated", "BatchStarted"]
    assert lease() == (leader, epoch), "the lease moved before the crash"

with subtest("The lease holder's host crashes; another control plane takes the lease with a new epoch"):
    CPS[leader].crash()
    head_at_crash = int(sql("SELECT seq FROM nixfleet_head"))
    wait_for(lambda: lease()[0] not in ("", leader), timeout=30, what="another control plane to take the lease")
    new_leader, new_epoch = lease()
    assert new_leader in followers and new_epoch > epoch, (leader, epoch, new_leader, new_epoch)
    CPS[new_leader].succeed("journalctl -u nixfleet-control-plane.service | grep -q 'now runs the executor'")
    # The canary was still switching: nothing could have decided its batch yet.
    agents[canary].fail(f"grep -q '^2-slow switch done$' {SWITCH_LOG}")

survivor = CPS[new_leader]
other = CPS[[n for n in followers if n != new_leader][0]]

with subtest("The new holder finishes the rollout: every machine on G2, each batch started once"):
    wait_rollout_status(survivor, rid, "completed", timeout=150)
    done = rollout(other, rid)
    assert done["status"] == "completed" and [b["status"] for b in done["batches"]] == ["succeeded", "succeeded"], done
    story = events(survivor, stream=f"rollout:{rid}")
    assert kinds(story) == ["RolloutCreated", "BatchStarted", "BatchSucceeded", "BatchStarted", "BatchSucceeded",
                            "RolloutCompleted"], kinds(story)
    started = [e["data"]["batch_index"] for e in story if e["kind"] == "BatchStarted"]
    assert started == [0, 1], f"a batch was started twice or not at all: {started}"
    deployed = {h: assert_deployed(survivor, h, g2[h]) for h in agents}
    for h in agents:
        assert_runs(agents[h], h, g2[h], 2)
        assert_switches(agents[h], label[h], 1)
    # The canary's deploy report reached a surviving control plane after the crash.
    canary_deploy = deployed[canary]
    assert canary_deploy["seq"] > head_at_crash, canary_deploy

with subtest("The raw stream: both survivors serve the same gap-free log; executor decisions only by their lease holder"):
    # The agents keep reporting, so the log grows: the other survivor must serve the same records up to here.
    evs = events(survivor)
    wait_for(lambda: events(other)[:len(evs)] == evs, timeout=30, what="both survivors to serve the same log")
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "the log has gaps"
    origin = {}
    for row in sql("SELECT seq || '|' || cp || '|' || epoch FROM nixfleet_log ORDER BY seq").splitlines():
        seq, cp, ep = row.split("|")
        origin[int(seq)] = (cp, int(ep))
    assert [s for s in sorted(origin) if s <= evs[-1]["seq"]] == [e["seq"] for e in evs], \
        "the database and the API disagree on the records"
    decisions = [e for e in evs if is_executor(e)]
    assert any(e["seq"] > head_at_crash for e in decisions), "no executor decision after the crash"
    for e in decisions:
        want = (new_leader, new_epoch) if e["seq"] > head_at_crash else (leader, epoch)
        assert origin[e["seq"]] == want, f"record {e['seq']} ({e['kind']}) by {origin[e['seq']]}, expected {want}"
    # The canary's agent reached a survivor (it failed over when the dead one was its first URL).
    assert origin[canary_deploy["seq"]][0] in followers, origin[canary_deploy["seq"]]
    writers = {cp for cp, _ in origin.values()}
    assert new_leader in writers and leader in writers, writers
