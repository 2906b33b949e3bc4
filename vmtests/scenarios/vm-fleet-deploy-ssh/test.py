start_all()
target.wait_for_unit("ssh.service")
operator.wait_for_unit("multi-user.target")
operator.wait_until_succeeds("ssh -o ConnectTimeout=3 root@target true", timeout=30)
target.fail("test -e /tmp/stub-switch-called")

with subtest("deploy --ssh builds, copies and switches the target"):
    make_fake_flake(operator, {"target": {"version": "2"}})
    out = operator.succeed(f"cd {FAKE_FLAKE} && nixfleet deploy --flake {FAKE_FLAKE} --hosts target --ssh "
                           "--target root@target 2>&1")
    assert "1 succeeded" in out, out
    path = operator.succeed(f"nix build --no-link --json {FAKE_FLAKE}#nixosConfigurations.target.config.system.build.toplevel"
                            " | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"outputs\"][\"out\"])'").strip()

with subtest("The closure is registered in the target's own Nix database"):
    target.succeed(f"nix-store -q --references {path}")

with subtest("The target ran switch-to-configuration switch of the new generation"):
    assert target.succeed("cat /tmp/stub-switch-called").strip() == "switch"
    assert current_system(target) == path
    assert target.succeed("readlink -f /nix/var/nix/profiles/system").strip() == path
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=2"
