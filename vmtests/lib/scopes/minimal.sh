#!/bin/sh
# Scope set "minimal" (the endpoint role): nothing beyond the core tools. No desktop
# (niri), no dev services (Docker) are ever installed in the root filesystem.
set -eu
mkdir -p "$ROOT/etc/nixfleet-vmtests"
echo minimal > "$ROOT/etc/nixfleet-vmtests/profile"
