#!/bin/bash
# Times deploy --ssh / rollback --ssh against an sshd with its own /nix in a netns (same setup as cli/tests/common/sshd.rs).
set -e
D=/tmp/nfcli-bench; rm -rf $D; mkdir -p $D/target/nix/store $D/target/nix/var/nix/profiles $D/flake; cd $D
ssh-keygen -q -t ed25519 -N '' -f hostkey; ssh-keygen -q -t ed25519 -N '' -f id; cp id.pub authorized_keys
printf "ListenAddress 127.0.0.1\nPort 22\nHostKey $D/hostkey\nAuthorizedKeysFile $D/authorized_keys\nPermitRootLogin prohibit-password\nUsePAM no\nPasswordAuthentication no\nStrictModes no\nPidFile $D/sshd.pid\n" > sshd_config
echo "target,127.0.0.1 $(cut -d' ' -f1-2 hostkey.pub)" > known_hosts
ip netns add nfcli-bench; ip -n nfcli-bench link set lo up
trap 'kill $(cat $D/sshd.pid); sleep 0.2; ip netns del nfcli-bench; rm -rf $D' EXIT
ip netns exec nfcli-bench unshare --mount --propagation private sh -c "mount --bind $D/target/nix /nix && exec /usr/sbin/sshd -D -f $D/sshd_config -E $D/sshd.log" &
sleep 0.5
mk() { cat > flake/flake.nix <<EOF
{ outputs = { self }: let
    dep = builtins.derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo dep-$D-$RANDOM > \$out" ]; };
    t = builtins.derivation { name = "nixos-system-target-$1"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
      args = [ "-c" "mkdir -p \$out/bin; ln -s \${dep} \$out/dep; printf '#!/bin/sh\necho active=$1 > $D/marker\n' > \$out/bin/switch-to-configuration; chmod +x \$out/bin/switch-to-configuration" ]; };
  in { nixosConfigurations.target.config.system.build.toplevel = t; }; }
EOF
}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false' NIX_SSHOPTS="-i $D/id -o UserKnownHostsFile=$D/known_hosts -o StrictHostKeyChecking=yes -o HostName=127.0.0.1"
N=${NIXFLEET:-/work/main/target/debug/nixfleet}
mk g1; /usr/bin/time -f "deploy g1 (eval+build+copy+switch): %es" ip netns exec nfcli-bench $N deploy --ssh --flake $D/flake 2>&1 | grep -E "^deploy"
/usr/bin/time -f "deploy g1 again (nothing to build or copy): %es" ip netns exec nfcli-bench $N deploy --ssh --flake $D/flake 2>&1 | grep -E "^deploy"
mk g2; /usr/bin/time -f "deploy g2: %es" ip netns exec nfcli-bench $N deploy --ssh --flake $D/flake 2>&1 | grep -E "^deploy"
/usr/bin/time -f "rollback to previous generation: %es" ip netns exec nfcli-bench $N rollback --ssh --host target 2>&1 | grep -E "^rollback"
/usr/bin/time -f "one ssh round trip (ssh true): %es" ip netns exec nfcli-bench ssh $NIX_SSHOPTS -o BatchMode=yes root@target true 2>&1
echo "marker: $(cat marker)"
