start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
seed_admin_key(cp)
machine.wait_for_unit("nixfleet-agent.service")
before = current_system(machine)

with subtest("The agent reports its current generation"):
    wait_for(lambda: (machine_status(cp, "machine") or {}).get("current_generation") == before, timeout=120,
             what="the agent's first report")

fake = "/nix/store/" + "a" * 32 + "-nixos-system-fake"
machine.fail(f"test -e {fake}")

with subtest("A path found nowhere, with no cache, is refused with a clear line"):
    release = create_release(cp, {"machine": fake})
    create_rollout(cp, release, tags=["test"], health_timeout=60)
    machine.wait_until_succeeds(
        "journalctl -u nixfleet-agent --no-pager | grep -q 'not found locally and no cache URL configured'",
        timeout=60)

with subtest("The running system is untouched"):
    assert current_system(machine) == before
    # No switch-to-configuration ran since boot (it leaves this marker; the boot activation does not).
    machine.fail("test -e /tmp/stub-switch-called")
    assert machine.succeed("cat /var/lib/fake-system/active").strip() == "active=1"
