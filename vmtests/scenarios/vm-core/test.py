machine.start()
machine.wait_for_unit("multi-user.target")

with subtest("sshd is running and answers on port 22"):
    machine.wait_for_unit("ssh.service")
    machine.wait_for_open_port(22)
    machine.succeed("ssh -o ConnectTimeout=5 root@localhost true")

with subtest("the firewall is active with an input chain"):
    machine.wait_for_unit("nftables.service")
    ruleset = machine.succeed("nft list ruleset")
    assert "chain input" in ruleset, ruleset
    # Negative control: a port nobody opened is dropped for other hosts, not just unused.
    assert "policy drop" in ruleset, ruleset

if ON_NIXOS:
    with subtest("NetworkManager runs and leaves the test network's static addresses alone"):
        # The core scope turns NetworkManager on; the test nodes mark ethernet devices unmanaged
        # (networking.networkmanager.unmanaged, rendered as [keyfile] unmanaged-devices).
        machine.wait_for_unit("NetworkManager.service")
        machine.succeed("grep -q '^unmanaged-devices=type:ethernet' /etc/NetworkManager/NetworkManager.conf")
        machine.succeed("nmcli -t -f DEVICE,STATE device | grep -q '^eth1:unmanaged'")

with subtest("the test user exists and is in wheel"):
    groups = machine.succeed("id -nG testuser").split()
    assert "wheel" in groups, groups
    machine.fail("id -nG nobody | grep -qw wheel")

with subtest("core packages are available to the user"):
    machine.succeed("su - testuser -c 'command -v zsh && command -v git'")
    machine.succeed("su - testuser -c 'git --version'")

with subtest("the machine has a current system generation"):
    machine.wait_for_unit("nixfleet-vmtests-boot.service")
    machine.succeed("test -x /run/current-system/bin/switch-to-configuration")
    machine.succeed("nix-store -q --references $(readlink -f /run/current-system)")
