#!/bin/sh
# Turn a fresh debootstrap tree into the cached vmtests root filesystem.
# Usage: rootfs-customize.sh ROOT
# Only what every node needs and what an overlay layer cannot express (removals,
# users) lives here; per-node and per-scope files come from the node layer the
# driver writes at each run, so changing them never needs a rebuild.
set -eu
root=$1
# Every container generates its own SSH host keys at boot (NixOS's sshd does too).
rm -f "$root"/etc/ssh/ssh_host_*
# systemd gives each container a machine id of its own when this is empty.
: > "$root"/etc/machine-id
# Services the scopes enable per node, and periodic jobs that only add noise.
for u in prometheus-node-exporter.service e2scrub_reap.service; do
  rm -f "$root"/etc/systemd/system/multi-user.target.wants/$u
done
rm -f "$root"/etc/systemd/system/timers.target.wants/*.timer
rm -f "$root"/etc/systemd/system/getty.target.wants/getty@tty1.service
for u in systemd-pstore.service apt-daily.service apt-daily-upgrade.service e2scrub_all.service fstrim.service \
         systemd-networkd-wait-online.service nix-daemon.socket nix-daemon.service; do
  ln -sfn /dev/null "$root"/etc/systemd/system/$u
done
rm -f "$root"/etc/systemd/system/sysinit.target.wants/systemd-pstore.service
# Root in a test host: no password; logins are by key only through sshd.
chroot "$root" passwd -d root >/dev/null
# The framework's test user, in wheel, with zsh (NixOS test nodes have one).
chroot "$root" groupadd -f wheel
chroot "$root" useradd -m -s /usr/bin/zsh -G wheel testuser
# nixbld users exist (nix-bin's postinst); the store is per container.
mkdir -p "$root"/nix/var/nix/profiles "$root"/nix/var/nix/gcroots "$root"/nix/store
chmod 1775 "$root"/nix/store
echo "nixfleet-vmtests rootfs $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$root"/etc/nixfleet-vmtests-rootfs
