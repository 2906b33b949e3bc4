#!/bin/sh
# Scope "core" (modules/core on NixOS): firewall on (nftables input chain, only the
# node's open ports), sshd with keys only, zsh and git for users (in the root filesystem).
# Runs on the host while the driver writes the node layer: ROOT is that layer.
set -eu
. "$(dirname "$0")/lib-nft.sh"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants" "$ROOT/etc/ssh/sshd_config.d"
write_nftables
ln -sfn /lib/systemd/system/nftables.service "$ROOT/etc/systemd/system/multi-user.target.wants/nftables.service"
cat > "$ROOT/etc/ssh/sshd_config.d/nixfleet-core.conf" <<CONF
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
CONF
