#!/usr/bin/env bash
# Layout rules that the compiler does not check (see ../shared/STYLE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
# 1. The pure cores do no I/O, read no clock, use no async runtime and no unseeded randomness.
for dir in kvnode/src/raft kvnode/src/kv; do
  if grep -rnE 'tokio|std::fs|std::net|Instant|SystemTime|rand::|thread_rng|use crate::(server|transport|wal|snapshot)' "$dir" \
      | grep -vE '^[^:]+:[0-9]+:\s*//'; then
    echo "tidy: $dir must stay sans-IO (see proto-docs/raft.md)" >&2
    status=1
  fi
done
# 2. Lines at most 100 columns.
if grep -rnE '^.{101,}$' --include='*.rs' kvnode/src checker/src 2>/dev/null | head -5 | grep .; then
  echo "tidy: lines over 100 columns" >&2
  status=1
fi
# 3. No stubs or ignored tests.
if grep -rnE 'todo!\(|unimplemented!\(|#\[ignore' --include='*.rs' kvnode checker bench nemesis 2>/dev/null | grep -v '/target/'; then
  echo "tidy: unfinished markers" >&2
  status=1
fi
[ $status = 0 ] && echo "tidy: ok"
exit $status
