#!/bin/sh
# Scope "secrets" (nixfleet.secrets): make sure the host key used as the identity
# exists before sshd starts, with mode 600.
set -eu
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
cat > "$ROOT/etc/systemd/system/nixfleet-host-key-check.service" <<'UNIT'
[Unit]
Description=nixfleet: generate the SSH host key if it is missing
Before=ssh.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'k=/etc/ssh/ssh_host_ed25519_key; [ -f "$$k" ] || ssh-keygen -q -t ed25519 -N "" -f "$$k"; chmod 600 "$$k"'
[Install]
WantedBy=multi-user.target
UNIT
ln -sfn /etc/systemd/system/nixfleet-host-key-check.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/nixfleet-host-key-check.service"
