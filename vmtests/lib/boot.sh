#!/bin/sh
# nixfleet-vmtests-boot.service: give the machine a current system generation at boot,
# as a NixOS boot activates the default generation of its system profile.
# First boot: build generation 1 of the fake system in this machine's own store.
set -eu
host=$(hostname)
profile=/nix/var/nix/profiles/system
if [ -e "$profile" ]; then
  sys=$(readlink -f "$profile")
else
  sys=$(nix-build /etc/nixfleet-vmtests/fake-system.nix --argstr host "$host" --argstr version 1 --no-out-link)
  nix-env -p "$profile" --set "$sys"
fi
"$sys"/bin/switch-to-configuration switch
# The boot activation is not a deployment: leave no deployment marker behind.
rm -f /tmp/stub-switch-called
