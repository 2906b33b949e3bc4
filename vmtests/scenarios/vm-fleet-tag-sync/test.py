start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)

with subtest("The agent registers with its declared tags"):
    wait_for(lambda: len(list_machines(cp)) == 1, timeout=60, what="the agent to register")
    wait_for(lambda: machine_status(cp, "tagged")["tags"] == ["canary", "eu-west", "web"], timeout=30,
             what="the declared tags")

with subtest("Filtering by a declared tag returns the agent, by another tag nothing"):
    assert [m["machine_id"] for m in list_machines(cp, ["canary"])] == ["tagged"]
    assert [m["machine_id"] for m in list_machines(cp, ["web", "eu-west"])] == ["tagged"]
    assert list_machines(cp, ["production"]) == []
    assert list_machines(cp, ["db"]) == []

with subtest("The event log holds the declared tags and never an undeclared one"):
    evs = events(cp, stream="machine:tagged")
    tag_sets = [sorted(e["data"]["tags"]) for e in evs if e["kind"] in ("MachineRegistered", "TagsSet")]
    assert ["canary", "eu-west", "web"] in tag_sets, evs
    assert all("db" not in t and "production" not in t for t in tag_sets), tag_sets
