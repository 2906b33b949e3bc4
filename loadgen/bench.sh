#!/usr/bin/env bash
# The control plane load figures of docs/benchmarks.md: for 1,000 and 10,000 simulated machines,
# durable reports/s flat out (with rollout decision latency), then latency at 2,000 reports/s.
# Usage: loadgen/bench.sh [SECONDS]   (default 20 s measured per run; release builds)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
cargo build -q --release -p nixfleet-loadgen -p nixfleet-engine --bin nixfleet-loadgen --bin nixfleet-control-plane
lg=target/release/nixfleet-loadgen
cp=target/release/nixfleet-control-plane
work=$(mktemp -d /tmp/nixfleet-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine loadgen || echo ' (+ uncommitted changes)'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for n in 1000 10000; do
  echo "--- $n machines, as fast as possible, then rollout decisions"
  "$lg" --spawn-cp "$cp" --data-dir "$work/flat-$n" --agents "$n" --duration "$secs" --decision-rounds 10 --decision-machines 100
  echo "--- $n machines at 2,000 reports/s"
  "$lg" --spawn-cp "$cp" --data-dir "$work/rate-$n" --agents "$n" --rate 2000 --duration "$secs" --decision-rounds 0
done
