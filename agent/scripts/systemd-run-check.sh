#!/usr/bin/env bash
# Checks --switch-mode systemd-run under a real systemd: boots a systemd-nspawn container (systemd as
# PID 1, private network, the host's /nix bound in), runs the agent inside against a Python stand-in
# for the control plane's two agent routes, and checks that
#   1. a deploy switches through a transient unit nixfleet-switch-<n> and reports "deployed";
#   2. a generation whose health check fails is rolled back, through a transient unit too;
#   3. a generation whose switch-to-configuration exits 4 (units failed, as NixOS does) is reported
#      "failed_units" with exit status 4 (read from `systemd-run --wait`) and the count of failed
#      units (read from the unit's journal);
#   4. a generation whose switch hangs past --switch-timeout (here 30 s) is rolled back, and its unit
#      is stopped first: no hung switch process is left (on NixOS it would hold the switch lock).
# Usage: agent/scripts/systemd-run-check.sh ROOTFS [AGENT]
#   ROOTFS: a Debian root with systemd, dbus, nix-bin, python3 (e.g. the vmtests rootfs cache,
#           used read-only through --volatile=overlay). AGENT defaults to target/debug/nixfleet-agent.
set -euo pipefail
ROOTFS=$1
AGENT=$(realpath "${2:-target/debug/nixfleet-agent}")
NAME=nfagent-sysrun-$$
W=$(mktemp -d /tmp/nixfleet-agent-sysrun.XXXXXX)
NSPAWN_PID=
cleanup() {
  [ -n "$NSPAWN_PID" ] && kill -TERM "$NSPAWN_PID" 2>/dev/null && wait "$NSPAWN_PID" 2>/dev/null || true
  for h in systemd unified; do find /sys/fs/cgroup/$h/$NAME -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
export NIX_CONFIG=$'substituters =\nnarinfo-cache-negative-ttl = 0'

cat > "$W/system.nix" <<'NIX'
{ name, link, marker, healthy, exitStatus ? "0" }:
builtins.derivation {
  inherit name link marker exitStatus; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  healthyFlag = if healthy then "1" else "";
  args = [ "-c" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nln -sfn %s %s\necho "switch %s from $(grep -o "nixfleet-switch-[0-9]*" /proc/self/cgroup | head -1)" >> %s\n' "$out" "$link" "$out" "$marker" > $out/bin/switch-to-configuration
    if [ "$exitStatus" = 4 ]; then
      printf 'echo "warning: the following units failed: nginx.service, app.service" >&2\nexit 4\n' >> $out/bin/switch-to-configuration
    fi
    if [ "$exitStatus" = hang ]; then
      printf 'exec sleep 1000\n' >> $out/bin/switch-to-configuration
    fi
    chmod +x $out/bin/switch-to-configuration; echo test > $out/nixos-version; ln -s /bin/sh $out/init
    if [ -n "$healthyFlag" ]; then touch $out/healthy; fi
  '' ];
}
NIX
build() { nix-build "$W/system.nix" --no-out-link --argstr name "$1" --argstr link "$W/current" --argstr marker "$W/switches.log" --arg healthy "$2" --argstr exitStatus "${3:-0}"; }
V1=$(build sysrun-v1 true); V2=$(build sysrun-v2 true); BAD=$(build sysrun-bad false); UNITS=$(build sysrun-units true 4)
HANG=$(build sysrun-hang true hang)
ln -sfn "$V1" "$W/current"
echo "{\"command\":[{\"name\":\"app\",\"command\":\"test -e $W/current/healthy\"}]}" > "$W/health.json"
echo "{\"hash\":\"$V2\",\"cache_url\":null,\"poll_hint\":1}" > "$W/desired.json"
# The stand-in runs inside the container, which sees $W but not this checkout.
cp "$(dirname "$0")/stub-cp.py" "$W/cp.py"

for h in systemd unified; do mkdir -p /sys/fs/cgroup/$h/$NAME; done
sh -c 'for h in systemd unified; do echo $$ > /sys/fs/cgroup/$h/'"$NAME"'/cgroup.procs; done; exec "$@"' nspawn \
  systemd-nspawn --quiet --boot --directory "$ROOTFS" --volatile=overlay --register=no --keep-unit \
  --machine="$NAME" --hostname="$NAME" --private-network --resolv-conf=off --timezone=off --link-journal=no \
  --console=read-only --bind=/nix --bind="$W" --bind-ro="$AGENT":/usr/local/bin/nixfleet-agent \
  </dev/null >"$W/console.log" 2>&1 &
NSPAWN_PID=$!
LEADER=
for _ in $(seq 300); do
  for c in $(cat /proc/$NSPAWN_PID/task/$NSPAWN_PID/children 2>/dev/null); do
    [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ] && LEADER=$c
  done
  [ -n "$LEADER" ] && break; sleep 0.1
done
[ -n "$LEADER" ] || { echo "container systemd did not start"; tail -20 "$W/console.log"; exit 1; }
inside() { nsenter -t "$LEADER" -a -- "$@"; }
STATE=
for _ in $(seq 120); do
  STATE=$(timeout 10 nsenter -t "$LEADER" -a -- systemctl is-system-running --wait 2>/dev/null || true)
  case "$STATE" in running|degraded) break ;; esac; sleep 0.5
done
echo "container state: $STATE"
inside sh -c "python3 $W/cp.py 8080 $W >/dev/null 2>&1 & echo \$! > $W/cp.pid"
sleep 0.5
inside sh -c "nixfleet-agent --control-plane-url http://127.0.0.1:8080 --allow-insecure --machine-id web-01 \
  --poll-interval 60 --retry-interval 1 --state-dir $W/state --profile $W/profile --current-system $W/current \
  --health-config $W/health.json --switch-mode auto --switch-timeout 30 --log-format human >$W/agent.log 2>&1 & echo \$! > $W/agent.pid"

wait_for() { for _ in $(seq 300); do grep -q "$1" "$W/reports.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "no report with $1"; cat "$W/agent.log"; exit 1; }
wait_for '"message":"deployed"'
echo "1. deployed: $(readlink "$W/current")"
grep -q "switch $V2 from nixfleet-switch-" "$W/switches.log" || { echo "switch did not run in a transient unit"; cat "$W/switches.log"; exit 1; }
echo "   switch ran in: $(grep -o 'nixfleet-switch-[0-9]*' "$W/switches.log" | head -1)"

echo "{\"hash\":\"$BAD\",\"cache_url\":null,\"poll_hint\":1}" > "$W/desired.json"
wait_for '"rolled_back_from"'
[ "$(readlink "$W/current")" = "$V2" ] || { echo "not rolled back to $V2"; exit 1; }
echo "2. rolled back to: $(readlink "$W/current")"
grep "rolled back" "$W/reports.log" | head -1 | grep -o '"message":"[^"]*"'
echo "   switches: $(wc -l < "$W/switches.log") ($(grep -c 'from nixfleet-switch-' "$W/switches.log") through transient units)"
grep -o "Switch unit ended.*" "$W/agent.log" | head -3

echo "{\"hash\":\"$UNITS\",\"cache_url\":null,\"poll_hint\":1}" > "$W/desired.json"
wait_for '"outcome":"failed_units"'
REPORT=$(grep '"outcome":"failed_units"' "$W/reports.log" | head -1)
for want in '"exit_code":4' '"failed_units":2' '"message":"deployed; switched, 2 units failed"'; do
  case "$REPORT" in *"$want"*) ;; *) echo "the failed-units report lacks $want: $REPORT"; exit 1 ;; esac
done
[ "$(readlink "$W/current")" = "$UNITS" ] || { echo "not left on $UNITS for the gate to judge"; exit 1; }
echo "3. failed units: $(echo "$REPORT" | grep -o '"switch":{[^}]*}')"

echo "{\"hash\":\"$HANG\",\"cache_url\":null,\"poll_hint\":1}" > "$W/desired.json"
for _ in $(seq 900); do grep -q "rolled_back_from\":\"$HANG" "$W/reports.log" 2>/dev/null && break; sleep 0.1; done
grep -q "rolled_back_from\":\"$HANG" "$W/reports.log" || { echo "no rollback from the hung switch"; cat "$W/agent.log"; exit 1; }
[ "$(readlink "$W/current")" = "$UNITS" ] || { echo "not rolled back to $UNITS after the hung switch"; exit 1; }
if inside pgrep -f "sleep 1000" >/dev/null; then echo "the hung switch still runs after the rollback"; inside systemctl list-units 'nixfleet-switch-*' --no-pager; exit 1; fi
echo "4. hung switch stopped, rolled back to: $(readlink "$W/current")"
grep -o "Stopped the switch unit.*" "$W/agent.log" | head -1
inside sh -c "kill -TERM \$(cat $W/agent.pid) \$(cat $W/cp.pid)"
sleep 1
tail -1 "$W/agent.log"
echo "OK: systemd-run switch mode works under systemd"
