//! Cluster membership as clients and operators see it: the requests that change it
//! (`MemberOp`), the list a node answers (`MemberList`), and where the peer address of a node
//! added at runtime is kept.
//!
//! The Raft configuration (`kvraft::Membership`) holds node ids only. The address of a node
//! added with `member add` travels in the log as an ordinary state-machine write to a reserved
//! key (`member_address_key`), proposed just before the configuration entry that adds the
//! node, so every replica, one restored from a snapshot or restarted later included, has it
//! by the time it applies the change. Clients may not read or write reserved keys.

use serde::{Deserialize, Serialize};

use super::{Index, NodeId};

/// Keys starting with this byte string belong to the nodes; clients get `BadRequest`.
pub const RESERVED_KEY_PREFIX: &[u8] = b"\0kvnode/";
/// Largest peer address text (`IP:PORT`) a `member add` may carry, in bytes.
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 256;

/// The reserved key holding the peer address of node `id`.
pub fn member_address_key(id: NodeId) -> Vec<u8> {
    let mut key = RESERVED_KEY_PREFIX.to_vec();
    key.extend_from_slice(format!("member/{id}/address").as_bytes());
    key
}

/// Whether a client key is reserved for the nodes.
pub fn is_reserved_key(key: &[u8]) -> bool {
    key.starts_with(RESERVED_KEY_PREFIX)
}

/// A change of membership, one node at a time (etcd's `member add|promote|remove`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberOp {
    /// Adds node `id` as a learner (non-voting, caught up by log or snapshot), reachable at
    /// `address` (`IP:PORT`, its QUIC address).
    AddLearner { id: NodeId, address: String },
    /// Makes learner `id` a voter.
    Promote { id: NodeId },
    /// Removes voter or learner `id`.
    Remove { id: NodeId },
}

impl MemberOp {
    pub fn node(&self) -> NodeId {
        match self {
            MemberOp::AddLearner { id, .. }
            | MemberOp::Promote { id }
            | MemberOp::Remove { id } => *id,
        }
    }

    /// Whether `list` already shows this change done: the node a member (added), a voter
    /// (promoted), or absent (removed).
    pub fn in_force(&self, list: &MemberList) -> bool {
        let role = (list.members.iter())
            .find(|member| member.id == self.node())
            .map(|member| member.role);
        match self {
            MemberOp::AddLearner { .. } => role.is_some(),
            MemberOp::Promote { .. } => role == Some(MemberRole::Voter),
            MemberOp::Remove { .. } => role.is_none(),
        }
    }
}

impl std::fmt::Display for MemberOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberOp::AddLearner { id, address } => {
                write!(f, "add n{id} at {address} as a learner")
            }
            MemberOp::Promote { id } => write!(f, "promote n{id}"),
            MemberOp::Remove { id } => write!(f, "remove n{id}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Voter,
    Learner,
    /// A voter of the outgoing half of a joint configuration only (being removed).
    OutgoingVoter,
}

impl MemberRole {
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
            MemberRole::OutgoingVoter => "outgoing voter",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub role: MemberRole,
    /// Its peer address as this node knows it (replicated for nodes added at runtime, else
    /// from this node's config file); `None` if unknown here.
    pub address: Option<String>,
    /// On the leader: the highest log index known replicated on it.
    pub match_index: Option<Index>,
}

/// The configuration in force on the answering node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// The node that answered.
    pub node: NodeId,
    pub leader: Option<NodeId>,
    /// The index of the log entry that made this configuration (0: the initial one).
    pub config_index: Index,
    /// Whether that entry is known committed on the answering node.
    pub committed: bool,
    pub members: Vec<MemberInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_in_force_once_the_list_shows_it() {
        let member = |id, role| MemberInfo {
            id,
            role,
            address: None,
            match_index: None,
        };
        let list = MemberList {
            node: 1,
            leader: Some(1),
            config_index: 7,
            committed: true,
            members: vec![member(1, MemberRole::Voter), member(2, MemberRole::Learner)],
        };
        let add = |id| MemberOp::AddLearner {
            id,
            address: "127.0.0.1:1".into(),
        };
        assert!(add(2).in_force(&list) && !add(3).in_force(&list));
        assert!(MemberOp::Promote { id: 1 }.in_force(&list));
        assert!(!MemberOp::Promote { id: 2 }.in_force(&list));
        assert!(MemberOp::Remove { id: 3 }.in_force(&list));
        assert!(!MemberOp::Remove { id: 2 }.in_force(&list));
    }
}
