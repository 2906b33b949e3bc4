#!/bin/sh
# Build the Debian bookworm root filesystem the vmtests containers boot from.
# Usage: rootfs.sh DEST   (DEST must not exist; the caller renames it into place atomically)
# Why a script of its own: it runs once per cache, and is the only step that needs the network.
set -eu
dest=$1
mirror=${NIXFLEET_VMTESTS_MIRROR:-http://deb.debian.org/debian}
pkgs=systemd-sysv,dbus,openssh-server,nix-bin,curl,python3-minimal,python3,iproute2,nftables,prometheus-node-exporter,zsh,git,sudo,procps,ca-certificates,openssl,libpam-systemd,libdbi-perl,netbase
debootstrap --variant=minbase --include="$pkgs" bookworm "$dest" "$mirror"
# Trim what a test host never needs (docs, man pages, apt lists) so the overlay stays small.
rm -rf "$dest"/usr/share/doc/* "$dest"/usr/share/man/* "$dest"/var/lib/apt/lists/* "$dest"/var/cache/apt/archives/*.deb
