//! The knobs of one simulated run, all derived from its seed.

use kvraft::rng::Rng;

use crate::client::ClientConfig;

/// Time units per Raft tick. A client's backoff in milliseconds counts one unit per
/// millisecond, so a tick stands for 10 ms, the server's default.
pub const TICK_UNITS: u64 = 10;
/// Longest decode of a received snapshot: several heartbeats, so the leader's probes reach a
/// follower that is still decoding.
const DECODE_UNITS_MAX: u64 = 4 * TICK_UNITS;

/// The knobs of one simulated run, all derived from the seed by `SimConfig::from_seed`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Ticks during which faults strike.
    pub fault_ticks: u64,
    /// Ticks allowed after the faults stop for the cluster to converge.
    pub liveness_ticks_max: u64,
    pub loss_per_million: u64,
    pub duplicate_per_million: u64,
    /// Messages that may overtake earlier ones on their link; the rest keep FIFO order (as on
    /// the real transport's one QUIC stream per peer).
    pub reorder_per_million: u64,
    pub delay_units_max: u64,
    /// Messages held far longer than an election timeout (a stalled stream): with FIFO links
    /// the messages behind them wait too.
    pub long_delay_per_million: u64,
    /// Time a group commit (write + fdatasync) or a snapshot file write takes, at most.
    pub persist_units_max: u64,
    /// Time decoding a received snapshot file takes, at most (the node decodes it off its
    /// loop, while messages keep arriving).
    pub decode_units_max: u64,
    /// Per time unit: chance of a crash, a restart of a crashed node, a partition change, a
    /// pause (SIGSTOP) of a node.
    pub crash_per_million: u64,
    pub restart_per_million: u64,
    pub partition_per_million: u64,
    pub pause_per_million: u64,
    /// Per time unit: chance of a leader flap. The leader is isolated long enough for another
    /// node to win; then the new leader is isolated instead, so the old one, its log truncated
    /// and its old proposals still waiting, can lead again (Jepsen's moving isolation).
    pub flap_per_million: u64,
    /// Longest pause, in ticks. Pauses longer than an election timeout depose a paused leader
    /// that then resumes with stale messages queued.
    pub pause_ticks_max: u64,
    /// Chance that a crash tears the first unsynced WAL write (a prefix of its entries stays).
    pub torn_per_million: u64,
    /// A node snapshots and compacts once it applied this many entries past its snapshot.
    pub snapshot_entries: u64,
    /// The node core's `log_memory_bytes_max`: small budgets make leaders read evicted
    /// entries back from the disk for their followers (`Action::LoadEntries`).
    pub log_memory_bytes_max: u64,
    /// The node core's request deadline, in ticks.
    pub request_timeout_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Entry bytes per append message: small values split appends, so followers acknowledge a
    /// prefix of a new leader's log before its no-op (the Figure 8 window).
    pub append_batch_bytes_max: u64,
    /// Share of crashes, isolations and pauses aimed at the current leader.
    pub target_leader_per_million: u64,
    /// Chance that a node that just won an election crashes a few units later (while its
    /// first appends are in flight).
    pub crash_new_leader_per_million: u64,
    /// Chance that a node is killed while a write of its term or vote is in flight, and
    /// restarted shortly after: the window in which an unsynced vote is lost.
    pub crash_during_vote_per_million: u64,
    /// Per time unit: chance of a configuration change proposed on the leader (the membership
    /// fault, `membership.rs`). Zero in about a third of the seeds.
    pub conf_change_per_million: u64,
    /// Chance that a node that does not lead writes an append on its own thread when its disk
    /// is idle (kvnode's `wal_sync_inline_when_following`): durable at once, reported in the
    /// middle of performing its actions, instead of after a group commit's delay.
    pub wal_inline_per_million: u64,
    pub clients: ClientConfig,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5EED_0FC0_FFEE);
        let mut config = SimConfig {
            seed,
            nodes: if rng.chance(300_000) { 5 } else { 3 },
            fault_ticks: rng.between(300, 1000),
            liveness_ticks_max: 300,
            loss_per_million: rng.between(0, 150_000),
            duplicate_per_million: rng.between(0, 50_000),
            reorder_per_million: rng.between(0, 600_000),
            delay_units_max: rng.between(2, 2 * TICK_UNITS),
            long_delay_per_million: rng.between(0, 20_000),
            persist_units_max: rng.between(1, TICK_UNITS),
            decode_units_max: DECODE_UNITS_MAX,
            crash_per_million: rng.between(0, 8_000),
            restart_per_million: rng.between(2_000, 30_000),
            partition_per_million: rng.between(0, 8_000),
            pause_per_million: rng.between(0, 3_000),
            pause_ticks_max: rng.between(5, 40),
            flap_per_million: rng.between(0, 2_000),
            torn_per_million: rng.between(0, 500_000),
            snapshot_entries: rng.between(8, 64),
            log_memory_bytes_max: u64::MAX,
            request_timeout_ticks: rng.between(20, 120),
            pre_vote: rng.chance(800_000),
            check_quorum: rng.chance(800_000),
            append_batch_bytes_max: rng.between(60, 600),
            target_leader_per_million: rng.between(0, 800_000),
            crash_new_leader_per_million: rng.between(0, 300_000),
            crash_during_vote_per_million: rng.between(0, 100_000),
            conf_change_per_million: 0,
            wal_inline_per_million: 0,
            clients: ClientConfig {
                clients: rng.between(4, 16) as usize,
                attempt_timeout_units: rng.between(5, 40) * TICK_UNITS,
                attempts_max: rng.between(3, 12) as u32,
                think_units_max: rng.between(1, 5),
                write_per_million: rng.between(300_000, 800_000),
            },
        };
        // One seed in three is an election storm: leaders die soon after winning, messages
        // carry one entry each and many are lost. This is the weather in which old-term entries
        // get replicated to a majority by a short-lived leader (Raft paper, Figure 8).
        if rng.chance(333_333) {
            config.nodes = 5;
            config.append_batch_bytes_max = rng.between(60, 120);
            config.crash_new_leader_per_million = rng.between(500_000, 1_000_000);
            config.loss_per_million = rng.between(50_000, 250_000);
            config.reorder_per_million = 1_000_000;
            config.restart_per_million = rng.between(20_000, 60_000);
            config.crash_during_vote_per_million = rng.between(100_000, 500_000);
        }
        // One seed in five is a flap storm: leaders are isolated and then return after a new
        // leader replaced their uncommitted suffix, often winning again while old proposals
        // still wait (requests at indexes above newer ones: issue 10, bug 3). No other
        // partitions interrupt the flaps; an isolated leader keeps taking proposals (no
        // check-quorum) and clients wait long on it.
        if rng.chance(200_000) {
            config.check_quorum = false;
            config.flap_per_million = rng.between(3_000, 8_000);
            config.partition_per_million = 0;
            config.crash_per_million = rng.between(0, 1_000);
            config.request_timeout_ticks = rng.between(80, 150);
            config.clients.clients = rng.between(8, 16) as usize;
            config.clients.attempt_timeout_units = rng.between(20, 40) * TICK_UNITS;
        }
        // Drawn last, so that the other knobs of a seed are what they were before it existed.
        if rng.chance(666_667) {
            config.conf_change_per_million = rng.between(300, 2_000);
        }
        // Two seeds in three evict log entries from memory (a few entries' worth or less).
        if rng.chance(666_667) {
            config.log_memory_bytes_max = rng.between(0, 3_000);
        }
        // Two seeds in three sync some followers' appends inline (as kvnode does by default).
        if rng.chance(666_667) {
            config.wal_inline_per_million = rng.between(200_000, 1_000_000);
        }
        config
    }
}
