start_all()
target.wait_for_unit("ssh.service")
operator.wait_until_succeeds("ssh -o ConnectTimeout=3 root@target true", timeout=30)

with subtest("G2 is deployed over ssh"):
    make_fake_flake(operator, {"target": {"version": "g2"}})
    out = operator.succeed(f"cd {FAKE_FLAKE} && nixfleet deploy --flake {FAKE_FLAKE} --hosts target --ssh "
                           "--target root@target 2>&1")
    assert "1 succeeded" in out, out
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g2"
    g2 = current_system(target)

with subtest("G1 is copied to the target; copying does not switch"):
    g1 = build_fake_system(operator, "target", "g1")
    operator.succeed(f"nix-copy-closure --to root@target {g1}")
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g2"

with subtest("rollback --generation G1 switches the target back"):
    operator.succeed(f"nixfleet rollback --host target --ssh --target root@target --generation {g1} 2>&1")
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g1"
    assert current_system(target) == g1

with subtest("Both generations stay registered in the target's Nix database"):
    target.succeed(f"nix-store -q --references {g1}", f"nix-store -q --references {g2}")
