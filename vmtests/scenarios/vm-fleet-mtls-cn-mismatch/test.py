start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
wait_for(lambda: machine_status(cp, "web-01"), timeout=60, what="web-01 to register")

UNAUTH = curl_for("unauth", fail=False) + " -o /dev/null -w '%{http_code}'"


def report(machine_id):
    return shlex.quote(json.dumps({"machine_id": machine_id, "current_generation": "", "success": True,
                                   "message": "impersonation attempt"}))


with subtest("CN unauth cannot report for web-01"):
    code = unauth.succeed(f"{UNAUTH} -X POST -H 'Content-Type: application/json' -d {report('web-01')} "
                          "https://cp:8080/api/v1/machines/web-01/report")
    assert code == "403", code

with subtest("CN unauth cannot read web-01's desired generation"):
    code = unauth.succeed(f"{UNAUTH} https://cp:8080/api/v1/machines/web-01/desired-generation")
    assert code == "403", code

with subtest("CN unauth may report for itself (positive control)"):
    code = unauth.succeed(f"{UNAUTH} -X POST -H 'Content-Type: application/json' -d {report('unauth')} "
                          "https://cp:8080/api/v1/machines/unauth/report")
    assert code != "403" and code.startswith("2"), code

with subtest("Nothing from the impersonation attempt reached web-01's stream"):
    evs = events(cp, stream="machine:web-01")
    assert all("impersonation" not in json.dumps(e["data"]) for e in evs), evs
    assert any("impersonation" in json.dumps(e["data"]) for e in events(cp, stream="machine:unauth"))
