# ReplicatedKVStore tasks. `just --list` shows them all.

# Run the whole test suite (the README's test command).
test:
    cargo test --workspace --release

# The deterministic Raft simulator: `just sim` (10k seeds) or `just sim 100000`.
sim seeds="10000" first="0":
    cargo run --release -p kvsim --bin sim -- --seeds {{seeds}} --first {{first}}

# Replay one simulator seed with its trace.
sim-seed seed:
    SIM_SEED={{seed}} cargo test --release -p kvsim --test sim -- --nocapture

# Break one safety property at a time on a scratch worktree and show which seeds catch it.
sim-mutations *names="":
    scripts/sim-mutations.sh {{names}}

# Formatting, lints and the layout rules.
lint: tidy
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The sans-IO rule and other layout checks.
tidy:
    scripts/tidy.sh

# A local cluster: `just cluster up`, `just cluster status`, `just cluster down`;
# `just cluster add` (a new node joins as a learner, promoted once caught up), `just cluster remove 2`.
cluster action="status" *node="":
    scripts/cluster.sh {{action}} {{node}}

# The load generator on an embedded 3-node cluster (extra flags pass through).
bench *args="--clients 64 --duration 10s":
    cargo run --release -p bench -- {{args}}

# A fault-injection campaign (extra flags pass through).
campaign *args="":
    cargo run --release -p bench -- campaign {{args}}

# Our cluster against a local 3-member etcd (Debian's etcd-server), side by side:
# `just compare` (3 rounds x 10 s per case) or `just compare --rounds 5 --duration 20s`.
compare *args="":
    cargo run --release -p bench --features etcd -- compare {{args}}

# Storage and checker benchmarks.
benchmarks:
    cargo bench -p kvstorage --bench wal
    cargo bench -p kvtransport --bench transport
    cargo bench -p checker

# The nightly campaign matrix (10 campaigns: kill, pause, partition, all mixed, and
# membership,kill,partition, per workload; 6 disk-fault campaigns) and results/index.html. As root for partitions and disk
# faults (FUSE). `just nightly 20s` for a short one.
nightly time="60s":
    cargo build --release -p kvnode -p bench -p nemesis
    scripts/nightly.sh {{time}}

# Regenerate results/index.html from the runs under results/.
index:
    cargo run --release -p bench -- index

# Browse results/ over HTTP: every run's report and files (http://127.0.0.1:8080/).
serve *args="":
    cargo run --release -p bench -- serve {{args}}
