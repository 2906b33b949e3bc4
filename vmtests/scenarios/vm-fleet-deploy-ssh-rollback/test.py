start_all()
target.wait_for_unit("ssh.service")
operator.wait_until_succeeds("ssh -o ConnectTimeout=3 root@target true", timeout=30)

DEPLOYS = "/nix/var/nixfleet/deploy"


def deploy(version, extra=""):
    make_fake_flake(operator, {"target": {"version": version}})
    return operator.execute(f"cd {FAKE_FLAKE} && nixfleet deploy --flake {FAKE_FLAKE} --hosts target --ssh "
                            f"--target root@target {extra} 2>&1")


def last_state():
    return target.succeed(f"head -n 1 {DEPLOYS}/$(cat {DEPLOYS}/last)/state").strip()


def profile():
    return target.succeed("readlink -f /nix/var/nix/profiles/system").strip()


with subtest("A deploy runs in a transient systemd unit and is confirmed after its health checks"):
    status, out = deploy("g1", "--check-http http://127.0.0.1:9000/health --check-unit fake-app.service")
    assert status == 0, out
    assert "detached (systemd-run;" in out, out
    assert "2 health check(s) passed" in out, out
    g1 = current_system(target)
    assert profile() == g1
    wait_for(lambda: last_state() == "confirmed", timeout=10, what="the confirmed state")
    target.succeed("journalctl --no-pager -o cat | grep -q 'nixfleet deploy of'")

with subtest("A failing health check rolls back the running system and the boot default"):
    status, out = deploy("g2", "--check-cmd false --confirm-timeout 5")
    assert status == 1, out
    assert f"root@target rolled back to {g1}" in out, out
    assert current_system(target) == g1
    assert profile() == g1
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g1"
    assert last_state().startswith("rolled-back: "), last_state()

with subtest("A CLI killed before it confirms leaves the target to roll itself back"):
    make_fake_flake(operator, {"target": {"version": "g3"}})
    # The check never finishes; the CLI is killed once the target waits for its confirmation.
    pid = operator.succeed(f"(cd {FAKE_FLAKE} && exec nixfleet deploy --flake {FAKE_FLAKE} --hosts target --ssh "
                           "--target root@target --check-cmd 'sleep 60' --check-timeout 60 --confirm-timeout 6) "
                           "</dev/null >/tmp/killed-deploy.log 2>&1 & echo $!").strip()
    wait_for(lambda: last_state() == "awaiting-confirmation", timeout=60, what="the switch to g3")
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g3"
    operator.succeed(f"kill -KILL {pid}")
    wait_for(lambda: last_state().startswith("rolled-back: no confirmation within 6s"), timeout=40,
             what="the target's own rollback")
    assert current_system(target) == g1
    assert profile() == g1
    assert target.succeed("cat /var/lib/fake-system/active").strip() == "active=g1"
