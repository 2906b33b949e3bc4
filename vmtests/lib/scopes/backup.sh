#!/bin/sh
# Scope "backup" (nixfleet.backup, backend null): a daily timer and a oneshot
# nixfleet-backup whose post-start writes status.json, as the NixOS scope does.
# With no backend the run itself does nothing (the NixOS test stubs it the same way).
set -eu
mkdir -p "$ROOT/etc/systemd/system/timers.target.wants"
cat > "$ROOT/etc/systemd/system/nixfleet-backup.service" <<'UNIT'
[Unit]
Description=nixfleet backup (no backend configured)
[Service]
Type=oneshot
StateDirectory=nixfleet-backup
ExecStart=/bin/true
ExecStartPost=/bin/sh -c 'printf "{\\n  \\"status\\": \\"success\\",\\n  \\"lastRun\\": \\"%%s\\",\\n  \\"hostname\\": \\"%%s\\"\\n}\\n" "$$(date -u +%%Y-%%m-%%dT%%H:%%M:%%SZ)" "$$(hostname)" > /var/lib/nixfleet-backup/status.json'
UNIT
cat > "$ROOT/etc/systemd/system/nixfleet-backup.timer" <<'UNIT'
[Unit]
Description=nixfleet backup timer
[Timer]
OnCalendar=daily
Persistent=true
RandomizedDelaySec=1h
[Install]
WantedBy=timers.target
UNIT
ln -sfn /etc/systemd/system/nixfleet-backup.timer "$ROOT/etc/systemd/system/timers.target.wants/nixfleet-backup.timer"
