#!/usr/bin/env bash
# The nightly campaign matrix: each fault kind x each workload, plus all kinds mixed and
# membership changes mixed with kills and partitions per workload (10 campaigns), then the disk campaigns (6: whole-cluster power loss and torn writes
# on all nodes, lost unsynced data on drawn targets, corruption, failed fsyncs, all disk faults
# mixed), then results/index.html. Partitions need the netns backend (root) and disk faults
# FUSE (root); without root they are skipped with a SKIPPED line.
# With KV_HOSTS=<hosts file> the nodes run on those hosts over ssh (the ssh backend: partitions
# with iptables on the hosts; disk campaigns are skipped, see proto-docs/operations.md).
# Usage: scripts/nightly.sh [time-limit] [seed]. Exit 1 if any campaign was not valid.
set -uo pipefail
cd "$(dirname "$0")/.."
time_limit="${1:-60s}"
seed="${2:-$(date +%s)}"
bench=target/release/bench
if [ ! -x "$bench" ] || [ ! -x target/release/kvnode ] || [ ! -x target/release/nemesis ]; then
  echo "nightly: build first: cargo build --release -p kvnode -p bench -p nemesis" >&2
  exit 2
fi
backend=local
[ "$(id -u)" = 0 ] && backend=netns
backend_args=(--backend "$backend")
if [ -n "${KV_HOSTS:-}" ]; then
  backend=ssh
  backend_args=(--backend ssh --hosts "$KV_HOSTS")
fi
failed=0
table=()
# One table row from a campaign's output (its `Report:` line names the run directory).
row() {
  local name=$1 out=$2 dir
  dir=$(sed -n 's/^Report: \(.*\)\/report.html$/\1/p' <<<"$out")
  # A top-level field of the pretty-printed summary.json (indented by two spaces).
  field() { sed -n "s/^  \"$1\": \(.*\)\$/\1/p" "$dir/summary.json" | sed 's/,$//' | tr -d '"'; }
  if [ -z "$dir" ] || [ ! -f "$dir/summary.json" ]; then
    table+=("$name|-|-|$(tail -1 <<<"$out")|-")
    return
  fi
  table+=("$name|$(field ops)|$(field faults_injected)|$(field verdict)|$(field recovery_ms)")
}
# campaign NAME ARGS...: runs one campaign, prints its output, records its row.
campaign() {
  local name="$1"
  shift
  echo "=== campaign $name ($time_limit, seed $seed)"
  out=$("$bench" campaign "$@" --time-limit "$time_limit" --interval 5s --clients 16 \
    --seed "$seed" --quiet 2>&1)
  code=$?
  echo "$out"
  echo "=== exit $code"
  row "$name (seed $seed)" "$out"
  [ $code = 0 ] || failed=1
  seed=$((seed + 1))
}
for workload in register list-append; do
  for faults in kill pause partition kill,pause,partition membership,kill,partition; do
    if [ "$backend" = local ] && [[ "$faults" == *partition* ]]; then
      echo "SKIPPED $workload/$faults: partitions need root (netns backend)"
      continue
    fi
    campaign "$workload/$faults" --workload "$workload" --faults "$faults" "${backend_args[@]}"
  done
done
# workload|faults|target (empty: drawn per fault from the seed)
disk_campaigns=(
  "register|disk-lose-unsynced|all"
  "register|disk-torn|all"
  "list-append|disk-lose-unsynced|"
  "register|disk-corrupt|"
  "register|disk-fsync-error|"
  "list-append|disk-lose-unsynced,disk-torn,disk-corrupt,disk-fsync-error|"
)
for entry in "${disk_campaigns[@]}"; do
  IFS='|' read -r workload faults target <<<"$entry"
  if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED $workload/$faults: disk faults need root (FUSE)"
    continue
  fi
  if [ "$backend" = ssh ]; then
    echo "SKIPPED $workload/$faults: disk faults are not supported on the ssh backend yet"
    continue
  fi
  target_args=()
  [ -n "$target" ] && target_args=(--target "$target")
  campaign "$workload/$faults${target:+@$target}" --workload "$workload" --faults "$faults" \
    "${target_args[@]}"
done
"$bench" index --results results
echo
echo "| campaign | ops | faults injected | verdict | recovery after heal (ms) |"
echo "| --- | --- | --- | --- | --- |"
for line in "${table[@]}"; do
  echo "| ${line//|/ | } |"
done
exit $failed
