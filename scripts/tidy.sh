#!/usr/bin/env bash
# Layout rules that the compiler does not check (see ../shared/STYLE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
# 1. The pure crates do no I/O, read no clock, use no async runtime and no unseeded randomness.
#    Their Cargo.toml already keeps tokio, quinn and rustls out of their dependency trees; this
#    catches the standard library's I/O and clocks.
for dir in kvraft/src kvstate/src kvcore/src; do
  [ -d "$dir" ] || continue
  if grep -rnE 'tokio|std::fs|std::net|std::thread|Instant|SystemTime|rand::|thread_rng' "$dir" \
      | grep -vE '^[^:]+:[0-9]+:\s*//'; then
    echo "tidy: $dir must stay sans-IO (see proto-docs/raft.md)" >&2
    status=1
  fi
done
# 2. The dependency direction, checked on the resolved tree: no async runtime, QUIC or TLS below
#    the node core, no QUIC or TLS under storage.
for crate in kvraft kvstate kvcore kvstorage; do
  [ -f "$crate/Cargo.toml" ] || continue
  if cargo tree -q -e normal -p "$crate" 2>/dev/null | grep -qE '^.*\b(tokio|quinn|rustls) v'; then
    echo "tidy: $crate must not depend on tokio, quinn or rustls" >&2
    status=1
  fi
done
# 3. Lines at most 100 columns.
sources=()
for dir in kvraft kvstate kvcore kvsim kvstorage kvtransport kvclient kvnode checker bench nemesis; do
  [ -d "$dir" ] && sources+=("$dir")
done
# `|| true`: grep exits 1 when nothing matches, which pipefail would turn into "no problem".
long=$(grep -rnE '^.{101,}$' --include='*.rs' "${sources[@]}" | grep -v '/target/' || true)
if [ -n "$long" ]; then
  echo "$long" | head -5
  echo "tidy: lines over 100 columns" >&2
  status=1
fi
# 4. No stubs or ignored tests.
if grep -rnE 'todo!\(|unimplemented!\(|#\[ignore' --include='*.rs' . 2>/dev/null \
    | grep -v '/target/'; then
  echo "tidy: unfinished markers" >&2
  status=1
fi
[ $status = 0 ] && echo "tidy: ok"
exit $status
