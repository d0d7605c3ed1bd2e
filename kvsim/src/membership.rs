//! The membership fault: configuration changes proposed on the leader while every other fault
//! goes on. A voter (often the leader) is removed, comes back as a learner, is promoted; two
//! voters change at once in a joint change; a learner replaces a voter. Two-voter changes are
//! first tried as simple (single-step) changes, which the Raft core must refuse: they fall back
//! to joint changes. A core that accepted them would let two disjoint majorities decide, which
//! the invariants catch (`scripts/sim-mutations.sh`, mutation `simple-two-voters`).
//!
//! After the faults stop, changes bring the cluster back to every node a voter, so liveness is
//! checked on the full configuration.

use kvraft::{ConfChange, ConfChangeError, ConfChangeMode, ConfChangeOp, NodeId, ProposeError};

use crate::{Sim, Violation};

impl Sim {
    /// The leader that can take a change now (up and not paused), if any.
    fn change_leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            !n.paused
                && n.core
                    .as_ref()
                    .is_some_and(|c| c.role() == kvraft::Role::Leader)
        })
    }

    /// The voters a configuration keeps at least: a majority of the nodes, and never fewer
    /// than three without pre-vote. Two voters need each other for every election; without
    /// pre-vote the one with the shorter log keeps raising the term and can starve the other
    /// of its vote for hundreds of ticks (seed 11933 before this rule), a liveness limit of
    /// two-voter clusters, not a bug of configuration changes.
    fn voters_min(&self) -> usize {
        let floor = if self.config.pre_vote { 2 } else { 3 };
        (self.nodes.len() / 2 + 1).max(floor)
    }

    /// Proposes one change on the leader: during the faults, any change; afterwards
    /// (`restore`), only changes towards every node being a voter.
    pub(crate) fn conf_change(&mut self, restore: bool) -> Result<(), Violation> {
        let Some(leader) = self.change_leader() else {
            return Ok(());
        };
        let Some(core) = self.nodes[leader].core.as_ref() else {
            return Ok(());
        };
        let membership = core.membership().clone();
        let status = core.status();
        if membership.is_joint() || status.membership_index > status.commit_index {
            return Ok(());
        }
        let leader_id = self.nodes[leader].id;
        let absent: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| !membership.is_member(id))
            .collect();
        let learners = membership.learners.clone();
        let voters = membership.voters.clone();
        let mut choices: Vec<ConfChange> = Vec::new();
        if let Some(&id) = self.pick(&absent) {
            choices.push(ConfChange::simple(ConfChangeOp::AddLearner(id)));
        }
        if let Some(&id) = self.pick(&learners) {
            choices.push(ConfChange::simple(ConfChangeOp::Promote(id)));
        }
        if learners.len() >= 2 {
            // Two voters at once: simple first (must be refused), then joint.
            let ops = vec![
                ConfChangeOp::Promote(learners[0]),
                ConfChangeOp::Promote(learners[1]),
            ];
            choices.push(ConfChange {
                ops,
                mode: ConfChangeMode::Simple,
            });
        }
        if !restore {
            let removable: Vec<NodeId> = if self.rng.chance(self.config.target_leader_per_million) {
                vec![leader_id]
            } else {
                voters.clone()
            };
            if voters.len() > self.voters_min() {
                if let Some(&id) = self.pick(&removable) {
                    choices.push(ConfChange::simple(ConfChangeOp::Remove(id)));
                }
            }
            if voters.len() >= self.voters_min() + 2 {
                let a = voters[self.rng.below(voters.len() as u64) as usize];
                let b = voters[self.rng.below(voters.len() as u64) as usize];
                if a != b {
                    let ops = vec![ConfChangeOp::Remove(a), ConfChangeOp::Remove(b)];
                    let mode = ConfChangeMode::Simple;
                    choices.push(ConfChange { ops, mode });
                }
            }
            if let (Some(&learner), Some(&voter)) = (self.pick(&learners), self.pick(&removable)) {
                // Replace a voter (often the leader) with a caught-up learner.
                let ops = vec![ConfChangeOp::Promote(learner), ConfChangeOp::Remove(voter)];
                let mode = ConfChangeMode::Simple;
                choices.push(ConfChange { ops, mode });
            }
            // A single removal through a joint configuration.
            if voters.len() > self.voters_min() && self.rng.chance(300_000) {
                if let Some(&id) = self.pick(&voters) {
                    let ops = vec![ConfChangeOp::Remove(id)];
                    choices.push(ConfChange::joint(ops));
                }
            }
        }
        if choices.is_empty() {
            return Ok(());
        }
        // Changes of two voters at once are where a core without joint consensus breaks:
        // weigh them three times as likely as the others.
        let two_voters: Vec<ConfChange> = choices
            .iter()
            .filter(|c| c.ops.iter().filter(|op| changes_voters(op)).count() >= 2)
            .cloned()
            .collect();
        for change in two_voters {
            choices.push(change.clone());
            choices.push(change);
        }
        let mut change = choices.swap_remove(self.rng.below(choices.len() as u64) as usize);
        if change.mode == ConfChangeMode::Simple && self.rng.chance(200_000) {
            change.mode = ConfChangeMode::Joint;
        }
        self.propose_change(leader, change)
    }

    fn pick<'a>(&mut self, ids: &'a [NodeId]) -> Option<&'a NodeId> {
        if ids.is_empty() {
            return None;
        }
        ids.get(self.rng.below(ids.len() as u64) as usize)
    }

    fn propose_change(&mut self, leader: usize, change: ConfChange) -> Result<(), Violation> {
        let Some(core) = self.nodes[leader].core.as_mut() else {
            return Ok(());
        };
        let mut result = core.propose_conf_change(&change);
        let mut mode = format!("{:?}", change.mode);
        if let Err(ProposeError::ConfChange(ConfChangeError::SimpleChangesTooMany { .. })) = result
        {
            // The core refused an unsafe single-step change of several voters: go joint.
            self.stats.conf_changes_refused_unsafe += 1;
            mode = "Simple refused as unsafe, then Joint".to_string();
            let joint = ConfChange::joint(change.ops.clone());
            result = core.propose_conf_change(&joint);
        }
        let ops: Vec<String> = change.ops.iter().map(|op| op.to_string()).collect();
        let outcome = match &result {
            Ok((index, term)) => {
                self.stats.conf_changes += 1;
                format!("proposed at {index}/{term}")
            }
            Err(error) => {
                self.stats.conf_changes_refused += 1;
                format!("refused: {error}")
            }
        };
        self.log(|| {
            format!(
                "conf change on n{}: {} ({mode}): {outcome}",
                leader + 1,
                ops.join(", ")
            )
        });
        self.drive(leader)
    }

    /// Whether the leader's configuration is every node a voter, committed.
    pub(crate) fn full_membership(&self) -> bool {
        let Some(leader) = self.change_leader() else {
            return false;
        };
        let Some(core) = self.nodes[leader].core.as_ref() else {
            return false;
        };
        let membership = core.membership();
        let status = core.status();
        !membership.is_joint()
            && membership.learners.is_empty()
            && self.nodes.iter().all(|n| membership.contains(n.id))
            && status.membership_index <= status.commit_index
    }
}

/// Whether an operation adds or removes a voter (removing a learner does not; the simulator
/// only removes voters).
fn changes_voters(op: &ConfChangeOp) -> bool {
    matches!(op, ConfChangeOp::Promote(_) | ConfChangeOp::Remove(_))
}
