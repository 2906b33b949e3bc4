start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
OP = cli_env("operator")

with subtest("A fresh control plane has no API key: admin calls are refused"):
    code = cp.succeed(f"{curl_for(CERT_PREFIX, fail=False)} -o /dev/null -w '%{{http_code}}' {API}/api/v1/machines")
    assert code == "401", code

with subtest("The operator bootstraps the first admin key over mTLS"):
    out = operator.succeed(f"{OP} nixfleet bootstrap --name test-admin --no-save")
    keys = [line.strip() for line in out.splitlines() if line.strip().startswith("nfk-")]
    assert len(keys) == 1, out
    use_admin_key(keys[0])
    created = [e for e in events(cp) if e["kind"] == "ApiKeyCreated"]
    assert len(created) == 1 and created[0]["data"]["name"] == "test-admin", created

with subtest("The key lists machines: none, then the two agents"):
    assert list_machines(cp) == []
    web_01.succeed("systemctl start nixfleet-agent.service")
    web_02.succeed("systemctl start nixfleet-agent.service")
    wait_for(lambda: len(list_machines(cp)) == 2, timeout=60, what="2 machines")
    wait_healthy(cp, ["web-01", "web-02"])
    listing = operator.succeed(f"{cli_env('operator', key=TEST_KEY)} nixfleet machines list")
    assert "web-01" in listing and "web-02" in listing, listing

with subtest("A release of the agents' running systems rolls out to tag web (the seed's dry-run path)"):
    release = create_release(cp, {"web-01": current_system(web_01), "web-02": current_system(web_02)})
    rid = create_rollout(cp, release, tags=["web"], strategy="all_at_once", health_timeout=60)
    wait_rollout_status(cp, rid, "completed", timeout=180)

with subtest("Dry-run agents: a release of G2 is reported as 'would apply' and nothing switches"):
    g1 = current_system(web_01)
    g2 = build_fake_system(web_01, "web-01", 2)
    dry = create_release(cp, {"web-01": g2})
    seq = events(cp)[-1]["seq"]
    dry_rid = create_rollout(cp, dry, hosts=["web-01"], health_timeout=60)
    wait_for(lambda: any(r.get("dry_run") and r["message"] == "dry-run: would apply" for r in reports(cp, "web-01", seq)),
             timeout=30, what="web-01's dry-run report")
    web_01.succeed("journalctl -u nixfleet-agent --no-pager | grep -q 'Dry run - skipping apply'")
    assert_runs(web_01, "web-01", g1, 1)
    assert_switches(web_01, "2", 0)
    web_01.fail("test -e /tmp/stub-switch-called")
    assert all(r["generation"] == g1 for r in reports(cp, "web-01", seq)), reports(cp, "web-01", seq)
    # A dry run never runs the release, so the batch never gets past deploying.
    batch = rollout(cp, dry_rid)["batches"][0]
    assert batch["status"] == "deploying" and batch["machine_health"] == {"web-01": "pending"}, batch
    api(cp, "POST", f"/api/v1/rollouts/{dry_rid}/cancel", expect=200)

with subtest("A second bootstrap fails and mints nothing"):
    out = operator.fail(f"{OP} nixfleet bootstrap --name second --no-save 2>&1")
    assert "nfk-" not in out, out
    code = cp.succeed(f"{curl_for(CERT_PREFIX, fail=False)} -o /dev/null -w '%{{http_code}}' -X POST "
                      f"-H 'Content-Type: application/json' -d '{{}}' {API}/api/v1/keys/bootstrap")
    assert code == "409", code
    assert len([e for e in events(cp) if e["kind"] == "ApiKeyCreated"]) == 1
