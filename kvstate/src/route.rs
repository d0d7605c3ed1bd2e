//! Where a request goes next: the leader-finding logic, pure so it can be tested alone.
//!
//! A request starts at the leader the client last saw. A `NotLeader { leader_hint }` answer moves
//! it to the hinted node; no hint (an election is running), an unreachable node or a node that
//! cannot serve moves it to the next node in id order. After a full round of failures every
//! further failure waits a backoff that doubles from `BACKOFF_MS_MIN` up to `BACKOFF_MS_MAX`, so
//! a client neither spins during an election nor waits long once a leader is back.
//!
//! ```text
//! nodes 1 2 3, last leader 1, 1 and 2 are followers of 3, 3 is leader:
//!   attempt 1 -> n1: NotLeader{hint 3}   streak 1, no wait
//!   attempt 2 -> n3: Ok                  (the caller records 3 as the leader)
//! nodes 1 2 3, election running (no hints):
//!   n1 none, n2 none, n3 none            streak 3: a full round, now back off
//!   wait 10 ms, n1 none; wait 20 ms, n2 ...  (doubling, capped at 500 ms)
//! ```

use std::time::Duration;

use crate::NodeId;

/// First backoff after a full round of failed attempts.
pub const BACKOFF_MS_MIN: u64 = 10;
/// Largest backoff between two attempts. With `ATTEMPTS_MAX_DEFAULT` attempts the waits add up
/// to about 4 s, longer than an election with the default 1 s election timeout.
pub const BACKOFF_MS_MAX: u64 = 500;

/// The state of one request's search for the leader.
#[derive(Clone, Debug)]
pub struct Route {
    /// The cluster's node ids, ascending.
    nodes: Vec<NodeId>,
    target: NodeId,
    /// Failed attempts in a row.
    streak: u32,
    backoff_ms: u64,
}

impl Route {
    /// Starts at `start` if it is one of `nodes`, else at the first node. `nodes` must not be
    /// empty (the client configuration checks it).
    pub fn new(nodes: &[NodeId], start: Option<NodeId>) -> Route {
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        assert!(!nodes.is_empty(), "a route needs at least one node");
        let target = start.filter(|id| nodes.contains(id)).unwrap_or(nodes[0]);
        Route {
            nodes,
            target,
            streak: 0,
            backoff_ms: BACKOFF_MS_MIN,
        }
    }

    /// The node the next attempt goes to.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// The target answered `NotLeader`. Returns how long to wait before the next attempt.
    pub fn not_leader(&mut self, hint: Option<NodeId>) -> Duration {
        match hint {
            Some(leader) if leader != self.target && self.nodes.contains(&leader) => {
                self.target = leader;
            }
            _ => self.advance(),
        }
        self.failed()
    }

    /// The target could not be reached or could not serve. Returns the wait before the next
    /// attempt.
    pub fn unreachable(&mut self) -> Duration {
        self.advance();
        self.failed()
    }

    /// The target answered a request that needs no leader (a retry after a timeout, say):
    /// stay, but count the failure.
    pub fn retry_same(&mut self) -> Duration {
        self.failed()
    }

    fn advance(&mut self) {
        let position = self.nodes.iter().position(|&id| id == self.target);
        let next = position.map_or(0, |position| (position + 1) % self.nodes.len());
        self.target = self.nodes[next];
    }

    fn failed(&mut self) -> Duration {
        self.streak += 1;
        if (self.streak as usize) < self.nodes.len() {
            return Duration::ZERO;
        }
        let wait = Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MS_MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_cached_leader_when_it_is_a_member() {
        assert_eq!(Route::new(&[3, 1, 2], Some(2)).target(), 2);
        assert_eq!(Route::new(&[3, 1, 2], Some(9)).target(), 1);
        assert_eq!(Route::new(&[3, 1, 2], None).target(), 1);
    }

    #[test]
    fn follows_a_hint_without_waiting() {
        let mut route = Route::new(&[1, 2, 3], Some(1));
        assert_eq!(route.not_leader(Some(3)), Duration::ZERO);
        assert_eq!(route.target(), 3);
    }

    #[test]
    fn a_hint_naming_the_target_or_a_stranger_moves_to_the_next_node() {
        let mut route = Route::new(&[1, 2, 3], Some(2));
        route.not_leader(Some(2));
        assert_eq!(route.target(), 3);
        route.not_leader(Some(42));
        assert_eq!(route.target(), 1);
    }

    #[test]
    fn no_hint_cycles_through_the_nodes_then_backs_off_doubling_to_the_cap() {
        let mut route = Route::new(&[1, 2, 3], None);
        let mut targets = vec![route.target()];
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(route.not_leader(None).as_millis() as u64);
            targets.push(route.target());
        }
        assert_eq!(targets, [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(waits, [0, 0, 10, 20, 40, 80, 160, 320, 500, 500]);
    }

    #[test]
    fn stale_hints_pointing_at_each_other_still_back_off() {
        let mut route = Route::new(&[1, 2, 3], Some(1));
        let mut waits = Vec::new();
        for _ in 0..4 {
            let other = if route.target() == 1 { 2 } else { 1 };
            waits.push(route.not_leader(Some(other)).as_millis() as u64);
        }
        assert_eq!(waits, [0, 0, 10, 20]);
    }

    #[test]
    fn unreachable_nodes_are_skipped_in_order() {
        let mut route = Route::new(&[1, 2, 3], Some(3));
        route.unreachable();
        assert_eq!(route.target(), 1);
        route.retry_same();
        assert_eq!(route.target(), 1);
    }

    #[test]
    fn a_single_node_backs_off_from_the_first_failure() {
        let mut route = Route::new(&[7], None);
        assert_eq!(route.unreachable(), Duration::from_millis(BACKOFF_MS_MIN));
        assert_eq!(route.target(), 7);
    }
}
