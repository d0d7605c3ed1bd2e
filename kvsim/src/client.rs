//! Simulated clients that behave like the client library: one session (`client_id`, `seq`)
//! per client, one operation at a time, writes retried with the same `seq` until answered, the
//! library's own routing (`kvstate::route::Route`: follow leader hints, move on from a node
//! that does not answer, back off after a full round). Every operation is recorded in a Jepsen
//! style history (`proto-docs/history.md`) that the `checker` crate checks after the run.
//!
//! Keys: registers `r0..r2` (write unique integers, read) and lists `l0..l1` (append unique
//! integers, read the list). Checked here as they happen: monotonic reads per client, and
//! exactly-once (no element appears twice in a list). Checked on the history afterwards: per-key
//! linearizability, which includes lost acknowledged writes (the history ends with reads of the
//! converged state).

use std::collections::HashMap;

use crate::lists::{self, ListKind, ListOp};
use kvraft::rng::Rng;
use kvraft::{Entry, EntryKind, Index, NodeId};
use kvstate::client_proto::{
    encode_request, ClientError, ClientRequest, ClientResponse, RequestKind,
};
use kvstate::route::Route;
use kvstate::{Command, KeyOp, KeyResult, Op, OpResult, StateMachine, Value};

/// Register keys and list keys the clients use.
const REGISTERS: u64 = 3;
const LISTS: u64 = 2;

/// The driver's token for one attempt of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub client: usize,
    pub op: u64,
    pub attempt: u32,
}

/// What a client asks the simulator to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Deliver a request to node `node` (after network delay).
    Send {
        node: NodeId,
        token: Token,
        owner: String,
        bytes: Vec<u8>,
    },
    /// Call `Clients::wake(client, generation)` after `after` time units.
    Wake {
        client: usize,
        generation: u64,
        after: u64,
    },
}

/// Knobs of the clients, derived from the seed.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub clients: usize,
    /// Time units a client waits for an answer before trying again.
    pub attempt_timeout_units: u64,
    /// Attempts per operation before the client gives up (outcome unknown for writes).
    pub attempts_max: u32,
    /// Time units between one operation's end and the next one's start, at most.
    pub think_units_max: u64,
    /// Share of operations that write.
    pub write_per_million: u64,
}

#[derive(Clone, Debug)]
enum OpKind {
    Write { key: u64, value: u64 },
    Read { key: u64 },
    Append { key: u64, element: u64 },
    ReadList { key: u64 },
}

#[derive(Debug)]
struct PendingOp {
    id: u64,
    kind: OpKind,
    bytes: Vec<u8>,
    attempt: u32,
    /// Whether some attempt may have been applied (no answer, `Timeout`, `Unavailable`). Until
    /// then every refusal was definite, so a `NotApplied` answer means the write did not happen.
    maybe_applied: bool,
}

#[derive(Debug)]
enum State {
    Idle,
    /// Backing off before the next attempt.
    Sending(PendingOp),
    Waiting(PendingOp),
}

#[derive(Debug)]
struct Client {
    owner: String,
    client_id: u64,
    process: u64,
    seq: u64,
    route: Route,
    generation: u64,
    state: State,
    /// Monotonic reads: the newest write index (registers) or list seen, per key.
    seen_registers: HashMap<u64, Index>,
    seen_lists: HashMap<u64, Vec<u64>>,
}

/// All clients, their history, and the checks made as answers arrive.
pub(crate) struct Clients {
    config: ClientConfig,
    clients: Vec<Client>,
    next_op: u64,
    next_value: u64,
    next_process: u64,
    /// History lines, in real-time order: every operation, and the register operations alone
    /// (checked by the `checker` crate; lists are checked by `lists.rs`).
    history: String,
    lines: u64,
    register_history: String,
    register_lines: u64,
    /// List operations by position of their invocation.
    list_ops: Vec<ListOp>,
    /// Index in `list_ops` of each client's current list operation.
    list_current: Vec<Option<usize>>,
    /// Register values to the log index that wrote them (values are unique).
    write_index: HashMap<u64, Index>,
    /// Every committed entry applied once, in order (see `note_committed`).
    reference: StateMachine,
    reference_gap: Option<(Index, Index)>,
    /// Per register: the values of its applied writes in log order.
    versions: HashMap<u64, Vec<u64>>,
    pub acked_writes: u64,
    pub ok_reads: u64,
    pub unknown: u64,
    pub failed_writes: u64,
}

impl Clients {
    pub fn new(config: ClientConfig, nodes: &[NodeId], rng: &mut Rng) -> Clients {
        let clients = (0..config.clients)
            .map(|index| Client {
                owner: format!("client{}", index + 1),
                client_id: rng.next_u64(),
                process: index as u64,
                seq: 0,
                route: Route::new(nodes, None),
                generation: 0,
                state: State::Idle,
                seen_registers: HashMap::new(),
                seen_lists: HashMap::new(),
            })
            .collect();
        Clients {
            list_current: vec![None; config.clients],
            next_process: config.clients as u64,
            config,
            clients,
            next_op: 1,
            next_value: 1,
            history: String::new(),
            lines: 0,
            register_history: String::new(),
            register_lines: 0,
            list_ops: Vec::new(),
            write_index: HashMap::new(),
            reference: StateMachine::new(),
            reference_gap: None,
            versions: HashMap::new(),
            acked_writes: 0,
            ok_reads: 0,
            unknown: 0,
            failed_writes: 0,
        }
    }

    /// The first wake of every client.
    pub fn start(&mut self, rng: &mut Rng) -> Vec<Effect> {
        (0..self.clients.len())
            .map(|client| self.wake_later(client, rng.between(1, self.config.think_units_max)))
            .collect()
    }

    fn wake_later(&mut self, client: usize, after: u64) -> Effect {
        let c = &mut self.clients[client];
        c.generation += 1;
        Effect::Wake {
            client,
            generation: c.generation,
            after,
        }
    }

    /// A client's timer fired. `open`: new operations may start.
    pub fn wake(
        &mut self,
        client: usize,
        generation: u64,
        now: u64,
        open: bool,
        rng: &mut Rng,
    ) -> Vec<Effect> {
        if self.clients[client].generation != generation {
            return Vec::new();
        }
        match std::mem::replace(&mut self.clients[client].state, State::Idle) {
            State::Idle if open => {
                let op = self.start_op(client, now, rng);
                self.send_attempt(client, op)
            }
            State::Idle => Vec::new(),
            State::Sending(op) => self.send_attempt(client, op),
            State::Waiting(mut op) => {
                // No answer in time: the node is down, partitioned or slow, and the request
                // may have been proposed.
                op.maybe_applied = true;
                let wait = self.clients[client].route.unreachable();
                self.retry(client, op, wait, now)
            }
        }
    }

    fn start_op(&mut self, client: usize, now: u64, rng: &mut Rng) -> PendingOp {
        let write = rng.chance(self.config.write_per_million);
        let list = rng.chance(400_000);
        let value = self.next_value;
        let kind = match (write, list) {
            (true, false) => OpKind::Write {
                key: rng.below(REGISTERS),
                value,
            },
            (true, true) => OpKind::Append {
                key: rng.below(LISTS),
                element: value,
            },
            (false, false) => OpKind::Read {
                key: rng.below(REGISTERS),
            },
            (false, true) => OpKind::ReadList {
                key: rng.below(LISTS),
            },
        };
        if write {
            self.next_value += 1;
        }
        let c = &mut self.clients[client];
        let (op, is_write) = match &kind {
            OpKind::Write { key, value } => (Op::put(register(*key), value.to_string()), true),
            OpKind::Append { key, element } => {
                (Op::append(list_key(*key), element.to_string()), true)
            }
            OpKind::Read { key } => (Op::get(register(*key)), false),
            OpKind::ReadList { key } => (Op::get(list_key(*key)), false),
        };
        let request = if is_write {
            c.seq += 1;
            ClientRequest {
                client_id: c.client_id,
                seq: c.seq,
                kind: RequestKind::Write { op },
            }
        } else {
            let kind = RequestKind::Read { op, stale: false };
            ClientRequest {
                client_id: c.client_id,
                seq: c.seq,
                kind,
            }
        };
        // Requests the simulator builds are small and valid: encoding cannot fail.
        let bytes = encode_request(&request).expect("a simulated request encodes");
        let id = self.next_op;
        self.next_op += 1;
        let process = self.clients[client].process;
        self.track_list_op(client, &kind);
        self.record(now, process, "invoke", &kind, &invoke_value(&kind));
        PendingOp {
            id,
            kind,
            bytes,
            attempt: 0,
            maybe_applied: false,
        }
    }

    fn track_list_op(&mut self, client: usize, kind: &OpKind) {
        let (register, key, kind) = match kind {
            OpKind::Append { key, element } => {
                (false, *key, ListKind::Append { element: *element })
            }
            OpKind::ReadList { key } => (false, *key, ListKind::Read { list: Vec::new() }),
            OpKind::Write { key, value } => (true, *key, ListKind::Append { element: *value }),
            OpKind::Read { key } => (true, *key, ListKind::Value { value: None }),
        };
        self.list_current[client] = Some(self.list_ops.len());
        self.list_ops.push(ListOp {
            register,
            key,
            kind,
            invoke: self.lines,
            ok: None,
            failed: false,
        });
    }

    /// The client's current operation completed `ok` at the next history line; `read` is
    /// what a read saw.
    fn list_ok(&mut self, client: usize, read: Option<ListKind>) {
        let Some(at) = self.list_current[client].take() else {
            return;
        };
        let op = &mut self.list_ops[at];
        op.ok = Some(self.lines);
        if let Some(kind) = read {
            op.kind = kind;
        }
    }

    fn send_attempt(&mut self, client: usize, mut op: PendingOp) -> Vec<Effect> {
        op.attempt += 1;
        let c = &mut self.clients[client];
        let send = Effect::Send {
            node: c.route.target(),
            token: Token {
                client,
                op: op.id,
                attempt: op.attempt,
            },
            owner: c.owner.clone(),
            bytes: op.bytes.clone(),
        };
        c.state = State::Waiting(op);
        let timeout = self.config.attempt_timeout_units;
        vec![send, self.wake_later(client, timeout)]
    }

    fn retry(
        &mut self,
        client: usize,
        op: PendingOp,
        wait: std::time::Duration,
        now: u64,
    ) -> Vec<Effect> {
        if op.attempt >= self.config.attempts_max {
            self.give_up(client, op, now);
            return vec![self.wake_later(client, self.config.think_units_max)];
        }
        self.clients[client].state = State::Sending(op);
        // The library's backoff is in milliseconds; a time unit stands for one.
        vec![self.wake_later(client, wait.as_millis() as u64)]
    }

    /// No definite answer: a write's outcome is unknown (`info`, and the process is not reused,
    /// as in Jepsen); a read simply failed.
    fn give_up(&mut self, client: usize, op: PendingOp, now: u64) {
        let process = self.clients[client].process;
        match op.kind {
            OpKind::Write { .. } | OpKind::Append { .. } => {
                self.unknown += 1;
                self.record(now, process, "info", &op.kind, &invoke_value(&op.kind));
                self.clients[client].process = self.next_process;
                self.next_process += 1;
            }
            OpKind::Read { .. } | OpKind::ReadList { .. } => {
                self.record(now, process, "fail", &op.kind, "null");
            }
        }
    }

    /// A write definitely not applied (Jepsen `:fail`).
    fn fail(&mut self, client: usize, op: &PendingOp, now: u64) {
        if let Some(at) = self.list_current[client].take() {
            self.list_ops[at].failed = true;
        }
        let process = self.clients[client].process;
        self.failed_writes += 1;
        self.record(now, process, "fail", &op.kind, &invoke_value(&op.kind));
    }

    /// An answer from a node. Errors are returned as violations of client-visible guarantees.
    pub fn answer(
        &mut self,
        token: Token,
        response: ClientResponse,
        now: u64,
        rng: &mut Rng,
    ) -> Result<Vec<Effect>, String> {
        let client = token.client;
        let current = match &self.clients[client].state {
            State::Waiting(op) | State::Sending(op) => Some((op.id, op.attempt)),
            State::Idle => None,
        };
        let Some((op_id, attempt)) = current else {
            return Ok(Vec::new());
        };
        if op_id != token.op {
            return Ok(Vec::new());
        }
        let op = match std::mem::replace(&mut self.clients[client].state, State::Idle) {
            State::Waiting(op) | State::Sending(op) => op,
            State::Idle => return Ok(Vec::new()),
        };
        match response {
            ClientResponse::Ok(result) => {
                self.complete(client, &op, &result, now)?;
                let think = rng.between(1, self.config.think_units_max);
                Ok(vec![self.wake_later(client, think)])
            }
            // An old attempt's error: the current attempt is still under way.
            ClientResponse::Err(_) if token.attempt != attempt => {
                self.clients[client].state = State::Waiting(op);
                Ok(Vec::new())
            }
            ClientResponse::Err(error) => self.on_error(client, op, error, now),
            ClientResponse::Status(_) | ClientResponse::Members(_) => {
                Err("a data request was answered with a status or a member list".into())
            }
        }
    }

    fn on_error(
        &mut self,
        client: usize,
        mut op: PendingOp,
        error: ClientError,
        now: u64,
    ) -> Result<Vec<Effect>, String> {
        if matches!(error, ClientError::NotApplied(_)) && !op.maybe_applied {
            // Trusting the documented error table: the write did not happen.
            self.fail(client, &op, now);
            return Ok(vec![self.wake_later(client, 1)]);
        }
        let route = &mut self.clients[client].route;
        let wait = match &error {
            ClientError::NotLeader { leader_hint } => route.not_leader(*leader_hint),
            ClientError::NotApplied(_) => route.retry_same(),
            ClientError::Unavailable(_) | ClientError::Timeout => {
                op.maybe_applied = true;
                route.unreachable()
            }
            ClientError::Stale | ClientError::BadRequest(_) | ClientError::TooLarge { .. } => {
                return Err(format!(
                    "client {} op {} (seq {}) answered {error}: the session or the request \
                     handling is broken",
                    client + 1,
                    op.id,
                    self.clients[client].seq
                ));
            }
        };
        Ok(self.retry(client, op, wait, now))
    }

    fn complete(
        &mut self,
        client: usize,
        op: &PendingOp,
        result: &OpResult,
        now: u64,
    ) -> Result<(), String> {
        let process = self.clients[client].process;
        match &op.kind {
            OpKind::Write { .. } | OpKind::Append { .. } => {
                self.acked_writes += 1;
                self.list_ok(client, None);
                self.record(now, process, "ok", &op.kind, &invoke_value(&op.kind));
            }
            OpKind::Read { key } => {
                let value = register_value(result)?;
                self.check_monotonic_register(client, *key, value)?;
                self.list_ok(client, Some(ListKind::Value { value }));
                let text = value.map_or("null".to_string(), |v| v.to_string());
                self.ok_reads += 1;
                self.record(now, process, "ok", &op.kind, &text);
            }
            OpKind::ReadList { key } => {
                let list = list_value(result)?;
                self.check_list(client, *key, list.as_deref().unwrap_or_default())?;
                let list = list.unwrap_or_default();
                self.list_ok(client, Some(ListKind::Read { list: list.clone() }));
                let list = (!list.is_empty()).then_some(list);
                self.ok_reads += 1;
                self.record(now, process, "ok", &op.kind, &list_json(list.as_deref()));
            }
        }
        Ok(())
    }

    fn check_monotonic_register(
        &mut self,
        client: usize,
        key: u64,
        value: Option<u64>,
    ) -> Result<(), String> {
        let index = match value {
            Some(value) => *self.write_index.get(&value).ok_or_else(|| {
                format!("read of r{key} returned {value}, which no committed entry wrote")
            })?,
            None => 0,
        };
        let seen = self.clients[client].seen_registers.entry(key).or_insert(0);
        if index < *seen {
            return Err(format!(
                "monotonic reads: client {} read r{key} as the write at index {index} after \
                 having read the write at index {seen}",
                client + 1
            ));
        }
        *seen = index;
        Ok(())
    }

    fn check_list(&mut self, client: usize, key: u64, list: &[u64]) -> Result<(), String> {
        let mut sorted = list.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!(
                "exactly-once: element {} appears twice in l{key}: {list:?}",
                pair[0]
            ));
        }
        let seen = self.clients[client].seen_lists.entry(key).or_default();
        if !list.starts_with(seen) {
            return Err(format!(
                "monotonic reads: client {} read l{key} as {list:?} after {seen:?}",
                client + 1
            ));
        }
        *seen = list.to_vec();
        Ok(())
    }

    /// An entry was committed (applied by some node). Each index is applied once, in order, to
    /// a reference replica (the real state machine); its outcomes give every register's version
    /// order: the values its applied writes stored, in log order.
    pub fn note_committed(&mut self, entry: &Entry) {
        let applied = self.reference.applied_index();
        if entry.index <= applied {
            return;
        }
        if entry.index != applied + 1 {
            self.reference_gap.get_or_insert((applied, entry.index));
            return;
        }
        if entry.kind != EntryKind::Normal {
            self.reference.apply_empty(entry.index);
            return;
        }
        let outcome = self.reference.apply(entry.index, &entry.data);
        let Ok(command) = Command::decode(&entry.data) else {
            return;
        };
        let applied = matches!(outcome, kvstate::ApplyOutcome::Applied { .. });
        if let (true, Op::Key(KeyOp::Put { key, value })) = (applied, command.op) {
            let key = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.strip_prefix('r'));
            if let (Some(key), Some(value)) = (key.and_then(|k| k.parse().ok()), parse(&value)) {
                self.write_index.entry(value).or_insert(entry.index);
                self.versions.entry(key).or_default().push(value);
            }
        }
    }

    /// The reference replica, to compare with the converged nodes.
    pub fn reference(&self) -> Result<&StateMachine, String> {
        match self.reference_gap {
            Some((applied, next)) => Err(format!(
                "the reference replica applied up to {applied} and then saw {next}: some \
                 committed entry was never applied by any node"
            )),
            None => Ok(&self.reference),
        }
    }

    /// The history ends with reads of the converged state by a fresh process, invoked after
    /// every other operation: an acknowledged write they do not reflect was lost. The lists are
    /// checked against their final values here.
    pub fn final_reads(&mut self, sm: &StateMachine, now: u64) -> Result<(), String> {
        let process = self.next_process;
        self.next_process += 1;
        for key in 0..REGISTERS {
            let kind = OpKind::Read { key };
            let value = sm.get_local(register(key).as_bytes());
            let text = match value {
                Some(Value::Bytes(bytes)) => parse(&bytes).map_or("null".into(), |v| v.to_string()),
                _ => "null".to_string(),
            };
            self.record(now, process, "invoke", &kind, "null");
            self.record(now, process, "ok", &kind, &text);
            self.check_register(key)?;
        }
        for key in 0..LISTS {
            let kind = OpKind::ReadList { key };
            let list: Option<Vec<u64>> = match sm.get_local(list_key(key).as_bytes()) {
                Some(Value::List(elements)) => {
                    Some(elements.iter().filter_map(|e| parse(e)).collect())
                }
                _ => None,
            };
            self.record(now, process, "invoke", &kind, "null");
            self.record(now, process, "ok", &kind, &list_json(list.as_deref()));
            let ops: Vec<&ListOp> = self
                .list_ops
                .iter()
                .filter(|op| !op.register && op.key == key)
                .collect();
            lists::check(&list_key(key), &ops, list.as_deref().unwrap_or_default())?;
        }
        Ok(())
    }

    /// A register is a list of versions: its writes in log order. A read of value `v` saw the
    /// prefix up to `v`'s version, so the list check applies (white-box: the version order is
    /// the log's, which every correct replica follows).
    fn check_register(&self, key: u64) -> Result<(), String> {
        let empty = Vec::new();
        let versions = self.versions.get(&key).unwrap_or(&empty);
        let position: HashMap<u64, usize> = versions
            .iter()
            .enumerate()
            .rev()
            .map(|(i, v)| (*v, i))
            .collect();
        let mut ops = Vec::new();
        for op in self
            .list_ops
            .iter()
            .filter(|op| op.register && op.key == key)
        {
            let mut op = op.clone();
            if let (ListKind::Value { value }, Some(_)) = (&op.kind, op.ok) {
                let len = match value {
                    None => 0,
                    Some(value) => {
                        1 + *position.get(value).ok_or_else(|| {
                            format!("r{key} was read as {value}, which no applied write stored")
                        })?
                    }
                };
                op.kind = ListKind::Prefix { len };
            }
            ops.push(op);
        }
        let refs: Vec<&ListOp> = ops.iter().collect();
        lists::check(&register(key), &refs, versions)
    }

    /// Clients with an operation under way.
    pub fn busy(&self) -> usize {
        let busy = |c: &&Client| !matches!(c.state, State::Idle);
        self.clients.iter().filter(busy).count()
    }

    pub fn history(&self) -> &str {
        &self.history
    }

    /// The register operations alone, for the linearizability checker.
    pub fn register_history(&self) -> &str {
        &self.register_history
    }

    fn record(&mut self, now: u64, process: u64, kind: &str, op: &OpKind, value: &str) {
        let (f, key) = match op {
            OpKind::Write { key, .. } => ("write", register(*key)),
            OpKind::Read { key } => ("read", register(*key)),
            OpKind::Append { key, .. } => ("append", list_key(*key)),
            OpKind::ReadList { key } => ("read", list_key(*key)),
        };
        let index = self.lines;
        self.lines += 1;
        let line = |index: u64| {
            format!(
                "{{\"index\":{index},\"time\":{now},\"process\":{process},\
                 \"type\":\"{kind}\",\"f\":\"{f}\",\"key\":\"{key}\",\"value\":{value}}}\n"
            )
        };
        self.history.push_str(&line(index));
        if matches!(op, OpKind::Write { .. } | OpKind::Read { .. }) {
            let register_index = self.register_lines;
            self.register_lines += 1;
            self.register_history.push_str(&line(register_index));
        }
    }
}

fn register(key: u64) -> String {
    format!("r{key}")
}

fn list_key(key: u64) -> String {
    format!("l{key}")
}

fn invoke_value(kind: &OpKind) -> String {
    match kind {
        OpKind::Write { value, .. } => value.to_string(),
        OpKind::Append { element, .. } => element.to_string(),
        OpKind::Read { .. } | OpKind::ReadList { .. } => "null".to_string(),
    }
}

fn parse(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn register_value(result: &OpResult) -> Result<Option<u64>, String> {
    match result {
        OpResult::Key(KeyResult::Get { value: None }) => Ok(None),
        OpResult::Key(KeyResult::Get {
            value: Some(Value::Bytes(bytes)),
        }) => parse(bytes)
            .map(Some)
            .ok_or_else(|| "a register holds something the clients never wrote".to_string()),
        other => Err(format!("a register read returned {other:?}")),
    }
}

/// A list read; `None` for an absent key (the checker's model starts every key absent).
fn list_value(result: &OpResult) -> Result<Option<Vec<u64>>, String> {
    match result {
        OpResult::Key(KeyResult::Get { value: None }) => Ok(None),
        OpResult::Key(KeyResult::Get {
            value: Some(Value::List(elements)),
        }) => elements
            .iter()
            .map(|e| parse(e).ok_or_else(|| "a list holds a foreign element".to_string()))
            .collect::<Result<Vec<u64>, String>>()
            .map(Some),
        other => Err(format!("a list read returned {other:?}")),
    }
}

fn list_json(list: Option<&[u64]>) -> String {
    let Some(list) = list else {
        return "null".to_string();
    };
    let items: Vec<String> = list.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}
