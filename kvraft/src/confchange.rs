//! Configuration changes (Raft thesis §4; etcd-io/raft `confchange/`): what an operator asks
//! for (`ConfChange`) and the configuration it leads to.
//!
//! Two ways to get from C_old to C_new:
//!
//! - **Joint** (any combination of operations): the leader appends C_old,new (`voters` = C_new,
//!   `voters_outgoing` = C_old); once that entry commits it appends C_new by itself (auto-leave).
//!   While joint, every decision needs a majority of C_old AND of C_new, so no two majorities
//!   can decide differently at any moment of the change.
//! - **Simple**: C_new directly, allowed only when the voter sets differ in at most one node.
//!   Any majority of C_old then overlaps any majority of C_new (thesis §4.1). Two voters at once
//!   would allow disjoint majorities: refused with `ConfChangeError::SimpleChangesTooMany`.
//!
//! Learners are added empty and caught up by the log or a snapshot; `Promote` turns a learner
//! into a voter (adding a voter directly would stall commits while it catches up, thesis §4.2.1).

use serde::{Deserialize, Serialize};

use super::message::{Membership, NodeId};

/// One operation of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeOp {
    /// A new node, non-voting, receiving the log.
    AddLearner(NodeId),
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves the configuration.
    Remove(NodeId),
}

impl ConfChangeOp {
    pub fn node(self) -> NodeId {
        match self {
            ConfChangeOp::AddLearner(id) | ConfChangeOp::Promote(id) | ConfChangeOp::Remove(id) => {
                id
            }
        }
    }
}

impl std::fmt::Display for ConfChangeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfChangeOp::AddLearner(id) => write!(f, "add learner n{id}"),
            ConfChangeOp::Promote(id) => write!(f, "promote n{id}"),
            ConfChangeOp::Remove(id) => write!(f, "remove n{id}"),
        }
    }
}

/// How the change is carried out (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeMode {
    /// Through C_old,new, leaving it automatically once it commits. Always safe.
    Joint,
    /// Straight to C_new; only when at most one voter changes.
    Simple,
}

/// A configuration change as proposed with `RawNode::propose_conf_change`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    pub ops: Vec<ConfChangeOp>,
    pub mode: ConfChangeMode,
}

/// Why a change was refused. Nothing was proposed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfChangeError {
    #[error("the change has no operations")]
    Empty,
    #[error("node id 0 is not valid")]
    ZeroId,
    #[error("node n{0} appears twice in one change")]
    Repeated(NodeId),
    #[error("n{0} is already a member")]
    AlreadyMember(NodeId),
    #[error("n{0} is not a learner (only learners are promoted)")]
    NotLearner(NodeId),
    #[error("n{0} is not a member")]
    NotMember(NodeId),
    #[error("the change would leave no voters")]
    NoVoters,
    #[error("the configuration is joint (a change is still in progress)")]
    InJoint,
    #[error(
        "a simple change may change at most one voter, this one changes {voters_changed}; \
         use a joint change"
    )]
    SimpleChangesTooMany { voters_changed: usize },
}

impl ConfChange {
    pub fn simple(op: ConfChangeOp) -> ConfChange {
        ConfChange {
            ops: vec![op],
            mode: ConfChangeMode::Simple,
        }
    }

    pub fn joint(ops: Vec<ConfChangeOp>) -> ConfChange {
        ConfChange {
            ops,
            mode: ConfChangeMode::Joint,
        }
    }

    /// The configuration the change's entry carries, from `current` (which must not be joint).
    /// Joint mode gives C_old,new; simple mode gives C_new.
    pub fn apply(&self, current: &Membership) -> Result<Membership, ConfChangeError> {
        if current.is_joint() {
            return Err(ConfChangeError::InJoint);
        }
        if self.ops.is_empty() {
            return Err(ConfChangeError::Empty);
        }
        let mut voters = current.voters.clone();
        let mut learners = current.learners.clone();
        let mut seen = Vec::new();
        for &op in &self.ops {
            let id = op.node();
            if id == 0 {
                return Err(ConfChangeError::ZeroId);
            }
            if seen.contains(&id) {
                return Err(ConfChangeError::Repeated(id));
            }
            seen.push(id);
            match op {
                ConfChangeOp::AddLearner(id) => {
                    if voters.contains(&id) || learners.contains(&id) {
                        return Err(ConfChangeError::AlreadyMember(id));
                    }
                    learners.push(id);
                }
                ConfChangeOp::Promote(id) => {
                    let Some(at) = learners.iter().position(|&l| l == id) else {
                        return Err(ConfChangeError::NotLearner(id));
                    };
                    learners.remove(at);
                    voters.push(id);
                }
                ConfChangeOp::Remove(id) => {
                    let before = voters.len() + learners.len();
                    voters.retain(|&v| v != id);
                    learners.retain(|&l| l != id);
                    if voters.len() + learners.len() == before {
                        return Err(ConfChangeError::NotMember(id));
                    }
                }
            }
        }
        voters.sort_unstable();
        learners.sort_unstable();
        if voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        let voters_changed = voters_changed(&current.voters, &voters);
        match self.mode {
            ConfChangeMode::Simple if voters_changed > SIMPLE_VOTERS_CHANGED_MAX => {
                Err(ConfChangeError::SimpleChangesTooMany { voters_changed })
            }
            ConfChangeMode::Simple => Ok(Membership {
                voters,
                voters_outgoing: Vec::new(),
                learners,
            }),
            ConfChangeMode::Joint => Ok(Membership {
                voters,
                voters_outgoing: current.voters.clone(),
                learners,
            }),
        }
    }
}

/// The most voters a simple (non-joint) change may add or remove: one, so that every majority
/// of the old configuration overlaps every majority of the new one.
pub const SIMPLE_VOTERS_CHANGED_MAX: usize = 1;

/// The size of the symmetric difference of two sorted voter sets.
fn voters_changed(old: &[NodeId], new: &[NodeId]) -> usize {
    let removed = old.iter().filter(|id| !new.contains(id)).count();
    let added = new.iter().filter(|id| !old.contains(id)).count();
    removed + added
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeOp::*;

    fn config(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: voters.to_vec(),
            voters_outgoing: Vec::new(),
            learners: learners.to_vec(),
        }
    }

    #[test]
    fn simple_changes_touch_at_most_one_voter() {
        let c = config(&[1, 2, 3], &[4, 5]);
        assert_eq!(
            ConfChange::simple(AddLearner(6)).apply(&c),
            Ok(config(&[1, 2, 3], &[4, 5, 6]))
        );
        assert_eq!(
            ConfChange::simple(Promote(4)).apply(&c),
            Ok(config(&[1, 2, 3, 4], &[5]))
        );
        assert_eq!(
            ConfChange::simple(Remove(2)).apply(&c),
            Ok(config(&[1, 3], &[4, 5]))
        );
        // Learners do not count as voter changes.
        let many = ConfChange {
            ops: vec![Remove(5), AddLearner(7), Promote(4)],
            mode: ConfChangeMode::Simple,
        };
        assert_eq!(many.apply(&c), Ok(config(&[1, 2, 3, 4], &[7])));
        let two = ConfChange {
            ops: vec![Promote(4), Promote(5)],
            mode: ConfChangeMode::Simple,
        };
        assert_eq!(
            two.apply(&c),
            Err(ConfChangeError::SimpleChangesTooMany { voters_changed: 2 })
        );
        let replace = ConfChange {
            ops: vec![Promote(4), Remove(1)],
            mode: ConfChangeMode::Simple,
        };
        assert_eq!(
            replace.apply(&c),
            Err(ConfChangeError::SimpleChangesTooMany { voters_changed: 2 })
        );
    }

    #[test]
    fn joint_changes_keep_the_old_voters_as_outgoing() {
        let c = config(&[1, 2, 3], &[4, 5]);
        let replace = ConfChange::joint(vec![Promote(4), Promote(5), Remove(1), Remove(2)]);
        let joint = replace.apply(&c).unwrap();
        assert_eq!(joint.voters, vec![3, 4, 5]);
        assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);
        assert!(joint.learners.is_empty());
        assert_eq!(joint.leave_joint(), config(&[3, 4, 5], &[]));
        assert_eq!(
            ConfChange::joint(vec![Remove(3)]).apply(&joint),
            Err(ConfChangeError::InJoint)
        );
    }

    #[test]
    fn bad_changes_are_refused_with_a_reason() {
        let c = config(&[1, 2, 3], &[4]);
        let refuse = |ops: Vec<ConfChangeOp>| ConfChange::joint(ops).apply(&c).unwrap_err();
        assert_eq!(refuse(vec![]), ConfChangeError::Empty);
        assert_eq!(refuse(vec![AddLearner(0)]), ConfChangeError::ZeroId);
        assert_eq!(
            refuse(vec![AddLearner(2)]),
            ConfChangeError::AlreadyMember(2)
        );
        assert_eq!(
            refuse(vec![AddLearner(4)]),
            ConfChangeError::AlreadyMember(4)
        );
        assert_eq!(refuse(vec![Promote(1)]), ConfChangeError::NotLearner(1));
        assert_eq!(refuse(vec![Promote(9)]), ConfChangeError::NotLearner(9));
        assert_eq!(refuse(vec![Remove(9)]), ConfChangeError::NotMember(9));
        assert_eq!(
            refuse(vec![AddLearner(5), Remove(5)]),
            ConfChangeError::Repeated(5)
        );
        assert_eq!(
            refuse(vec![Remove(1), Remove(2), Remove(3)]),
            ConfChangeError::NoVoters
        );
    }

    #[test]
    fn configurations_round_trip_through_entry_bytes() {
        let joint = ConfChange::joint(vec![Promote(4), Remove(1)])
            .apply(&config(&[1, 2, 3], &[4]))
            .unwrap();
        assert_eq!(Membership::decode(&joint.encode()), Ok(joint.clone()));
        assert!(Membership::decode(&[0xff, 0xff]).is_err());
        let mut bytes = joint.encode();
        bytes.push(0);
        assert!(Membership::decode(&bytes).is_err());
        // Structurally invalid: a node both voter and learner.
        let bad = Membership {
            voters: vec![1],
            voters_outgoing: vec![],
            learners: vec![1],
        };
        assert!(Membership::decode(&bad.encode()).is_err());
    }
}
