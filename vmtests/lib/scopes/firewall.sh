#!/bin/sh
# Scope "firewall" (nixfleet.firewall): SSH limited to 5 new connections a minute,
# rate-limited SSH and every other refused connection logged, then dropped.
set -eu
. "$(dirname "$0")/lib-nft.sh"
FW_SSH_LIMIT=1 FW_LOG_REFUSED=1 write_nftables
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sfn /lib/systemd/system/nftables.service "$ROOT/etc/systemd/system/multi-user.target.wants/nftables.service"
