//! The node core's limits. Durations are in ticks (the core has no clock); every limit is
//! named with its unit.

/// The default `CoreConfig::log_memory_bytes_max`.
pub const LOG_MEMORY_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// What the node core may hold and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// A client request not answered within this many ticks is answered `Timeout`: for a write
    /// the outcome is unknown (the entry may still commit; a retry with the same `seq` is
    /// deduplicated). Longer waits ride out more of an election; shorter ones free clients
    /// sooner. Default: 300 ticks (3 s at the default 10 ms tick).
    pub request_timeout_ticks: u64,
    /// Writes and linearizable reads waiting at once on this node. Beyond it a request is
    /// refused `Unavailable` at once, so memory stays bounded and the client backs off. By
    /// Little's law, 16384 pending requests at ~3 ms each sustain ~5M requests/s: far above what
    /// one node serves, so it only bites when commits stall.
    pub requests_pending_max: usize,
    /// Take a snapshot (and compact the log) every this many applied entries. Larger values
    /// snapshot less often but keep more log in memory and replay more at restart. The voters
    /// take turns (see `NodeCore::maybe_snapshot`): the log may hold this plus a share of it.
    pub snapshot_entries: u64,
    /// Snapshots received from leaders and held (decoded) until the leader's InstallSnapshot
    /// message arrives; older ones are discarded. Each costs the whole state in memory.
    pub received_snapshots_max: usize,
    /// Bytes of log entries (`Entry::size_bytes`: payload plus 24) held in memory. Beyond it
    /// the oldest applied, durable entries are evicted down to 7/8 of it; a leader reads them
    /// back from the WAL when a follower needs them (`proto-docs/storage.md`, "Evicted
    /// entries"). Larger budgets serve lagging followers from memory longer; smaller ones keep
    /// a node closer to its state's size (a follower catching up replays up to
    /// `COMPACTION_DEFERRED_CYCLES_MAX` snapshot intervals, at 8M keys a million entries or more,
    /// 450 bytes each in memory). Default 16 MiB, about 50k entries of 256-byte values (half a
    /// snapshot interval).
    pub log_memory_bytes_max: u64,
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            request_timeout_ticks: 300,
            requests_pending_max: 16 * 1024,
            snapshot_entries: 100_000,
            received_snapshots_max: 2,
            log_memory_bytes_max: LOG_MEMORY_BYTES_MAX_DEFAULT,
        }
    }
}
