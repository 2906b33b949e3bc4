start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
cache.wait_for_unit("nixfleet-cache-server.service")
cache.wait_for_open_port(5000)
seed_admin_key(cp)
wait_for(lambda: machine_status(cp, "web-01"), timeout=60, what="web-01 to register")
before = current_system(web_01)

with subtest("release create builds on the builder and pushes into the cache over ssh"):
    make_fake_flake(builder, {"web-01": {"version": "2", "tags": ["web"]}})
    out = builder.succeed(f"cd {FAKE_FLAKE} && {cli_env('builder', key=TEST_KEY)} nixfleet release create "
                          f"--flake {FAKE_FLAKE} --hosts web-01 --push-to ssh://root@cache "
                          "--cache-url http://cache:5000 2>&1")
    releases = api_get(cp, "/api/v1/releases")
    assert len(releases) == 1, releases
    (entry,) = releases[0]["entries"]
    path = entry["store_path"]
    assert entry["hostname"] == "web-01" and "nixos-system-web-01-2" in path, (entry, out)
    assert entry["tags"] == ["web"], entry

with subtest("The path is registered on the cache host, not on the control plane or the agent"):
    cache.succeed(f"nix-store -q --references {path}")
    cp.fail(f"nix-store -q --references {path}")
    web_01.fail(f"nix-store -q --references {path}")
    assert "cache:5000" in web_01.succeed("grep '^substituters' /etc/nix/nix.conf")

with subtest("The agent fetches the closure over HTTP from the cache and switches to it"):
    nars_before = cache_requests(cache)
    rid = create_rollout(cp, releases[0]["id"], hosts=["web-01"], health_timeout=60)
    wait_rollout_status(cp, rid, "completed", timeout=120)
    assert current_system(web_01) == path != before
    web_01.succeed(f"nix-store -q --references {path}")
    assert_runs(web_01, "web-01", path, 2)
    assert_deployed(cp, "web-01", path)
    # harmonia counted the NAR downloads (its /metrics), and what it serves for the path is
    # its narinfo, signed, with the NAR at nar/<nar hash>.nar?hash=<store hash>.
    assert cache_requests(cache) > nars_before, "harmonia served no NAR during the rollout"
    assert_served_by_harmonia(web_01, cache, path)
