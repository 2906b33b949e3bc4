#!/usr/bin/env bash
# Measures the agent on this machine: one deploy cycle end to end, idle RSS and idle CPU.
# Usage: agent/scripts/measure.sh [path-to-nixfleet-agent]   (default: target/release/nixfleet-agent)
# Needs nix-bin and python3. Uses a recording stand-in for the control plane's two agent routes.
set -euo pipefail
AGENT=${1:-target/release/nixfleet-agent}
W=$(mktemp -d /tmp/nixfleet-agent-measure.XXXXXX)
trap 'kill $CP_PID $AGENT_PID 2>/dev/null || true; rm -rf "$W"' EXIT
export NIX_CONFIG=$'substituters =\nnarinfo-cache-negative-ttl = 0'

cat > "$W/system.nix" <<'NIX'
{ name, link }:
builtins.derivation {
  inherit name link; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nln -sfn %s %s\n' "$out" "$link" > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration; echo test > $out/nixos-version; ln -s /bin/sh $out/init; touch $out/healthy
  '' ];
}
NIX
V1=$(nix-build "$W/system.nix" --no-out-link --argstr name measure-v1 --argstr link "$W/current")
V2=$(nix-build "$W/system.nix" --no-out-link --argstr name measure-v2 --argstr link "$W/current")
ln -sfn "$V1" "$W/current"
echo "{\"command\":[{\"name\":\"app\",\"command\":\"test -e $W/current/healthy\"}]}" > "$W/health.json"
echo "{\"hash\":\"$V2\",\"cache_url\":null,\"poll_hint\":null}" > "$W/desired.json"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$(dirname "$0")/stub-cp.py" "$PORT" "$W" & CP_PID=$!
sleep 0.5

START=$(date +%s.%N)
"$AGENT" --control-plane-url "http://127.0.0.1:$PORT" --allow-insecure --machine-id web-01 --tags web \
  --poll-interval 5 --health-interval 60 --state-dir "$W/state" --profile "$W/profile" --current-system "$W/current" \
  --health-config "$W/health.json" --switch-mode direct 2> "$W/agent.log" & AGENT_PID=$!
until grep -q '"message":"deployed"' "$W/reports.log" 2>/dev/null; do sleep 0.01; done
END=$(grep '"message":"deployed"' "$W/reports.log" | head -1 | cut -d' ' -f1)
echo "deploy cycle (agent start -> 'deployed' report received): $(python3 -c "print(round(($END-$START)*1000))") ms"
echo "switch itself: $(grep -o '"elapsed_ms":[0-9]*' "$W/agent.log" | head -1)"
sleep 10
echo "RSS after the deploy, idle: $(grep VmRSS /proc/$AGENT_PID/status | awk '{print $2, $3}')"
T0=$(awk '{print $14+$15}' /proc/$AGENT_PID/stat); sleep 60; T1=$(awk '{print $14+$15}' /proc/$AGENT_PID/stat)
TCK=$(getconf CLK_TCK)
echo "CPU over 60 s idle (polling every 5 s, up-to-date reports with health): $(( (T1-T0)*1000/TCK )) ms"
echo "RSS after 60 s idle: $(grep VmRSS /proc/$AGENT_PID/status | awk '{print $2, $3}'), peak: $(grep VmHWM /proc/$AGENT_PID/status | awk '{print $2, $3}')"
echo "reports received: $(wc -l < "$W/reports.log")"
kill -TERM $AGENT_PID; wait $AGENT_PID && echo "exit status after SIGTERM: $?"
