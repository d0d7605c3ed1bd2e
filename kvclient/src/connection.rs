//! `Client`: the shared connections, the cached leader, and the attempt loop every request
//! goes through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::duration::format_duration;
use super::session::Session;
use super::{node_name, ClientConfig, ClientError, NodeStatus};
use super::{CONNECTING_WAIT_MS, RECONNECT_INTERVAL_MS};
use kvstate::client_proto::{self, ClientRequest, ClientResponse, RequestKind};
use kvstate::members::{MemberList, MemberOp};
use kvstate::route::Route;
use kvstate::{NodeId, OpResult};
use kvtransport::{ClientConn, TlsMaterial, TransportLimits};

/// Sessions made in this process so far; mixed into every `client_id` so that two clients
/// created in the same nanosecond still get distinct ids.
static SESSIONS_CREATED: AtomicU64 = AtomicU64::new(0);

/// A handle to the cluster. Cheap to clone; clones share connections and the cached leader.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    tls: TlsMaterial,
    node_ids: Vec<NodeId>,
    slots: BTreeMap<NodeId, Slot>,
    /// The leader last seen; 0 when unknown.
    leader: AtomicU64,
    /// Mixed with `SESSIONS_CREATED` into session ids: pid and time, read once at connect.
    id_seed: u64,
    request_bytes_max: usize,
    /// Counts finished dials (either way), so that `wait_connected` wakes on each.
    dialed: tokio::sync::watch::Sender<u64>,
    /// Why the latest failed attempt at each node failed (`n2: connect to ... timed out`).
    last_failures: Mutex<BTreeMap<NodeId, String>>,
}

/// One node's connection, made on first use and remade after it is lost.
struct Slot {
    addr: SocketAddr,
    name: String,
    state: Mutex<SlotState>,
    /// Held while connecting, so concurrent sessions share one handshake.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    connection: Option<Arc<ClientConn>>,
    failed: Option<(Instant, String)>,
}

/// How one attempt failed.
enum AttemptError {
    /// The request certainly did not reach the node's state machine.
    NotSent(String),
    /// It may have: timed out or lost after sending.
    Unknown(String),
}

/// What a request ended with, before the caller maps it to its own types.
pub(super) enum Answer {
    Ok(OpResult),
    Status,
    Members(MemberList),
}

impl Client {
    /// Loads the client certificate and starts dialing every node, concurrently and in the
    /// background (a task of the current runtime per node); returns without waiting for them.
    /// A node that cannot be reached is not an error: it is dialed again when a request needs
    /// it. `wait_connected` waits for the first connection.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let tls = TlsMaterial::load(&config.certs_dir, &config.client_name)?;
        let slots = config
            .nodes
            .iter()
            .map(|&(id, addr)| {
                let slot = Slot {
                    addr,
                    name: node_name(id),
                    state: Mutex::new(SlotState::default()),
                    connecting: tokio::sync::Mutex::new(()),
                };
                (id, slot)
            })
            .collect();
        let inner = Inner {
            node_ids: config.nodes.iter().map(|(id, _)| *id).collect(),
            config,
            tls,
            slots,
            leader: AtomicU64::new(0),
            id_seed: id_seed(),
            request_bytes_max: TransportLimits::default().client_request_bytes_max as usize,
            dialed: tokio::sync::watch::Sender::new(0),
            last_failures: Mutex::new(BTreeMap::new()),
        };
        let client = Client {
            inner: Arc::new(inner),
        };
        for &id in &client.inner.node_ids {
            let client = client.clone();
            tokio::spawn(async move { client.connection(id, false).await.map(|_| ()) });
        }
        Ok(client)
    }

    /// Waits until some node is connected and returns it; fails with `NoNodeReachable` (each
    /// node's address and reason) once every node's dial has failed or `timeout` has passed.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<NodeId, ClientError> {
        let mut dialed = self.inner.dialed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            dialed.mark_unchanged();
            if let Some(node) = self.first_live() {
                return Ok(node);
            }
            let all_failed = (self.inner.slots.values()).all(|slot| slot.lock().failed.is_some());
            if all_failed {
                break;
            }
            match tokio::time::timeout_at(deadline, dialed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let nodes: Vec<String> = (self.inner.slots.iter())
            .map(|(id, slot)| {
                let reason = match &slot.lock().failed {
                    Some((_, reason)) => reason.clone(),
                    None => format!("no answer within {}", format_duration(timeout)),
                };
                format!("n{id} at {}: {reason}", slot.addr)
            })
            .collect();
        Err(ClientError::NoNodeReachable {
            within: format_duration(timeout),
            nodes: nodes.join("; "),
        })
    }

    /// The first node, in configuration order, with an open connection.
    fn first_live(&self) -> Option<NodeId> {
        (self.inner.node_ids.iter().copied()).find(|id| {
            (self.inner.slots.get(id)).is_some_and(|slot| slot.open_connection().is_some())
        })
    }

    /// A new session with a fresh `client_id`.
    pub fn session(&self) -> Session {
        let count = SESSIONS_CREATED.fetch_add(1, Ordering::Relaxed);
        let client_id = splitmix64(self.inner.id_seed ^ splitmix64(count)).max(1);
        Session::new(self.clone(), client_id)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The node ids, in configuration order.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.inner.node_ids
    }

    /// The leader last seen by any session of this client.
    pub fn leader(&self) -> Option<NodeId> {
        Some(self.inner.leader.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// Why the latest failed attempt at each node that failed did, in node order, naming the
    /// node (and its address when the connection failed): what a caller that gives up on a
    /// request still pending can report. `None` if no attempt failed.
    pub fn last_failures(&self) -> Option<String> {
        let failures = self.inner.last_failures.lock();
        let failures = failures.unwrap_or_else(PoisonError::into_inner);
        let reasons: Vec<&str> = failures.values().map(String::as_str).collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Takes `leader` (one of the nodes) as the leader last seen, e.g. one a previous process
    /// remembered: requests start there while it is connected. A wrong guess costs one
    /// redirect.
    pub fn prefer_leader(&self, leader: NodeId) {
        if self.inner.slots.contains_key(&leader) {
            self.inner.leader.store(leader, Ordering::Relaxed);
        }
    }

    /// Asks `node` for its Raft status (one attempt; any node answers, leader or not).
    pub async fn status(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        if !self.inner.slots.contains_key(&node) {
            return Err(ClientError::UnknownNode(node));
        }
        let request = ClientRequest {
            client_id: 0,
            seq: 0,
            kind: RequestKind::Status,
        };
        let frame = self.encode(&request)?;
        match self.attempt(node, frame, false).await {
            Ok(ClientResponse::Status(status)) => Ok(status),
            Ok(other) => Err(ClientError::Protocol(format!(
                "a status request was answered with {}",
                response_name(&other)
            ))),
            Err(AttemptError::NotSent(last)) => Err(ClientError::Unavailable { attempts: 1, last }),
            Err(AttemptError::Unknown(last)) => Err(ClientError::Timeout { attempts: 1, last }),
        }
    }

    pub(super) fn encode(&self, request: &ClientRequest) -> Result<Bytes, ClientError> {
        let frame = client_proto::encode_request(request).map_err(|error| match error {
            client_proto::ProtoError::TooLarge { bytes, max } => ClientError::TooLarge {
                what: "request frame".into(),
                bytes,
                max,
            },
            other => ClientError::Protocol(other.to_string()),
        })?;
        if frame.len() > self.inner.request_bytes_max {
            return Err(ClientError::TooLarge {
                what: "request frame".into(),
                bytes: frame.len() as u64,
                max: self.inner.request_bytes_max as u64,
            });
        }
        Ok(Bytes::from(frame))
    }

    /// Sends `frame` until an answer, following the leader. `start` is the first node to try
    /// (the cached leader if `None`); `follow_leader` is false for stale reads, which any node
    /// serves and which must not move the cached leader.
    pub(super) async fn call(
        &self,
        frame: Bytes,
        start: Option<NodeId>,
        follow_leader: bool,
    ) -> Result<OpResult, ClientError> {
        match self.call_any(frame, start, follow_leader).await? {
            Answer::Ok(result) => Ok(result),
            Answer::Status | Answer::Members(_) => Err(ClientError::Protocol(
                "an operation was answered with a node status or a member list".to_string(),
            )),
        }
    }

    /// The configuration in force, as the leader sees it if it can be reached (with how far
    /// each member's log matches), else as the first node that answers sees it.
    pub async fn members(&self) -> Result<MemberList, ClientError> {
        let list = self.member_request(RequestKind::Members, None).await?;
        match list.leader {
            Some(leader) if leader != list.node && self.inner.slots.contains_key(&leader) => {
                let from_leader = self
                    .member_request(RequestKind::Members, Some(leader))
                    .await;
                Ok(from_leader.unwrap_or(list))
            }
            _ => Ok(list),
        }
    }

    /// Changes the membership through the leader; returns the configuration once the change
    /// is committed and applied on the leader. An answer can be lost after the change was
    /// made (a leader that removes itself steps down before the entry commits): the retry is
    /// then refused (`BadRequest`: already a member, or not a member). So a refusal after an
    /// attempt that may have been applied is checked against the member list, and is the
    /// change's success if the list shows it done.
    pub async fn member_change(&self, op: MemberOp) -> Result<MemberList, ClientError> {
        let kind = RequestKind::MemberChange { op: op.clone() };
        match self.member_request_tracked(kind, None).await {
            Ok(list) => Ok(list),
            Err((error @ ClientError::BadRequest(_), true)) => match self.members().await {
                Ok(list) if op.in_force(&list) => Ok(list),
                _ => Err(error),
            },
            Err((error, _)) => Err(error),
        }
    }

    /// Hands leadership to voter `to`; returns once it leads.
    pub async fn move_leader(&self, to: NodeId) -> Result<MemberList, ClientError> {
        self.member_request(RequestKind::MoveLeader { to }, None)
            .await
    }

    async fn member_request(
        &self,
        kind: RequestKind,
        start: Option<NodeId>,
    ) -> Result<MemberList, ClientError> {
        (self.member_request_tracked(kind, start).await).map_err(|(error, _)| error)
    }

    /// As `member_request`; an error comes with whether an attempt may have been applied.
    async fn member_request_tracked(
        &self,
        kind: RequestKind,
        start: Option<NodeId>,
    ) -> Result<MemberList, (ClientError, bool)> {
        let request = ClientRequest {
            client_id: 0,
            seq: 0,
            kind,
        };
        let frame = self.encode(&request).map_err(|error| (error, false))?;
        match self.call_any_tracked(frame, start, true).await? {
            Answer::Members(list) => Ok(list),
            Answer::Ok(_) | Answer::Status => Err((
                ClientError::Protocol(
                    "a membership request was answered with something else".to_string(),
                ),
                false,
            )),
        }
    }

    async fn call_any(
        &self,
        frame: Bytes,
        start: Option<NodeId>,
        follow_leader: bool,
    ) -> Result<Answer, ClientError> {
        (self.call_any_tracked(frame, start, follow_leader).await).map_err(|(error, _)| error)
    }

    /// As `call_any`; an error comes with whether an earlier attempt may have been applied
    /// (its answer lost, or refused in a way that does not rule it out).
    async fn call_any_tracked(
        &self,
        frame: Bytes,
        start: Option<NodeId>,
        follow_leader: bool,
    ) -> Result<Answer, (ClientError, bool)> {
        let attempts_max = self.inner.config.attempts_max;
        // The leader last seen (a dead one is skipped once its dial fails or, if another node
        // is connected, after `CONNECTING_WAIT_MS`), else a connected node (it redirects).
        let start = (start.or_else(|| self.leader())).or_else(|| self.first_live());
        let mut route = Route::new(&self.inner.node_ids, start);
        let mut maybe_sent = false;
        let mut last = String::new();
        for attempt in 1..=attempts_max {
            let node = route.target();
            let wait = match self.attempt(node, frame.clone(), true).await {
                Ok(response) => match (self.answer(node, response, follow_leader))
                    .map_err(|error| (error, maybe_sent))?
                {
                    Ok(answer) => return Ok(answer),
                    Err(Retry::NotLeader(hint)) => {
                        let known = hint.map_or("no leader known".into(), |id| format!("n{id}"));
                        last = format!("n{node}: not the leader ({known})");
                        route.not_leader(hint)
                    }
                    Err(Retry::Elsewhere {
                        reason,
                        maybe_applied,
                    }) => {
                        maybe_sent |= maybe_applied;
                        last = format!("n{node}: {reason}");
                        route.unreachable()
                    }
                },
                Err(AttemptError::NotSent(reason)) => {
                    last = format!("n{node}: {reason}");
                    route.unreachable()
                }
                Err(AttemptError::Unknown(reason)) => {
                    maybe_sent = true;
                    last = format!("n{node}: {reason}");
                    route.unreachable()
                }
            };
            (self.inner.last_failures.lock())
                .unwrap_or_else(PoisonError::into_inner)
                .insert(node, last.clone());
            if attempt < attempts_max && !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        if maybe_sent {
            Err((
                ClientError::Timeout {
                    attempts: attempts_max,
                    last,
                },
                true,
            ))
        } else {
            Err((
                ClientError::Unavailable {
                    attempts: attempts_max,
                    last,
                },
                false,
            ))
        }
    }

    /// Sorts a node's answer into a result, a reason to retry, or a final error.
    fn answer(
        &self,
        node: NodeId,
        response: ClientResponse,
        follow_leader: bool,
    ) -> Result<Result<Answer, Retry>, ClientError> {
        use client_proto::ClientError as Refusal;
        let error = match response {
            ClientResponse::Ok(result) => {
                if follow_leader {
                    self.inner.leader.store(node, Ordering::Relaxed);
                }
                return Ok(Ok(Answer::Ok(result)));
            }
            ClientResponse::Status(_) => return Ok(Ok(Answer::Status)),
            ClientResponse::Members(list) => {
                if follow_leader {
                    if let Some(leader) = list.leader.filter(|id| self.inner.slots.contains_key(id))
                    {
                        self.inner.leader.store(leader, Ordering::Relaxed);
                    }
                }
                return Ok(Ok(Answer::Members(list)));
            }
            ClientResponse::Err(error) => error,
        };
        let retry = match error {
            Refusal::NotLeader { leader_hint } => {
                if let Some(hint) = leader_hint.filter(|id| self.inner.slots.contains_key(id)) {
                    self.inner.leader.store(hint, Ordering::Relaxed);
                }
                Retry::NotLeader(leader_hint)
            }
            Refusal::Timeout => Retry::Elsewhere {
                reason: "the node timed out".into(),
                maybe_applied: true,
            },
            // "Nothing was applied if returned before proposing": the client cannot tell when
            // it was returned, so a write answered this way may have been proposed.
            Refusal::Unavailable(reason) => Retry::Elsewhere {
                reason: format!("unavailable: {reason}"),
                maybe_applied: true,
            },
            // This attempt's entry was replaced: it was not applied, but an earlier attempt of
            // the same seq may have been; retrying with the same seq finds out.
            Refusal::NotApplied(reason) => Retry::Elsewhere {
                reason: format!("not applied: {reason}"),
                maybe_applied: false,
            },
            Refusal::TooLarge { what, bytes, max } => {
                return Err(ClientError::TooLarge { what, bytes, max })
            }
            Refusal::BadRequest(reason) => return Err(ClientError::BadRequest(reason)),
            Refusal::Stale => return Err(ClientError::Stale),
        };
        Ok(Err(retry))
    }

    /// One request to one node. `may_skip`: give up on a node still dialing after
    /// `CONNECTING_WAIT_MS` if another node is connected.
    async fn attempt(
        &self,
        node: NodeId,
        frame: Bytes,
        may_skip: bool,
    ) -> Result<ClientResponse, AttemptError> {
        let connection = (self.connection(node, may_skip).await).map_err(AttemptError::NotSent)?;
        let timeout = self.inner.config.request_timeout;
        match connection.request(frame, timeout).await {
            Ok(response) => client_proto::decode_response(&response)
                .map_err(|error| AttemptError::Unknown(format!("bad response: {error}"))),
            Err(error) => {
                if is_connection_lost(&error) {
                    self.forget(node, &connection);
                }
                Err(classify(error))
            }
        }
    }

    /// The node's live connection, dialing it if needed (see `attempt` for `may_skip`).
    async fn connection(&self, node: NodeId, may_skip: bool) -> Result<Arc<ClientConn>, String> {
        let slot = self
            .inner
            .slots
            .get(&node)
            .ok_or_else(|| format!("node {node} is not configured"))?;
        if let Some(connection) = slot.live()? {
            return Ok(connection);
        }
        let _connecting = match slot.connecting.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another task is dialing: a live node's handshake ends within the short wait;
                // past it, skip this node if another can answer.
                let wait = Duration::from_millis(CONNECTING_WAIT_MS);
                match tokio::time::timeout(wait, slot.connecting.lock()).await {
                    Ok(guard) => guard,
                    Err(_) if may_skip && self.first_live().is_some_and(|live| live != node) => {
                        return Err(format!("still connecting to {}", slot.addr));
                    }
                    Err(_) => slot.connecting.lock().await,
                }
            }
        };
        // Another session may have connected (or failed) while this one waited.
        if let Some(connection) = slot.live()? {
            return Ok(connection);
        }
        let timeout = self.inner.config.connect_timeout;
        let dial = ClientConn::connect(slot.addr, &slot.name, &self.inner.tls);
        let result = match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(connection)) => Ok(Arc::new(connection)),
            Ok(Err(error)) => Err(format!("connect to {} failed: {error}", slot.addr)),
            Err(_) => Err(format!(
                "connect to {} timed out after {}",
                slot.addr,
                format_duration(timeout)
            )),
        };
        {
            let mut state = slot.lock();
            match &result {
                Ok(connection) => {
                    state.connection = Some(connection.clone());
                    state.failed = None;
                }
                Err(reason) => state.failed = Some((Instant::now(), reason.clone())),
            }
        }
        self.inner.dialed.send_modify(|count| *count += 1);
        result
    }

    fn forget(&self, node: NodeId, lost: &Arc<ClientConn>) {
        if let Some(slot) = self.inner.slots.get(&node) {
            let mut state = slot.lock();
            if state
                .connection
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, lost))
            {
                state.connection = None;
            }
        }
    }
}

enum Retry {
    NotLeader(Option<NodeId>),
    Elsewhere { reason: String, maybe_applied: bool },
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection, if there is one (without looking at failed dials).
    fn open_connection(&self) -> Option<Arc<ClientConn>> {
        let state = self.lock();
        (state.connection.as_ref())
            .filter(|connection| connection.connection().close_reason().is_none())
            .cloned()
    }

    /// The open connection if there is one; an error if the last dial failed recently.
    fn live(&self) -> Result<Option<Arc<ClientConn>>, String> {
        let mut state = self.lock();
        if let Some(connection) = &state.connection {
            if connection.connection().close_reason().is_none() {
                return Ok(Some(connection.clone()));
            }
            state.connection = None;
        }
        if let Some((at, reason)) = &state.failed {
            if at.elapsed() < Duration::from_millis(RECONNECT_INTERVAL_MS) {
                return Err(reason.clone());
            }
        }
        Ok(None)
    }
}

/// What kind of answer `response` is, for protocol errors.
fn response_name(response: &ClientResponse) -> &'static str {
    match response {
        ClientResponse::Ok(_) => "an operation result",
        ClientResponse::Status(_) => "a node status",
        ClientResponse::Err(_) => "an error",
        ClientResponse::Members(_) => "a member list",
    }
}

/// Whether to drop the connection and dial again next time. A timeout counts: a node killed
/// with -9 leaves a connection that QUIC declares dead only at its idle timeout (10 s), while
/// redialing a live node costs one handshake.
fn is_connection_lost(error: &kvtransport::ClientError) -> bool {
    matches!(
        error,
        kvtransport::ClientError::Connection(_)
            | kvtransport::ClientError::Refused { .. }
            | kvtransport::ClientError::Timeout
    )
}

/// Whether a failed request may have reached the node's state machine.
fn classify(error: kvtransport::ClientError) -> AttemptError {
    use kvtransport::ClientError as E;
    match error {
        E::Refused { .. } | E::Connect(_) | E::Bind(_) | E::Tls(_) | E::Config(_) => {
            AttemptError::NotSent(error.to_string())
        }
        E::TooLarge => AttemptError::NotSent("the node refused the request as too large".into()),
        E::Connection(_) | E::Timeout | E::Rejected { .. } | E::Stream(_) | E::Codec(_) => {
            AttemptError::Unknown(error.to_string())
        }
    }
}

/// Process id and wall-clock time, read once: distinct processes started at distinct times get
/// distinct session ids with overwhelming probability. Not a secret, only unique.
fn id_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
}

/// SplitMix64's output for `seed`: a bijection that spreads nearby inputs over all 64 bits
/// (the core's seeded generator, one step).
fn splitmix64(seed: u64) -> u64 {
    kvraft::rng::Rng::new(seed).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_injective_on_a_counter_range() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(splitmix64).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn transport_errors_before_sending_are_definite() {
        let refused = kvtransport::ClientError::Refused { reason: "x".into() };
        assert!(matches!(classify(refused), AttemptError::NotSent(_)));
        let timeout = kvtransport::ClientError::Timeout;
        assert!(matches!(classify(timeout), AttemptError::Unknown(_)));
        let reset = kvtransport::ClientError::Rejected { code: 4 };
        assert!(matches!(classify(reset), AttemptError::Unknown(_)));
    }
}
