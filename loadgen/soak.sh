#!/usr/bin/env bash
# The soak of docs/reliability.md: N simulated agents (default 10,000) report to one control plane
# for SECONDS (default 600) at RATE reports/s (default 2,000: each machine every 5 s, twelve times
# the agents' default health interval of 60 s). Every 30 s it records the control plane's resident
# memory, threads, open descriptors and the data directory's size; at the end the loadgen's error
# count, and the log's growth per report, per day at this rate and per day at one report per
# machine per minute. Fails if any report failed.
# Usage: loadgen/soak.sh [AGENTS] [SECONDS] [RATE]   (release builds; needs about 1 GiB of /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-10000}
secs=${2:-600}
rate=${3:-2000}
cargo build -q --release -p nixfleet-loadgen -p nixfleet-engine --bin nixfleet-loadgen --bin nixfleet-control-plane
work=$(mktemp -d /tmp/nixfleet-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "soak: $agents agents, $secs s at $rate reports/s; commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine loadgen || echo " (+ uncommitted changes)"); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/nixfleet-loadgen --spawn-cp target/release/nixfleet-control-plane \
  --data-dir "$work/data" --agents "$agents" --rate "$rate" --duration "$secs" --warmup 5 \
  --decision-rounds 3 >"$work/loadgen.out" 2>&1 &
lg=$!
cp=""
for _ in $(seq 1 300); do
  cp=$(ps --ppid "$lg" -o pid= -o comm= 2>/dev/null | awk '$2 ~ /^nixfleet-contr/ {print $1}' | head -n1)
  [ -n "$cp" ] && break
  sleep 0.2
done
[ -n "$cp" ] || { cat "$work/loadgen.out"; echo "soak: the control plane did not start"; exit 1; }
field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$cp/status" 2>/dev/null; }
printf '%6s %10s %10s %8s %8s %12s %12s %12s  %s\n' t_s rss_mib hwm_mib threads fds log_mib archive_mib snapshot_mib load
samples="$work/samples"
start=$SECONDS
while kill -0 "$cp" 2>/dev/null; do
  t=$((SECONDS - start))
  rss=$(field VmRSS); hwm=$(field VmHWM); thr=$(field Threads)
  [ -n "$rss" ] || break
  fds=$(ls "/proc/$cp/fd" 2>/dev/null | wc -l)
  logb=$(du -sb "$work/data/log" 2>/dev/null | cut -f1 || true)
  archb=$(du -sb "$work/data/log/archive" 2>/dev/null | cut -f1 || true)
  snapb=$(stat -c %s "$work/data/snapshot.bin" 2>/dev/null || echo 0)
  echo "$t $rss ${logb:-0}" >>"$samples"
  awk -v t="$t" -v rss="$rss" -v hwm="$hwm" -v thr="$thr" -v fds="$fds" -v logb="${logb:-0}" -v snapb="$snapb" \
    -v archb="${archb:-0}" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" \
    'BEGIN { printf "%6d %10.1f %10.1f %8s %8s %12.1f %12.1f %12.1f  %s\n", t, rss/1024, hwm/1024, thr, fds, logb/1048576, archb/1048576, snapb/1048576, load }'
  for _ in $(seq 1 30); do kill -0 "$cp" 2>/dev/null || break; sleep 1; done
done
status=0
wait "$lg" || status=$?
cat "$work/loadgen.out"
# Growth: between the first sample after 60 s and the last one taken under load.
read -r t0 _ b0 < <(awk '$1 >= 60' "$samples" | head -n1)  || true
read -r t1 _ b1 < <(awk -v end=$((secs)) '$1 <= end' "$samples" | tail -n1) || true
if [ -n "${t0:-}" ] && [ -n "${t1:-}" ] && [ "$t1" -gt "$t0" ]; then
  awk -v t0="$t0" -v t1="$t1" -v b0="$b0" -v b1="$b1" -v rate="$rate" -v agents="$agents" 'BEGIN {
    per_s = (b1 - b0) / (t1 - t0); per_report = per_s / rate
    printf "log growth: %.0f bytes/s between %d s and %d s = %.0f bytes per report (two events each)\n", per_s, t0, t1, per_report
    printf "per day at %d reports/s: %.1f GiB; at one report per machine per minute (%.0f reports/s): %.2f GiB/day, %.0f KiB per machine per day\n", rate, per_s * 86400 / 2^30, agents / 60, per_report * agents / 60 * 86400 / 2^30, per_report * 1440 / 1024
  }'
fi
# Steady state on disk: sled holds a bounded tail (at most two segments of records), so the log
# grows by what the archive takes per record.
archived=$(ls "$work/data/log/archive" 2>/dev/null | sed -n 's/^[0-9]*-0*\([0-9][0-9]*\)\.seg$/\1/p' | sort -n | tail -n1 || true)
if [ -n "$archived" ]; then
  awk -v bytes="$(du -sb "$work/data/log/archive" | cut -f1)" -v recs="$archived" -v agents="$agents" 'BEGIN {
    per = bytes / recs
    printf "archive: %d records in %.1f MiB = %.0f bytes per record; at one report per machine per minute (two records each): %.2f GiB/day for %d machines, %.0f KiB per machine per day\n", recs, bytes / 1048576, per, per * 2 * agents * 1440 / 2^30, agents, per * 2 * 1440 / 1024
  }'
else
  echo "archive: nothing archived yet (fewer than two segments of records were written)"
fi
exit "$status"
