#!/usr/bin/env bash
# Proves the simulator's checks: breaks one property at a time on a scratch worktree (never on
# this checkout), runs the default simulator seeds, and says which seeds caught it.
#   scripts/sim-mutations.sh            all mutations, 2000 seeds each
#   SEEDS=500 scripts/sim-mutations.sh bug1 a-no-dedup
# Exit 0 if every mutation was caught by at least one seed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scratch=$(mktemp -d /tmp/sim-mutations.XXXXXX)
trap 'git -C "$repo" worktree remove --force "$scratch/tree" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add --detach "$scratch/tree" HEAD >/dev/null
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/mutations}
seeds=${SEEDS:-2000}
missed=0

# mutate NAME FILE OLD NEW [FILE OLD NEW]...
mutate() {
  local name=$1; shift
  if [ ${#selected[@]} -gt 0 ] && [[ ! " ${selected[*]} " =~ " $name " ]]; then return; fi
  git -C "$scratch/tree" checkout -q -- .
  while [ $# -ge 3 ]; do
    python3 - "$scratch/tree/$1" "$2" "$3" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"mutation anchor found {text.count(old)} times in {path}")
open(path, "w").write(text.replace(old, new))
PY
    shift 3
  done
  (cd "$scratch/tree" && cargo build --release -q -p kvsim --bin sim)
  local out
  out=$("$CARGO_TARGET_DIR/release/sim" --seeds "$seeds" 2>"$scratch/$name.err" | tail -1 || true)
  local failed
  failed=$(grep -o '[0-9]* failed \[.*' <<<"$out" | cut -c1-120)
  if [ -z "$failed" ] || [[ $failed == 0\ failed* ]]; then
    echo "NOT CAUGHT  $name"
    missed=1
  else
    echo "caught      $name: $failed"
    local first
    first=$(grep -m1 '^FAILED' "$scratch/$name.err" || true)
    echo "            ${first:0:200}"
  fi
}
selected=("$@")

mutate bug1-ack-before-fsync \
  kvcore/src/node.rs "        let wrote = ready.must_persist();
        for message" "        for message" \
  kvcore/src/node.rs "        let messages = std::mem::take(&mut ready.persisted_messages);" \
  "        let wrote = ready.must_persist();
        let messages = std::mem::take(&mut ready.persisted_messages);"
mutate bug2-recovery-commands-uncounted \
  kvcore/src/node.rs "        for command in plan.commands {
            core.wal(command);
        }" "        for command in plan.commands {
            core.actions.push(Action::Wal(command));
        }" \
  kvcore/src/pipeline.rs "            total <= self.submitted_total," "            true,"
mutate bug3-answers-in-arrival-order \
  kvcore/src/requests.rs "        let mut replaced = Vec::new();
        // Usually one" "        let mut replaced = Vec::new();
        while let Some(&(_, i, t)) = self.proposal_deadlines.front() {
            if i > index {
                break;
            }
            self.proposal_deadlines.pop_front();
            let Some(p) = self.proposals.remove(&(i, t)) else { continue };
            if i == index && t == term { ours = Some(p) } else { replaced.push(p.token) }
        }
        if true { return (ours, replaced); }
        // Usually one"
mutate a-session-dedup-disabled \
  kvstate/src/state.rs "        if let Some(session) = self.sessions.get(&key) {" \
  "        if let Some(session) = self.sessions.get(&key).filter(|_| false) {"
mutate b-read-index-without-heartbeat-round \
  kvraft/src/raft.rs "        if quorum::has_quorum(&self.membership, |peer| peer == id) {
            self.read_states.push(ReadState { index, context });" "        if true {
            self.read_states.push(ReadState { index, context });"
mutate c-follower-applies-beyond-leader-commit \
  kvraft/src/raft.rs "        self.log.commit_to(commit.min(last_new));" "        let _ = commit;
        self.log.commit_to(last_new);"
mutate d-snapshot-install-keeps-sessions \
  kvcore/src/node.rs "        self.sm = sm;" "        self.sm = sm.with_sessions_of(&self.sm);" \
  kvstate/src/state.rs "    /// The index of the last entry applied (or of the snapshot restored)." \
  "    pub fn with_sessions_of(mut self, other: &StateMachine) -> StateMachine {
        self.sessions = other.sessions.clone();
        self.sessions_by_index = other.sessions_by_index.clone();
        self.sessions_result_bytes = other.sessions_result_bytes;
        self
    }

    /// The index of the last entry applied (or of the snapshot restored)."
mutate e-simple-change-of-two-voters \
  kvraft/src/confchange.rs "pub const SIMPLE_VOTERS_CHANGED_MAX: usize = 1;" \
  "pub const SIMPLE_VOTERS_CHANGED_MAX: usize = usize::MAX;"
mutate f-inline-write-reported-before-its-sync \
  kvsim/src/lib.rs "        self.nodes[index].disk.start_sync();
        let total = self.finish_sync(index)?;" "        let total = self.nodes[index].disk.unsynced_total();
        if let Some(core) = self.nodes[index].core.as_mut() {
            core.handle_durable(total);
        }" \
  kvsim/src/disk.rs "    /// Nothing written and not yet synced, nothing being synced." \
  "    pub fn unsynced_total(&self) -> u64 {
        self.durable_total + self.unsynced.len() as u64
    }

    /// Nothing written and not yet synced, nothing being synced."
exit $missed
