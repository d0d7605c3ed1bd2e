#!/usr/bin/env bash
# The nightly campaign matrix: each fault kind x each workload, plus all kinds mixed per
# workload (8 campaigns), then results/index.html. Partitions need the netns backend (root);
# without root they are skipped with a SKIPPED line and the others run on the local backend.
# Usage: scripts/nightly.sh [time-limit] [seed]. Exit 1 if any campaign was not valid.
set -uo pipefail
cd "$(dirname "$0")/.."
time_limit="${1:-60s}"
seed="${2:-$(date +%s)}"
bench=target/release/bench
if [ ! -x "$bench" ] || [ ! -x target/release/kvnode ]; then
  echo "nightly: build first: cargo build --release -p kvnode -p bench" >&2
  exit 2
fi
backend=local
[ "$(id -u)" = 0 ] && backend=netns
failed=0
for workload in register list-append; do
  for faults in kill pause partition kill,pause,partition; do
    if [ "$backend" = local ] && [[ "$faults" == *partition* ]]; then
      echo "SKIPPED $workload/$faults: partitions need root (netns backend)"
      continue
    fi
    echo "=== campaign $workload / $faults ($time_limit, seed $seed, $backend)"
    "$bench" campaign --workload "$workload" --faults "$faults" --time-limit "$time_limit" \
      --interval 5s --clients 16 --seed "$seed" --backend "$backend" --quiet
    code=$?
    echo "=== exit $code"
    [ $code = 0 ] || failed=1
    seed=$((seed + 1))
  done
done
"$bench" index --results results
exit $failed
