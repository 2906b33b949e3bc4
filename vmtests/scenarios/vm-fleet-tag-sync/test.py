start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
UNDECLARED = ["db", "production"]

with subtest("The agent registers with its declared tags"):
    wait_for(lambda: len(list_machines(cp)) == 1, timeout=60, what="the agent to register")
    wait_for(lambda: machine_status(cp, "tagged")["tags"] == ["canary", "eu-west", "web"], timeout=30,
             what="the declared tags")

with subtest("An operator tags another machine with tags the agent does not declare"):
    # The negative checks below need the undeclared tags to exist somewhere in the fleet,
    # or they could not fail.
    api(cp, "POST", "/api/v1/machines/db-07/register", {"tags": UNDECLARED}, expect=201)
    assert machine_status(cp, "db-07")["tags"] == sorted(UNDECLARED)
    # Several polls of the agent (every 2 s) after the operator's change.
    seq = events(cp)[-1]["seq"]
    wait_for(lambda: len(reports(cp, "tagged", after=seq)) >= 3, timeout=30, what="three reports of the agent")

with subtest("Filtering by a declared tag returns the agent; by an undeclared one, only the machine that has it"):
    assert [m["machine_id"] for m in list_machines(cp, ["canary"])] == ["tagged"]
    assert [m["machine_id"] for m in list_machines(cp, ["web", "eu-west"])] == ["tagged"]
    for t in UNDECLARED:
        assert [m["machine_id"] for m in list_machines(cp, [t])] == ["db-07"], t
    assert list_machines(cp, ["web", "db"]) == []
    assert machine_status(cp, "tagged")["tags"] == ["canary", "eu-west", "web"]

with subtest("The event log holds the undeclared tags, but never on the agent's machine"):
    other = [sorted(e["data"]["tags"]) for e in machine_events(cp, "db-07") if "tags" in e["data"]]
    assert sorted(UNDECLARED) in other, other
    evs = machine_events(cp, "tagged")
    tag_sets = [sorted(e["data"]["tags"]) for e in evs if e["kind"] in ("MachineRegistered", "TagsSet")]
    assert ["canary", "eu-west", "web"] in tag_sets, evs
    assert all(t not in s for s in tag_sets for t in UNDECLARED), tag_sets
