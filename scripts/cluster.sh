#!/usr/bin/env bash
# A local 3-node cluster on 127.0.0.1:50051-50053 (metrics on 51051-51053).
#   scripts/cluster.sh up | down | status
# State lives in data/cluster/: cluster.toml, n<k>/ (WAL, snapshots), n<k>.log, n<k>.pid.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=data/cluster
BIN=target/release/kvnode
KVCTL=target/release/kvctl
NODES=(1 2 3)

build() {
  if [ ! -x "$BIN" ] || [ -n "$(find kvnode/src kvraft/src kvstate/src kvstorage/src kvtransport/src kvclient/src kvcore/src -newer "$BIN" -name '*.rs' | head -1)" ]; then
    echo "building kvnode (release)..."
    cargo build --release -q -p kvnode --bins
  fi
}

running() { # id -> 0 if that node's recorded process is alive
  local pidfile="$DIR/n$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

up() {
  build
  mkdir -p "$DIR"
  if [ ! -f certs/ca.pem ]; then
    "$BIN" certs --dir certs --nodes n1,n2,n3 --clients client1
  fi
  cat > "$DIR/cluster.toml" <<TOML
# Written by scripts/cluster.sh. Paths are relative to this file.
data_dir = "."
certs_dir = "../../certs"
[[nodes]]
id = 1
address = "127.0.0.1:50051"
[[nodes]]
id = 2
address = "127.0.0.1:50052"
[[nodes]]
id = 3
address = "127.0.0.1:50053"
TOML
  for id in "${NODES[@]}"; do
    if running "$id"; then
      echo "n$id already running (pid $(cat "$DIR/n$id.pid"))"
      continue
    fi
    nohup "$BIN" run --config "$DIR/cluster.toml" --id "n$id" >>"$DIR/n$id.log" 2>&1 &
    echo $! >"$DIR/n$id.pid"
    echo "started n$id (pid $!, log $DIR/n$id.log)"
  done
  for _ in $(seq 1 100); do
    for port in 51051 51052 51053; do
      if curl -s "localhost:$port" 2>/dev/null | grep -q '^raft_role 2'; then
        echo "leader elected (metrics port $port)"
        status
        return 0
      fi
    done
    sleep 0.1
  done
  echo "no leader after 10 s; see $DIR/n*.log" >&2
  return 1
}

down() {
  for id in "${NODES[@]}"; do
    if running "$id"; then
      kill -TERM "$(cat "$DIR/n$id.pid")"
    fi
  done
  for id in "${NODES[@]}"; do
    for _ in $(seq 1 50); do running "$id" || break; sleep 0.1; done
    if running "$id"; then
      echo "n$id did not stop in 5 s; killing"
      kill -KILL "$(cat "$DIR/n$id.pid")" || true
    fi
    rm -f "$DIR/n$id.pid"
  done
  echo "cluster down"
}

status() {
  if [ -x "$KVCTL" ]; then
    "$KVCTL" --config "$DIR/cluster.toml" --certs certs status
  else
    for id in "${NODES[@]}"; do
      port=$((51050 + id))
      echo "n$id: $(curl -s "localhost:$port" | grep -E '^raft_(role|term|commit_index|last_applied) ' | tr '\n' ' ')"
    done
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
