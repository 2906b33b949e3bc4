start_all()
cache.wait_for_unit("nixfleet-cache-server.service")
cache.wait_for_open_port(5000)

with subtest("The cache answers nix-cache-info"):
    info = client.wait_until_succeeds("curl -sf http://cache:5000/nix-cache-info", timeout=30)
    assert "StoreDir: /nix/store" in info, info
    assert "Priority: 50" in info, info  # nixpkgs' harmonia module's mkDefault priority

# A new generation for `client`, built in the cache host's own store only.
gen2 = cache.succeed(
    "nix-build /etc/nixfleet-vmtests/fake-system.nix --argstr host client --argstr version 2 --no-out-link"
).strip()

with subtest("The closure is registered on the cache host and not on the client"):
    cache.succeed(f"nix-store -q --references {gen2}")
    client.fail(f"nix-store -q --references {gen2}")
    client.fail(f"test -e {gen2}")

with subtest("A narinfo is signed with the cache key and a missing path is a 404"):
    assert_served_by_harmonia(client, cache, gen2)
    client.fail("curl -sf http://cache:5000/" + "0" * 32 + ".narinfo")

with subtest("harmonia signs on the fly a path the cache host's database holds unsigned"):
    added = cache.succeed("echo unsigned > /tmp/unsigned.txt && nix-store --add /tmp/unsigned.txt").strip()
    local = cache.succeed(f"nix --extra-experimental-features nix-command path-info --sigs {added}")
    assert "nixfleet-test-cache-1:" not in local, local
    assert_served_by_harmonia(client, cache, added)

with subtest("A client that does not trust the key refuses the closure"):
    client.succeed("nix-store --generate-binary-cache-key other-1 /tmp/other.sec /tmp/other.pub")
    out = client.fail(
        f"nix copy --from http://cache:5000 {gen2} --option trusted-public-keys \"$(cat /tmp/other.pub)\" 2>&1"
    )
    assert "signature" in out, out
    client.fail(f"nix-store -q --references {gen2}")

with subtest("The client fetches it over HTTP and registers it in its own database"):
    nars_before = cache_requests(cache)
    client.succeed(f"nix-store -r {gen2}")
    assert cache_requests(cache) > nars_before, "harmonia served no NAR"
    client.succeed(f"nix-store -q --references {gen2}")

with subtest("switch-to-configuration switches the running demo service"):
    gen1 = current_system(client)
    assert gen1 != gen2
    client.wait_until_succeeds("curl -sf http://localhost:9000/ | grep -q 'version 1'", timeout=30)
    client.succeed(f"nix-env -p /nix/var/nix/profiles/system --set {gen2}",
                   "/nix/var/nix/profiles/system/bin/switch-to-configuration switch")
    assert current_system(client) == gen2
    client.wait_until_succeeds("curl -sf http://localhost:9000/ | grep -q 'client version 2'", timeout=15)
    assert client.succeed("cat /var/lib/fake-system/active").strip() == "active=2"
    assert client.succeed("cat /tmp/stub-switch-called").strip() == "switch"

with subtest("A rollback of the profile brings back generation 1"):
    client.succeed("nix-env -p /nix/var/nix/profiles/system --rollback",
                   "/nix/var/nix/profiles/system/bin/switch-to-configuration switch")
    assert current_system(client) == gen1
    client.wait_until_succeeds("curl -sf http://localhost:9000/ | grep -q 'client version 1'", timeout=15)

with subtest("A failing switch leaves the current system untouched"):
    client.succeed("touch /var/lib/fail-next-switch")
    client.fail(f"{gen2}/bin/switch-to-configuration switch")
    assert current_system(client) == gen1
    client.succeed("rm /var/lib/fail-next-switch")

with subtest("Generations built to fail do what their variant says"):
    # The failure modes the fleet scenarios use (fake-system.nix): each checked here once, by hand.
    bad = {v: build_fake_system(client, "client", 9, v) for v in ("switch-fails", "exit4", "hang", "unhealthy")}
    status, _ = client.execute(f"{bad['switch-fails']}/bin/switch-to-configuration switch")
    assert status == 1 and current_system(client) == gen1
    assert_switches(client, "9-switch-fails", 1)
    status, _ = client.execute(f"{bad['exit4']}/bin/switch-to-configuration switch")
    assert status == 4 and current_system(client) == bad["exit4"], status
    client.wait_until_succeeds("curl -sf http://localhost:9000/ | grep -q 'client version 9'", timeout=15)
    client.succeed(f"{bad['unhealthy']}/bin/switch-to-configuration switch")
    client.wait_until_succeeds("test $(curl -s -o /dev/null -w '%{http_code}' http://localhost:9000/) = 503",
                               timeout=15)
    status, _ = client.execute(f"timeout 3 {bad['hang']}/bin/switch-to-configuration switch")
    assert status == 124 and current_system(client) == bad["hang"], status
    client.succeed(f"{gen1}/bin/switch-to-configuration switch")
    assert current_system(client) == gen1
