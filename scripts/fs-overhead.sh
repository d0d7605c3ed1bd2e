#!/usr/bin/env bash
# The fault-injecting filesystem's overhead: `bench --workload put` on the embedded cluster with
# the nodes' data on the real filesystem and on the FUSE page-cache model (`--disk-fs`),
# alternated in one run so both see the same machine load. Root only (FUSE).
# Usage: scripts/fs-overhead.sh [rounds] [duration] [clients]. Prints one line per run and the
# medians.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${2:-10s}"
clients="${3:-64}"
bench=target/release/bench
if [ ! -x "$bench" ] || [ ! -x target/release/nemesis ]; then
  echo "fs-overhead: build first: cargo build --release -p bench -p nemesis" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "fs-overhead: needs root (FUSE mounts)" >&2
  exit 2
fi
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
declare -A rates
for round in $(seq 1 "$rounds"); do
  for mode in real fuse; do
    flags=()
    [ "$mode" = fuse ] && flags=(--disk-fs)
    out=$("$bench" --workload put --clients "$clients" --duration "$duration" --quiet \
      --no-check --results "$results" "${flags[@]}" 2>/dev/null)
    rate=$(echo "$out" | awk -F'\t' '/Ops\/sec:/ {print $2}')
    latency=$(echo "$out" | awk -F'\t' '/Latency:/ {print $2}')
    echo "round $round $mode: $rate puts/s, latency $latency"
    rates[$mode]="${rates[$mode]:-} $rate"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
real=$(echo "${rates[real]}" | median)
fuse=$(echo "${rates[fuse]}" | median)
echo "median: real filesystem $real puts/s, FUSE page-cache model $fuse puts/s" \
  "($(awk -v r="$real" -v f="$fuse" 'BEGIN {printf "%.0f", 100 * (1 - f / r)}')% fewer)"
