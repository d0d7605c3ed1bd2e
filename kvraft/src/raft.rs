//! The protocol: roles, elections, replication, commitment, reads, snapshots and leadership
//! transfer. Inputs arrive through `step`, `tick`, `propose`, `read_index`; effects are queued in
//! `messages` / `messages_after_persist` and the log's marks, which `RawNode` turns into `Ready`.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::confchange::ConfChange;
use super::config::Config;
use super::log::RaftLog;
use super::message::{
    Entry, EntryKind, HardState, Index, Membership, Message, MessageBody, NodeId, RejectHint,
    SnapshotMeta, Term,
};
use super::progress::{Progress, ProgressState};
use super::quorum::{self, VoteResult};
use super::read_only::{ReadContext, ReadOnly, ReadState};
use super::rng::Rng;
use super::{EntriesToLoad, ProposeError, ReadIndexError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug)]
pub struct Raft {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) leader: NodeId,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    /// The configuration in force: the newest `EntryKind::Config` entry in the log, else the
    /// snapshot's, else the bootstrap one. It takes effect when appended (thesis §4.1), so it
    /// may be uncommitted, and it reverts if that entry is truncated.
    pub(crate) membership: Membership,
    /// The index of the entry that made `membership` (0: bootstrap). A change is pending while
    /// it is above the commit index.
    pub(crate) membership_index: Index,
    /// Leader only: one entry per member (voters and learners), this node included, plus nodes
    /// removed by a change that has not committed yet (they still get the log, so that they
    /// learn of their removal, but count in no quorum).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Candidate and pre-candidate: the votes received.
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    rng: Rng,
    read_only: ReadOnly,
    /// Leadership transfer in progress to this node (0: none).
    pub(crate) transferee: NodeId,
    /// Bytes of entries appended by this leader and not yet committed.
    uncommitted_bytes: u64,
    /// Messages that may leave at once.
    pub(crate) messages: Vec<Message>,
    /// Messages that may leave only after everything handed out for persisting is durable.
    pub(crate) messages_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) dropped_reads: Vec<ReadContext>,
    /// A snapshot received from the leader that the caller must install.
    pub(crate) pending_snapshot: Option<SnapshotMeta>,
    /// Evicted entries a follower needs, for the caller to read from the WAL.
    pub(crate) entries_to_load: Vec<EntriesToLoad>,
    /// The highest commit index a leader's append carried (its own, not capped by what we
    /// hold): how far behind a follower catching up is.
    pub(crate) leader_commit: Index,
}

impl Raft {
    pub fn new(
        config: Config,
        hard_state: HardState,
        log: RaftLog,
        membership: (Membership, Index),
        seed: u64,
    ) -> Raft {
        let (membership, membership_index) = membership;
        let mut raft = Raft {
            id: config.id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: 0,
            role: Role::Follower,
            log,
            membership,
            membership_index,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            rng: Rng::new(seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            read_only: ReadOnly::default(),
            transferee: 0,
            uncommitted_bytes: 0,
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            pending_snapshot: None,
            entries_to_load: Vec::new(),
            leader_commit: 0,
            config,
        };
        raft.reset_randomized_election_timeout();
        raft
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Voters campaign; learners and nodes outside the configuration do not. One exception:
    /// a node removed by an entry it does not know to be committed (thesis §4.2.2). The others
    /// may still be in the configuration before it and need this node, whose log may be the
    /// only complete one (a removed leader deposed before its C_new committed): it may
    /// campaign, counting votes in its own configuration, where it has no vote. Once it
    /// learns the entry committed, it stays quiet for good.
    fn promotable(&self) -> bool {
        if self.membership.contains(self.id) {
            return true;
        }
        self.membership_index > self.log.committed
            && self
                .membership_at(self.membership_index - 1)
                .0
                .contains(self.id)
    }

    /// The voters to ask for votes (both halves of a joint configuration).
    fn voter_peers(&self) -> Vec<NodeId> {
        let mut voters = self.membership.voters.clone();
        voters.extend_from_slice(&self.membership.voters_outgoing);
        voters.sort_unstable();
        voters.dedup();
        voters.retain(|&id| id != self.id);
        voters
    }

    /// Leader: everyone it replicates to (voters, learners, nodes being removed).
    fn peers(&self) -> Vec<NodeId> {
        let id = self.id;
        self.progress.keys().copied().filter(|&p| p != id).collect()
    }

    fn new_progress(&self) -> Progress {
        let mut progress = Progress::new(
            self.log.last_index() + 1,
            self.config.inflight_messages_max,
            self.config.inflight_bytes_max,
        );
        // Counted as heard from: a new member gets its first append (or snapshot) at once, and
        // check-quorum gives it a full election timeout.
        progress.recent_active = true;
        progress
    }

    // ---------------------------------------------------------------- configuration

    /// The configuration in force at `index` and the index of the entry that made it.
    pub(crate) fn membership_at(&self, index: Index) -> (Membership, Index) {
        let mut at = index;
        while let Some((config_index, data)) = self.log.config_at_or_below(at) {
            if let Ok(membership) = Membership::decode(data) {
                return (membership, config_index);
            }
            at = config_index - 1;
        }
        let snapshot = self.log.snapshot();
        (snapshot.membership.clone(), snapshot.membership_index)
    }

    /// Entries from `first` on were just appended (replacing any suffix from there): the
    /// configuration is the newest config entry among them, or, if the entry that made ours
    /// was replaced, the newest one before `first`.
    fn on_log_appended(&mut self, first: Index) {
        let last = self.log.last_index();
        let newest = (first..=last).rev().find_map(|index| {
            let entry = self.log.entry(index)?;
            let membership = (entry.kind == EntryKind::Config)
                .then(|| Membership::decode(&entry.data).ok())
                .flatten()?;
            Some((membership, index))
        });
        if let Some((membership, index)) = newest {
            self.set_membership(membership, index);
        } else if self.membership_index >= first {
            let (membership, index) = self.membership_at(first - 1);
            self.set_membership(membership, index);
        }
    }

    fn set_membership(&mut self, membership: Membership, index: Index) {
        self.membership = membership;
        self.membership_index = index;
        match self.role {
            Role::Leader => {
                for id in self.membership.members() {
                    if !self.progress.contains_key(&id) {
                        let progress = self.new_progress();
                        self.progress.insert(id, progress);
                    }
                }
                if self.transferee != 0 && !self.membership.contains(self.transferee) {
                    self.transferee = 0;
                }
            }
            Role::Candidate | Role::PreCandidate if !self.promotable() => {
                self.become_follower(self.term, 0);
            }
            _ => {}
        }
    }

    /// Leader: the commit index moved. Once the configuration's entry is committed, nodes
    /// outside it are forgotten, a joint configuration is left (auto-leave: C_new is appended),
    /// and a leader that is no longer a voter hands over and steps down (thesis §4.2.2).
    fn on_commit_advanced(&mut self) {
        if self.role != Role::Leader || self.membership_index > self.log.committed {
            return;
        }
        let id = self.id;
        self.release_removed();
        if self.membership.is_joint() {
            let next = self.membership.leave_joint();
            self.append_entries(vec![(EntryKind::Config, Bytes::from(next.encode()))]);
            self.broadcast_append();
        } else if !self.membership.contains(id) {
            self.step_down_removed();
        }
    }

    /// Leader: nodes that the committed configuration removed are forgotten once they hold its
    /// entry. Their last message is a heartbeat whose commit index covers that entry, so they
    /// learn that their removal is final and never campaign again (see `promotable`).
    fn release_removed(&mut self) {
        if self.role != Role::Leader || self.membership_index > self.log.committed {
            return;
        }
        let (id, at) = (self.id, self.membership_index);
        let done: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&peer, p)| {
                peer != id && !self.membership.is_member(peer) && p.match_index >= at
            })
            .map(|(&peer, p)| (peer, p.match_index))
            .collect();
        for (peer, matched) in done {
            let commit = self.log.committed.min(matched);
            let read_round = 0;
            self.send(peer, MessageBody::Heartbeat { commit, read_round });
            self.progress.remove(&peer);
        }
    }

    /// A leader removed from the configuration: the most caught-up voter campaigns at once
    /// (TimeoutNow) rather than after an election timeout; then this node follows no one.
    fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let target = self
            .membership
            .voters
            .iter()
            .filter_map(|&peer| self.progress.get(&peer).map(|p| (p.match_index, peer)))
            .max();
        if let Some((matched, peer)) = target {
            if matched == last {
                self.send(peer, MessageBody::TimeoutNow);
            }
        }
        self.become_follower(self.term, 0);
    }

    fn reset_randomized_election_timeout(&mut self) {
        let base = self.config.election_timeout_ticks;
        self.randomized_election_timeout = base + self.rng.below(base);
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.messages.push(message);
    }

    /// Sends only once the hard state and entries handed out so far are durable: votes and
    /// append acknowledgements are promises about durable state (see proto-docs/raft.md).
    fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.messages_after_persist.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    // ---------------------------------------------------------------- role transitions

    fn reset(&mut self, term: Term) {
        if self.term != term {
            assert!(term > self.term, "term must not go backwards");
            self.term = term;
            self.vote = 0;
        }
        self.leader = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.transferee = 0;
        self.uncommitted_bytes = 0;
        self.dropped_reads.extend(self.read_only.reset());
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "leader cannot become pre-candidate"
        );
        // Pre-vote changes neither term nor vote: a failed pre-vote leaves no trace.
        self.votes.clear();
        self.role = Role::PreCandidate;
        self.leader = 0;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "leader cannot become candidate");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let mut members = self.membership.members();
        members.push(self.id);
        for id in members {
            let mut progress = self.new_progress();
            if id == self.id {
                progress.match_index = self.log.stable;
                progress.state = ProgressState::Replicate;
            }
            self.progress.insert(id, progress);
        }
        // Raft §5.4.2 / Figure 8: entries of earlier terms are committed only indirectly, by
        // committing an entry of this term; the no-op makes that happen without client traffic.
        self.append_entries(vec![(EntryKind::Noop, Bytes::new())]);
        self.broadcast_append();
    }

    // ---------------------------------------------------------------- ticks

    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            self.expire_loads();
            if self.config.check_quorum && !self.quorum_active() {
                self.become_follower(self.term, 0);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.transferee = 0;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Gives up reads of evicted entries (`request_entries`) the driver has not answered within
    /// one to two election timeouts, so that replication to the follower does not hang on a
    /// driver that lost one: the next append asks again, and a late answer is ignored unless
    /// it answers that new read.
    fn expire_loads(&mut self) {
        for progress in self.progress.values_mut() {
            if progress.loading.is_none() {
                continue;
            }
            if progress.loading_round_passed {
                progress.loading = None;
            }
            progress.loading_round_passed = !progress.loading_round_passed;
        }
    }

    /// Check-quorum: did a quorum of the configuration (this node included if it votes) talk
    /// to us since the last check? In a joint configuration, a majority of each half.
    fn quorum_active(&mut self) -> bool {
        let id = self.id;
        let progress = &self.progress;
        let active = quorum::has_quorum(&self.membership, |peer| {
            peer == id || progress.get(&peer).is_some_and(|p| p.recent_active)
        });
        for progress in self.progress.values_mut() {
            progress.previously_active = progress.recent_active;
            progress.recent_active = false;
        }
        active
    }

    // ---------------------------------------------------------------- elections

    /// Starts an election: a pre-vote round first when configured, unless `transfer` (a
    /// leadership transfer asks for an immediate real election).
    pub(crate) fn campaign(&mut self, transfer: bool) {
        if !self.promotable() {
            return;
        }
        let pre_vote = self.config.pre_vote && !transfer;
        let term = if pre_vote {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        self.votes.insert(self.id, true);
        if self.votes_won() {
            self.on_election_won(pre_vote, transfer);
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        for peer in self.voter_peers() {
            let body = MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer,
            };
            if pre_vote {
                self.messages.push(Message {
                    from: self.id,
                    to: peer,
                    term,
                    body,
                });
            } else {
                // Our own vote must be durable before anyone can count on this election.
                self.send_after_persist(peer, term, body);
            }
        }
    }

    /// Votes count only from voters of our configuration; in a joint one, both halves must
    /// grant a majority.
    fn vote_result(&self) -> VoteResult {
        quorum::vote_result(&self.membership, |id| self.votes.get(&id).copied())
    }

    fn votes_won(&self) -> bool {
        self.vote_result() == VoteResult::Won
    }

    fn votes_lost(&self) -> bool {
        self.vote_result() == VoteResult::Lost
    }

    fn on_election_won(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.campaign_real(transfer);
        } else {
            self.become_leader();
        }
    }

    fn campaign_real(&mut self, transfer: bool) {
        self.become_candidate();
        self.votes.insert(self.id, true);
        if self.votes_won() {
            self.become_leader();
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        let term = self.term;
        for peer in self.voter_peers() {
            let body = MessageBody::VoteRequest {
                pre_vote: false,
                last_log_index,
                last_log_term,
                transfer,
            };
            self.send_after_persist(peer, term, body);
        }
    }

    fn handle_vote_request(&mut self, m: &Message, pre_vote: bool, last: (Index, Term)) {
        // We may vote again for the same candidate (a retried request), or for anyone when we
        // have not voted and know no leader in this term; a pre-vote for a later term is granted
        // on the log check alone.
        let can_vote = self.vote == m.from
            || (self.vote == 0 && self.leader == 0)
            || (pre_vote && m.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last.0, last.1);
        let body = MessageBody::VoteResponse { pre_vote, granted };
        if pre_vote {
            // A granted pre-vote answers in the requested term so the candidate can count it; a
            // refusal carries our term so a stale candidate catches up.
            let term = if granted { m.term } else { self.term };
            self.messages.push(Message {
                from: self.id,
                to: m.from,
                term,
                body,
            });
            return;
        }
        if granted {
            self.election_elapsed = 0;
            self.vote = m.from;
        }
        self.send_after_persist(m.from, self.term, body);
    }

    fn handle_vote_response(&mut self, m: &Message, pre_vote: bool, granted: bool) {
        let expected = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return;
        }
        self.votes.entry(m.from).or_insert(granted);
        if self.votes_won() {
            self.on_election_won(pre_vote, false);
        } else if self.votes_lost() {
            self.become_follower(self.term, 0);
        }
    }

    // ---------------------------------------------------------------- step

    pub fn step(&mut self, m: Message) {
        if !self.step_term(&m) {
            return;
        }
        match m.body {
            MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(&m, pre_vote, (last_log_index, last_log_term)),
            MessageBody::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(&m, pre_vote, granted)
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    /// Term bookkeeping common to all roles (Raft §5.1). Returns whether to go on with `m`.
    ///
    /// Messages from nodes outside our configuration are stepped too: a leader may know a
    /// configuration we have not received yet (we may be a new learner with none at all), and
    /// a node we removed may need to hear its new term. What they say counts in no quorum.
    fn step_term(&mut self, m: &Message) -> bool {
        if m.term > self.term {
            return self.step_higher_term(m);
        }
        if m.term < self.term {
            self.step_lower_term(m);
            return false;
        }
        true
    }

    fn step_higher_term(&mut self, m: &Message) -> bool {
        match m.body {
            MessageBody::VoteRequest {
                pre_vote, transfer, ..
            } => {
                // Leader lease (thesis §4.2.3): while we hear from a live leader, a candidate
                // that cannot reach it must not depose it.
                let in_lease = self.config.check_quorum
                    && self.leader != 0
                    && self.election_elapsed < self.config.election_timeout_ticks;
                if in_lease && !transfer {
                    return false;
                }
                if pre_vote {
                    return true; // A pre-vote never changes our term.
                }
                self.become_follower(m.term, 0);
                true
            }
            MessageBody::VoteResponse {
                pre_vote: true,
                granted: true,
            } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, m.from);
                true
            }
            _ => {
                self.become_follower(m.term, 0);
                true
            }
        }
    }

    fn step_lower_term(&mut self, m: &Message) {
        match m.body {
            // A leader cut off from us (or a stale one after a partition) learns the new term
            // and steps down. Without this, with check-quorum or pre-vote, it could keep a
            // follower from ever electing.
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                self.send(
                    m.from,
                    MessageBody::AppendResponse {
                        index: 0,
                        reject: None,
                    },
                );
            }
            MessageBody::VoteRequest { pre_vote: true, .. } => {
                let body = MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: false,
                };
                self.send(m.from, body);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_log_index, prev_log_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send(m.from, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::InstallSnapshot { meta } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m.from, meta);
            }
            MessageBody::TimeoutNow => self.campaign(true),
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // Someone won this term: follow it.
                self.become_follower(self.term, m.from);
                self.step_follower(m);
            }
            _ => {}
        }
    }

    fn step_leader(&mut self, m: Message) {
        if let Some(progress) = self.progress.get_mut(&m.from) {
            progress.recent_active = true;
        }
        match m.body {
            MessageBody::AppendResponse { index, reject } => {
                self.handle_append_response(m.from, index, reject)
            }
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(m.from, read_round)
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- follower replication

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
        commit: Index,
    ) {
        let term = self.term;
        let bad_config =
            |e: &Entry| e.kind == EntryKind::Config && Membership::decode(&e.data).is_err();
        if entries.iter().any(bad_config) {
            // Not a configuration any leader of ours writes: refuse the whole message rather
            // than run with a configuration that differs from the leader's.
            return;
        }
        self.leader_commit = self.leader_commit.max(commit);
        if prev_index < self.log.committed {
            let body = MessageBody::AppendResponse {
                index: self.log.committed,
                reject: None,
            };
            self.send_after_persist(from, term, body);
            return;
        }
        if !self.log.match_term(prev_index, prev_term) {
            let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
            let reject = Some(RejectHint {
                index: hint_index,
                term: hint_term,
            });
            let body = MessageBody::AppendResponse {
                index: prev_index,
                reject,
            };
            self.send_after_persist(from, term, body);
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(entries) {
            assert!(
                conflict > self.log.committed,
                "conflict with committed entry {conflict}"
            );
            let start = (conflict - prev_index - 1) as usize;
            self.log.append(&entries[start..]);
            self.on_log_appended(conflict);
        }
        self.log.commit_to(commit.min(last_new));
        let body = MessageBody::AppendResponse {
            index: last_new,
            reject: None,
        };
        self.send_after_persist(from, term, body);
    }

    fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let term = self.term;
        let index = if meta.last_index <= self.log.committed {
            self.log.committed
        } else if self.log.match_term(meta.last_index, meta.last_term) {
            // We already hold the snapshot's last entry: it is committed, so commit to it.
            self.log.commit_to(meta.last_index);
            meta.last_index
        } else {
            let index = meta.last_index;
            self.log.restore(meta.clone());
            self.set_membership(meta.membership.clone(), meta.membership_index);
            self.pending_snapshot = Some(meta);
            index
        };
        self.send_after_persist(
            from,
            term,
            MessageBody::AppendResponse {
                index,
                reject: None,
            },
        );
    }

    // ---------------------------------------------------------------- leader replication

    fn append_entries(&mut self, items: Vec<(EntryKind, Bytes)>) -> Index {
        let mut index = self.log.last_index();
        let term = self.term;
        let entries: Vec<Entry> = items
            .into_iter()
            .map(|(kind, data)| {
                index += 1;
                Entry {
                    term,
                    index,
                    kind,
                    data,
                }
            })
            .collect();
        self.uncommitted_bytes += entries.iter().map(Entry::size_bytes).sum::<u64>();
        let first = self.log.last_index() + 1;
        self.log.append(&entries);
        self.on_log_appended(first);
        // A single-node cluster commits as soon as its own persist is reported.
        index
    }

    pub fn propose(&mut self, commands: Vec<Bytes>) -> Result<(Index, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        if self.transferee != 0 {
            return Err(ProposeError::TransferInProgress);
        }
        let mut bytes = 0;
        for command in &commands {
            let size = command.len() as u64;
            if size > self.config.entry_bytes_max {
                let max = self.config.entry_bytes_max;
                return Err(ProposeError::TooLarge { bytes: size, max });
            }
            bytes += size + super::message::ENTRY_OVERHEAD_BYTES;
        }
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max
        {
            return Err(ProposeError::Busy);
        }
        let last = self.append_entries(
            commands
                .into_iter()
                .map(|d| (EntryKind::Normal, d))
                .collect(),
        );
        self.broadcast_append();
        Ok((last, self.term))
    }

    /// Proposes a configuration change (module `confchange`). Refused unless this leader has
    /// committed an entry of its term (the fix to the single-server change bug, thesis §4.1 /
    /// raft-dev 2015) and the previous change is committed. The configuration takes effect on
    /// this leader as soon as the entry is appended.
    pub fn propose_conf_change(
        &mut self,
        change: &ConfChange,
    ) -> Result<(Index, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        if self.transferee != 0 {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            return Err(ProposeError::NoCommitInTerm);
        }
        if self.membership_index > self.log.committed || self.membership.is_joint() {
            return Err(ProposeError::ConfChangePending {
                index: self.membership_index,
            });
        }
        let next = change.apply(&self.membership)?;
        let last = self.append_entries(vec![(EntryKind::Config, Bytes::from(next.encode()))]);
        self.broadcast_append();
        Ok((last, self.term))
    }

    fn leader_hint(&self) -> Option<NodeId> {
        (self.leader != 0).then_some(self.leader)
    }

    fn broadcast_append(&mut self) {
        for peer in self.peers() {
            self.send_append(peer, true);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let read_round = self.read_only.current_round();
        for peer in self.peers() {
            let matched = self.progress.get(&peer).map_or(0, |p| p.match_index);
            // Never tell a follower to commit past what it is known to match: its log beyond
            // that point may still hold entries of an old term.
            let commit = self.log.committed.min(matched);
            self.send(peer, MessageBody::Heartbeat { commit, read_round });
        }
    }

    /// Sends the follower what it needs next: entries, an empty probe, or the snapshot. Returns
    /// whether a message was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next_index;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            return self.send_snapshot(to);
        };
        if next < self.log.first_index() {
            return self.send_snapshot(to);
        }
        if progress.snapshot_installing.is_some() {
            // The follower is decoding the snapshot we streamed and takes no entries until it
            // installed it: an empty probe (answered once it did) instead of entries it drops,
            // read back from the WAL at every heartbeat answer (`bench scale`: a megabyte read
            // and sent ten times a second for the 9 s of a decode).
            if !send_if_empty {
                return false;
            }
            self.send_entries(to, prev_index, prev_term, Vec::new());
            return true;
        }
        if next < self.log.memory_first_index() {
            return self.request_entries(to, next);
        }
        let entries = if next <= self.log.last_index() {
            self.log
                .entries_from(next, self.config.append_batch_bytes_max)
        } else {
            Vec::new()
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        self.send_entries(to, prev_index, prev_term, entries);
        true
    }

    /// The follower needs entries evicted from memory (`RaftLog::evict`): asks the driver to
    /// read them from the WAL (`Ready::entries_to_load`), one read per follower at a time
    /// (what a read in flight holds is bounded, whatever the follower answers meanwhile).
    /// The append goes out when they arrive (`entries_loaded`). Sends nothing now.
    fn request_entries(&mut self, to: NodeId, low: Index) -> bool {
        let Some(progress) = self.progress.get_mut(&to) else {
            return false;
        };
        if progress.loading.is_some() {
            return false;
        }
        progress.loading = Some(low);
        progress.loading_round_passed = false;
        let high = self.log.memory_first_index() - 1;
        self.entries_to_load.push(EntriesToLoad {
            to,
            low,
            high,
            terms: self.log.evicted_terms_between(low, high),
            bytes_max: self.config.append_batch_bytes_max,
        });
        false
    }

    /// The driver read the entries of `request_entries(to, low)` back from the WAL (none if it
    /// could not). Sends those that are still our log, if the follower still needs them;
    /// otherwise the next heartbeat answer asks again.
    pub fn entries_loaded(&mut self, to: NodeId, low: Index, mut entries: Vec<Entry>) {
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        if progress.loading != Some(low) {
            return;
        }
        progress.loading = None;
        if self.role != Role::Leader || progress.is_paused() {
            return;
        }
        if progress.next_index != low {
            // The follower moved on while we read: ask for what it needs now.
            self.send_append(to, false);
            return;
        }
        // Our log may have moved on meanwhile (a compaction): only entries it still holds, in
        // order from `low`, with its terms.
        let log = &self.log;
        let valid = (entries.iter().enumerate())
            .take_while(|(offset, e)| {
                e.index == low + *offset as u64
                    && e.index >= log.first_index()
                    && log.term(e.index) == Some(e.term)
            })
            .count();
        entries.truncate(valid);
        let Some(prev_term) = self.log.term(low - 1) else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        self.send_entries(to, low - 1, prev_term, entries);
        while self.send_append(to, false) {}
    }

    /// Sends an append of `entries` (possibly none) after `prev_index` and records it in the
    /// follower's progress.
    fn send_entries(
        &mut self,
        to: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
    ) {
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last = entries.last().map_or(prev_index, |e| e.index);
        if let Some(progress) = self.progress.get_mut(&to) {
            if entries.is_empty() {
                if progress.state == ProgressState::Probe {
                    progress.probe_sent = true;
                }
            } else {
                progress.sent_entries(last, bytes);
            }
        }
        let commit = self.log.committed;
        let body = MessageBody::Append {
            prev_log_index: prev_index,
            prev_log_term: prev_term,
            entries,
            commit,
        };
        self.send(to, body);
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self.log.snapshot().clone();
        if let Some(progress) = self.progress.get_mut(&to) {
            if !progress.recent_active {
                // Do not stream a snapshot to a node that may be down; a heartbeat answer will
                // set recent_active and the next attempt goes ahead.
                return false;
            }
            progress.become_snapshot(meta.last_index);
        }
        self.send(to, MessageBody::InstallSnapshot { meta });
        true
    }

    fn handle_append_response(&mut self, from: NodeId, index: Index, reject: Option<RejectHint>) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if let Some(hint) = reject {
            let (hint_index, _) = self.log.find_conflict_by_term(hint.index, hint.term);
            if progress.rejected_at_match(index, hint.index) {
                // Our log may be compacted below the follower's: `hint_index` is then our
                // snapshot, which the follower does not have.
                progress.restart_from(hint.index.min(hint_index));
                self.send_append(from, true);
                return;
            }
            if progress.maybe_decrease_to(index, hint_index) {
                self.send_append(from, true);
            }
            return;
        }
        if !progress.maybe_update(index) {
            // Old news (or the reply to a stale leader's append); nothing to do but keep going.
            if progress.state == ProgressState::Probe
                && progress.match_index < self.log.last_index()
            {
                self.send_append(from, false);
            }
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot { pending_index } if progress.match_index >= pending_index => {
                progress.become_probe();
                progress.become_replicate();
            }
            ProgressState::Replicate => progress.inflights.free_to(index),
            ProgressState::Snapshot { .. } => {}
        }
        // A new commit index travels with the next append or heartbeat; no empty appends are
        // sent just for it, which halves the message count under load.
        self.maybe_commit();
        while self.send_append(from, false) {}
        if self.transferee == from
            && self.progress.get(&from).map(|p| p.match_index) == Some(self.log.last_index())
        {
            self.send(from, MessageBody::TimeoutNow);
        }
        if !self.membership.is_member(from) {
            self.release_removed();
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        if let Some(progress) = self.progress.get_mut(&from) {
            progress.probe_sent = false;
            // Appends (or their answers) may have been lost: free one slot of a full window so
            // that one more append goes out. If it leaves a gap the follower rejects it and we
            // fall back to probing; if only answers were lost it is acknowledged in full.
            if progress.state == ProgressState::Replicate && progress.inflights.full() {
                progress.inflights.free_first();
            }
            let behind = progress.match_index < self.log.last_index();
            if behind {
                self.send_append(from, true);
            }
        }
        if read_round > 0 && self.read_only.pending_count() > 0 {
            let membership = &self.membership;
            let ready = self.read_only.ack(from, read_round, |acks| {
                quorum::has_quorum(membership, |id| acks.contains(&id))
            });
            self.read_states.extend(ready);
        }
    }

    /// Advances the commit index to the highest index a majority has durably stored, if that
    /// entry is of the current term (Raft §5.4.2). Returns whether it moved.
    /// The quorum is the configuration's (both halves when joint); a leader that is not a
    /// voter of it does not count itself.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let candidate = quorum::committed_index(&self.membership, |id| {
            progress.get(&id).map_or(0, |p| p.match_index)
        });
        if candidate <= self.log.committed || self.log.term(candidate) != Some(self.term) {
            return false;
        }
        let old = self.log.committed;
        self.log.commit_to(candidate);
        let freed: u64 = ((old + 1)..=candidate)
            .filter_map(|i| self.log.entry(i))
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        self.on_commit_advanced();
        true
    }

    /// The caller made the log durable up to `(index, term)`.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if !self.log.on_persisted(index, term) || self.role != Role::Leader {
            return;
        }
        let stable = self.log.stable;
        if let Some(progress) = self.progress.get_mut(&self.id) {
            progress.match_index = progress.match_index.max(stable);
            progress.next_index = progress.match_index + 1;
        }
        self.maybe_commit();
    }

    // ---------------------------------------------------------------- reads, snapshots, transfer

    pub fn read_index(&mut self, context: ReadContext) -> Result<(), ReadIndexError> {
        if self.role != Role::Leader {
            return Err(ReadIndexError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        // Until an entry of this term commits, our commit index may lag the cluster's.
        if self.log.term(self.log.committed) != Some(self.term) {
            return Err(ReadIndexError::NoCommitInTerm);
        }
        if self.read_only.pending_count() >= self.config.read_pending_max {
            return Err(ReadIndexError::Busy);
        }
        let index = self.log.committed;
        let id = self.id;
        if quorum::has_quorum(&self.membership, |peer| peer == id) {
            self.read_states.push(ReadState { index, context });
            return Ok(());
        }
        self.read_only.add(context, index, self.id);
        self.broadcast_heartbeat();
        Ok(())
    }

    /// The transport's outcome of streaming a snapshot to `to`.
    /// The transport saw `peer` come back as a new process. It may have lost its disk (and with
    /// it entries it acknowledged): probe it at its match index, whose rejection makes us start
    /// over (`Progress::rejected_at_match`). Without this, a wiped follower of an idle leader
    /// is only noticed at the next write: heartbeats do not check logs. A follower that kept
    /// its disk just acknowledges the probe.
    pub fn report_restarted(&mut self, peer: NodeId) {
        if self.role != Role::Leader || peer == self.id {
            return;
        }
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        if matches!(progress.state, ProgressState::Snapshot { .. }) {
            return;
        }
        progress.become_probe();
        self.send_append(peer, true);
    }

    pub fn follower_behind(&self, index: Index) -> bool {
        self.role == Role::Leader
            && (self.progress.iter()).any(|(&peer, progress)| {
                // Active: heard from in this check-quorum round or the one before (a
                // follower busy installing a large state may be silent for a while; measured
                // with `bench scale`), or being sent a snapshot, or decoding one it got (a
                // stream to a follower that went away fails). The caller bounds how long it
                // waits anyway.
                let streaming = matches!(progress.state, ProgressState::Snapshot { .. });
                let installing = progress.snapshot_installing.is_some();
                let active = progress.recent_active || progress.previously_active;
                peer != self.id
                    && (active || streaming || installing)
                    && progress.match_index < index
            })
    }

    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        if !matches!(progress.state, ProgressState::Snapshot { .. }) {
            return;
        }
        if success {
            if let ProgressState::Snapshot { pending_index } = progress.state {
                progress.snapshot_installing = Some(pending_index);
            }
            // Resumes after the snapshot's last index.
            progress.become_probe();
        } else {
            progress.state = ProgressState::Probe;
            progress.become_probe();
        }
        // Wait for the follower's append response (or a heartbeat answer) before probing.
        progress.probe_sent = true;
    }

    pub fn compact(&mut self, meta: SnapshotMeta) -> Vec<Entry> {
        self.log.compact(meta)
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        if to == self.id || !self.membership.contains(to) {
            return Ok(());
        }
        self.transferee = to;
        self.election_elapsed = 0;
        let caught_up =
            self.progress.get(&to).map(|p| p.match_index) == Some(self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    pub fn read_round(&self) -> u64 {
        self.read_only.current_round()
    }
}
