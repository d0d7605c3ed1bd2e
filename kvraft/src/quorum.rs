//! Quorums over a configuration, simple or joint (Raft thesis §4.3; etcd-io/raft `quorum/`).
//!
//! Pure functions: who counts is the configuration's business, what each node reported is the
//! caller's (a closure). A joint configuration decides only when both its halves do:
//!
//! ```text
//! committed index  = min(majority index of voters, majority index of voters_outgoing)
//! vote / ack round = won if both halves won; lost if either half lost; else pending
//! ```
//!
//! An empty half (the outgoing half of a simple configuration) never holds anything up: its
//! index is `Index::MAX` and its vote is won. A configuration with no voters at all decides
//! nothing (index 0, vote pending).

use super::message::{Index, Membership, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither won nor lost yet: more answers are needed.
    Pending,
    Won,
    Lost,
}

/// The highest index that a majority of `voters` have reached, given each voter's index.
pub fn majority_index(voters: &[NodeId], index_of: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    let mut indexes: Vec<Index> = voters.iter().map(|&id| index_of(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

/// The outcome of a vote among `voters`; `vote_of` is `Some(granted)` for those who answered.
pub fn majority_vote(voters: &[NodeId], vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let quorum = voters.len() / 2 + 1;
    let (mut granted, mut missing) = (0, 0);
    for &id in voters {
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The committed index of `membership`: what a majority of each half has reached.
pub fn committed_index(membership: &Membership, index_of: impl Fn(NodeId) -> Index) -> Index {
    if membership.voters.is_empty() && membership.voters_outgoing.is_empty() {
        return 0;
    }
    let incoming = majority_index(&membership.voters, &index_of);
    let outgoing = majority_index(&membership.voters_outgoing, &index_of);
    incoming.min(outgoing)
}

/// The outcome of a vote (or of an acknowledgement round) in `membership`.
pub fn vote_result(
    membership: &Membership,
    vote_of: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if membership.voters.is_empty() && membership.voters_outgoing.is_empty() {
        return VoteResult::Pending;
    }
    let incoming = majority_vote(&membership.voters, &vote_of);
    let outgoing = majority_vote(&membership.voters_outgoing, &vote_of);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Whether the nodes for which `acked` holds form a quorum of `membership` (check-quorum,
/// ReadIndex rounds).
pub fn has_quorum(membership: &Membership, acked: impl Fn(NodeId) -> bool) -> bool {
    vote_result(membership, |id| Some(acked(id))) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn joint(voters: &[NodeId], outgoing: &[NodeId]) -> Membership {
        Membership {
            voters: voters.to_vec(),
            voters_outgoing: outgoing.to_vec(),
            learners: Vec::new(),
        }
    }

    #[test]
    fn majority_index_is_the_median_from_the_top() {
        let matched: BTreeMap<NodeId, Index> = [(1, 5), (2, 3), (3, 9)].into();
        let at = |id| matched.get(&id).copied().unwrap_or(0);
        assert_eq!(majority_index(&[1, 2, 3], at), 5);
        assert_eq!(majority_index(&[1, 2], at), 3);
        assert_eq!(majority_index(&[3], at), 9);
        // Five voters, two unknown (0): the third highest.
        assert_eq!(majority_index(&[1, 2, 3, 4, 5], at), 3);
        assert_eq!(majority_index(&[], at), Index::MAX);
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let matched: BTreeMap<NodeId, Index> = [(1, 10), (2, 10), (3, 2), (4, 1), (5, 1)].into();
        let at = |id| matched.get(&id).copied().unwrap_or(0);
        // C_old {1,2,3} has 10 on a majority; C_new {3,4,5} only 1.
        assert_eq!(committed_index(&joint(&[3, 4, 5], &[1, 2, 3]), at), 1);
        assert_eq!(committed_index(&joint(&[1, 2, 3], &[]), at), 10);
        assert_eq!(committed_index(&joint(&[1, 4], &[1, 2, 3]), at), 1);
        // Learners do not count: a lone voter commits alone.
        let with_learner = Membership {
            voters: vec![3],
            voters_outgoing: vec![],
            learners: vec![1, 2],
        };
        assert_eq!(committed_index(&with_learner, at), 2);
        assert_eq!(committed_index(&Membership::default(), at), 0);
    }

    #[test]
    fn votes_are_won_lost_or_pending_in_both_halves() {
        let votes = |granted: &[NodeId], refused: &[NodeId]| {
            let mut map = BTreeMap::new();
            for &id in granted {
                map.insert(id, true);
            }
            for &id in refused {
                map.insert(id, false);
            }
            map
        };
        let simple = joint(&[1, 2, 3], &[]);
        let v = votes(&[1, 2], &[]);
        assert_eq!(
            vote_result(&simple, |id| v.get(&id).copied()),
            VoteResult::Won
        );
        let v = votes(&[1], &[2]);
        assert_eq!(
            vote_result(&simple, |id| v.get(&id).copied()),
            VoteResult::Pending
        );
        let v = votes(&[1], &[2, 3]);
        assert_eq!(
            vote_result(&simple, |id| v.get(&id).copied()),
            VoteResult::Lost
        );

        let both = joint(&[3, 4, 5], &[1, 2, 3]);
        // A majority of C_old alone is not enough.
        let v = votes(&[1, 2], &[]);
        assert_eq!(
            vote_result(&both, |id| v.get(&id).copied()),
            VoteResult::Pending
        );
        let v = votes(&[1, 2, 4, 5], &[]);
        assert_eq!(
            vote_result(&both, |id| v.get(&id).copied()),
            VoteResult::Won
        );
        // Losing one half loses the election.
        let v = votes(&[1, 2, 3], &[4, 5]);
        assert_eq!(
            vote_result(&both, |id| v.get(&id).copied()),
            VoteResult::Lost
        );
        // Votes from non-voters are ignored.
        let v = votes(&[6, 7, 8], &[]);
        assert_eq!(
            vote_result(&simple, |id| v.get(&id).copied()),
            VoteResult::Pending
        );
        assert!(!has_quorum(&Membership::default(), |_| true));
        assert!(has_quorum(&both, |id| id != 3));
        assert!(!has_quorum(&both, |id| id >= 3));
    }
}
