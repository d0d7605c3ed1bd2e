#!/usr/bin/env bash
# A local cluster on 127.0.0.1: node k on port 50050+k (metrics 51050+k); 3 nodes to begin.
#   scripts/cluster.sh up | down | status
#   scripts/cluster.sh add [ID]   a new node (default: the next id) joins as a learner and is
#                                 promoted once caught up
#   scripts/cluster.sh remove ID  the node leaves the configuration, stops, and its entry and
#                                 data are removed
# State lives in data/cluster/: cluster.toml, n<k>/ (WAL, snapshots), n<k>.log, n<k>.pid.
# cluster.toml is written once (by the first `up`) and then kept: add and remove edit it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${KV_CLUSTER_DIR:-data/cluster}
# Node k listens on PORT_BASE + k (metrics: + 1000).
PORT_BASE=${KV_CLUSTER_PORT_BASE:-50050}
BIN=${CARGO_TARGET_DIR:-target}/release/kvnode
KVCTL=${CARGO_TARGET_DIR:-target}/release/kvctl
CONFIG="$DIR/cluster.toml"
# How long `add` waits for the new node to catch up before it gives up promoting it.
PROMOTE_WAIT_S=60

nodes() { # the ids in cluster.toml, or the initial three
  if [ -f "$CONFIG" ]; then
    sed -n 's/^id = \([0-9][0-9]*\)$/\1/p' "$CONFIG"
  else
    echo 1 2 3
  fi
}

kvctl() { "$KVCTL" --config "$CONFIG" --certs certs "$@"; }

start() { # id [--join]
  local id=$1
  shift
  if running "$id"; then
    echo "n$id already running (pid $(cat "$DIR/n$id.pid"))"
    return 0
  fi
  nohup "$BIN" run --config "$CONFIG" --id "n$id" "$@" >>"$DIR/n$id.log" 2>&1 &
  echo $! >"$DIR/n$id.pid"
  echo "started n$id (pid $!, log $DIR/n$id.log)"
}

stop() { # id
  local id=$1
  if running "$id"; then
    kill -TERM "$(cat "$DIR/n$id.pid")"
  fi
  for _ in $(seq 1 50); do running "$id" || break; sleep 0.1; done
  if running "$id"; then
    echo "n$id did not stop in 5 s; killing"
    kill -KILL "$(cat "$DIR/n$id.pid")" || true
  fi
  rm -f "$DIR/n$id.pid"
}

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
  if [ ! -f "$CONFIG" ]; then
  cat > "$CONFIG" <<TOML
# Written by scripts/cluster.sh; "cluster.sh add" and "remove" edit it. data_dir is relative to this file.
data_dir = "."
certs_dir = "$(pwd)/certs"
[[nodes]]
id = 1
address = "127.0.0.1:$((PORT_BASE + 1))"
[[nodes]]
id = 2
address = "127.0.0.1:$((PORT_BASE + 2))"
[[nodes]]
id = 3
address = "127.0.0.1:$((PORT_BASE + 3))"
TOML
  fi
  for id in $(nodes); do
    start "$id"
  done
  for _ in $(seq 1 100); do
    for id in $(nodes); do
      port=$((PORT_BASE + 1000 + id))
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
  for id in $(nodes); do
    if running "$id"; then
      kill -TERM "$(cat "$DIR/n$id.pid")"
    fi
  done
  for id in $(nodes); do
    stop "$id"
  done
  echo "cluster down"
}

add() { # [id]
  build
  [ -f "$CONFIG" ] || { echo "no cluster: run \`just cluster up\` first" >&2; return 1; }
  local id=${1:-}
  if [ -z "$id" ]; then
    id=$(( $(nodes | sort -n | tail -1) + 1 ))
  fi
  id=${id#n}
  case "$id" in ''|*[!0-9]*) echo "add: '$1' is not a node id (n4 or 4)" >&2; return 2 ;; esac
  if nodes | grep -qx "$id"; then
    echo "add: n$id is already in $CONFIG (remove it first)" >&2
    return 1
  fi
  local port=$((PORT_BASE + id))
  "$BIN" certs --dir certs --nodes "n$id" --clients client1
  kvctl member add "n$id" --peer-address "127.0.0.1:$port"
  cat >>"$CONFIG" <<TOML
[[nodes]]
id = $id
address = "127.0.0.1:$port"
join = true
TOML
  rm -rf "${DIR:?}/n$id"
  start "$id" --join
  echo "waiting for n$id to catch up, then promoting it..."
  for _ in $(seq 1 $((PROMOTE_WAIT_S * 5))); do
    if kvctl member promote "n$id" 2>/dev/null; then
      kvctl member list
      return 0
    fi
    sleep 0.2
  done
  echo "n$id did not catch up in ${PROMOTE_WAIT_S} s; it stays a learner (see $DIR/n$id.log;" \
    "promote it later with: $KVCTL --config $CONFIG member promote n$id)" >&2
  return 1
}

remove() { # id
  local id=${1:-}
  id=${id#n}
  case "$id" in ''|*[!0-9]*) echo "usage: $0 remove ID (n2 or 2)" >&2; return 2 ;; esac
  build
  kvctl member remove "n$id"
  stop "$id"
  # Drop the node's [[nodes]] block (from its [[nodes]] line to the next one).
  awk -v id="$id" '
    function flush() { if (!drop) printf "%s", block; block = ""; drop = 0 }
    /^\[\[nodes\]\]$/ { flush(); inblock = 1 }
    inblock { block = block $0 "\n"; if ($0 == "id = " id) drop = 1; next }
    { print }
    END { flush() }
  ' "$CONFIG" >"$CONFIG.tmp" && mv "$CONFIG.tmp" "$CONFIG"
  rm -rf "${DIR:?}/n$id"
  echo "n$id removed: stopped, its data deleted, its entry dropped from $CONFIG"
  kvctl member list
}

status() {
  if [ -x "$KVCTL" ]; then
    kvctl status
  else
    for id in $(nodes); do
      port=$((PORT_BASE + 1000 + id))
      echo "n$id: $(curl -s "localhost:$port" | grep -E '^raft_(role|term|commit_index|last_applied) ' | tr '\n' ' ')"
    done
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  add) add "${2:-}" ;;
  remove) remove "${2:-}" ;;
  *) echo "usage: $0 up|down|status|add [ID]|remove ID" >&2; exit 2 ;;
esac
