//! Data-driven interaction scripts for the Raft core, in the manner of etcd-io/raft's
//! `testdata/`: every file in `testdata/` is a sequence of blocks
//!
//! ```text
//! command arg key=value
//! ----
//! expected output
//! ```
//!
//! separated by blank lines. `REWRITE=1 cargo test -p kvraft --test interaction` rewrites the
//! expected output from the actual one, to be reviewed as a diff.
//!
//! Commands: `add-nodes N [voters=1,2,3] [pre-vote=b] [check-quorum=b] [batch-bytes=n]` (nodes
//! not in `voters`, default all, start with an empty configuration, as a joining node does),
//! `propose-conf-change ID [mode=simple|joint] OP...` with OP `lN` (add learner N), `vN`
//! (promote N), `rN` (remove N), `conf` (every node's configuration), `campaign ID`,
//! `tick ID [N]`, `tick-all [N]`, `propose ID DATA`, `read-index ID CTX`,
//! `transfer-leader FROM TO`, `process-ready ID...`, `deliver-msgs ID [from=ID] [type=NAME]`,
//! `drop-msgs ID [from=ID] [type=NAME]`, `stabilize`, `isolate ID`, `heal`, `crash ID`,
//! `restart ID`, `wipe ID` (crash and lose all storage), `report-restarted ID PEER` (the
//! transport saw PEER come back as a new process), `compact ID INDEX`, `evict ID BYTES` (keep
//! at most BYTES of entries in memory), `status`, `raft-log ID` (the entries held in memory).
//! A Ready's `entries_to_load` are read from the node's storage at once (`LoadEntries`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kvraft::{
    ConfChange, ConfChangeMode, ConfChangeOp, Config, Entry, EntryKind, HardState, Membership,
    Message, MessageBody, NodeId, RawNode, Restored, SnapshotMeta,
};

#[derive(Default, Clone)]
struct Storage {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
}

impl Storage {
    fn persist(
        &mut self,
        snapshot: &Option<SnapshotMeta>,
        entries: &[Entry],
        hs: Option<HardState>,
    ) {
        if let Some(meta) = snapshot {
            self.entries.clear();
            self.snapshot = Some(meta.clone());
        }
        if let Some(first) = entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            self.hard_state = hs;
        }
    }
}

struct Node {
    raw: Option<RawNode>,
    storage: Storage,
    applied: u64,
}

#[derive(Default)]
struct Env {
    nodes: Vec<Node>,
    config: Option<Config>,
    membership: Membership,
    /// Messages sent and not yet delivered or dropped.
    in_flight: Vec<Message>,
    isolated: BTreeSet<NodeId>,
}

fn describe(m: &Message) -> String {
    let head = format!("{}->{} {} term={}", m.from, m.to, m.body.name(), m.term);
    let tail = match &m.body {
        MessageBody::VoteRequest {
            last_log_index,
            last_log_term,
            transfer,
            ..
        } => {
            let transfer = if *transfer { " transfer" } else { "" };
            format!(" last={last_log_index}/{last_log_term}{transfer}")
        }
        MessageBody::VoteResponse { granted, .. } => {
            (if *granted { " granted" } else { " rejected" }).to_string()
        }
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => {
            let entries: Vec<String> = entries.iter().map(describe_entry).collect();
            format!(
                " prev={prev_log_index}/{prev_log_term} commit={commit} entries=[{}]",
                entries.join(", ")
            )
        }
        MessageBody::AppendResponse {
            index,
            reject: None,
        } => format!(" index={index}"),
        MessageBody::AppendResponse {
            index,
            reject: Some(hint),
        } => {
            format!(" index={index} reject hint={}/{}", hint.index, hint.term)
        }
        MessageBody::Heartbeat { commit, read_round } => {
            format!(" commit={commit} round={read_round}")
        }
        MessageBody::HeartbeatResponse { read_round } => format!(" round={read_round}"),
        MessageBody::InstallSnapshot { meta } => {
            format!(" snapshot={}/{}", meta.last_index, meta.last_term)
        }
        MessageBody::TimeoutNow => String::new(),
    };
    head + &tail
}

fn describe_entry(e: &Entry) -> String {
    match e.kind {
        EntryKind::Noop => format!("{}/{} noop", e.index, e.term),
        EntryKind::Config => match Membership::decode(&e.data) {
            Ok(membership) => format!("{}/{} conf {membership}", e.index, e.term),
            Err(error) => format!("{}/{} conf ({error})", e.index, e.term),
        },
        EntryKind::Normal => {
            format!(
                "{}/{} {}",
                e.index,
                e.term,
                String::from_utf8_lossy(&e.data)
            )
        }
    }
}

fn arg<'a>(args: &'a [&str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn id(text: &str) -> NodeId {
    text.parse()
        .unwrap_or_else(|_| panic!("bad node id {text:?}"))
}

impl Env {
    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn raw(&mut self, id: NodeId) -> &mut RawNode {
        self.node(id)
            .raw
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is down"))
    }

    fn add_nodes(&mut self, args: &[&str]) -> String {
        let count: u64 = args[0].parse().expect("node count");
        let mut config = Config::new(1);
        config.pre_vote = arg(args, "pre-vote").is_none_or(|v| v == "true");
        config.check_quorum = arg(args, "check-quorum").is_none_or(|v| v == "true");
        config.election_timeout_ticks = 10;
        config.heartbeat_interval_ticks = 1;
        if let Some(bytes) = arg(args, "batch-bytes") {
            config.append_batch_bytes_max = bytes.parse().expect("batch-bytes");
        }
        self.membership = match arg(args, "voters") {
            Some(list) => Membership::new(list.split(',').map(id).collect()),
            None => Membership::new((1..=count).collect()),
        };
        self.config = Some(config);
        for _ in 0..count {
            self.nodes.push(Node {
                raw: None,
                storage: Storage::default(),
                applied: 0,
            });
        }
        for node in 1..=count {
            self.start(node);
        }
        "ok".to_string()
    }

    fn start(&mut self, node: NodeId) {
        let mut config = self.config.clone().expect("add-nodes first");
        config.id = node;
        let storage = self.node(node).storage.clone();
        let restored = Restored {
            hard_state: storage.hard_state,
            snapshot: storage.snapshot.clone(),
            entries: storage.entries.clone(),
        };
        let membership = if self.membership.contains(node) {
            self.membership.clone()
        } else {
            Membership::default()
        };
        // Seed = node id: election timeouts differ per node, and replay is exact.
        let raw = RawNode::new(config, membership, restored, node).expect("valid config");
        let applied = storage.snapshot.as_ref().map_or(0, |s| s.last_index);
        let slot = self.node(node);
        slot.raw = Some(raw);
        slot.applied = applied;
    }

    fn process_ready(&mut self, node: NodeId, out: &mut String) {
        let Some(raw) = self.node(node).raw.as_mut() else {
            return;
        };
        if !raw.has_ready() {
            return;
        }
        let ready = raw.ready();
        let _ = writeln!(out, "> {node} handling Ready");
        if let Some(soft) = ready.soft_state {
            let _ = writeln!(out, "  Lead:{} State:{:?}", soft.leader, soft.role);
        }
        if let Some(hs) = ready.hard_state {
            let _ = writeln!(
                out,
                "  HardState term={} vote={} commit={}",
                hs.term, hs.vote, hs.commit
            );
        }
        if let Some(meta) = &ready.snapshot {
            let _ = writeln!(out, "  Snapshot {}/{}", meta.last_index, meta.last_term);
        }
        if !ready.entries.is_empty() {
            let entries: Vec<String> = ready.entries.iter().map(describe_entry).collect();
            let _ = writeln!(out, "  Entries: {}", entries.join(", "));
        }
        if !ready.committed_entries.is_empty() {
            let entries: Vec<String> = ready.committed_entries.iter().map(describe_entry).collect();
            let _ = writeln!(out, "  Committed: {}", entries.join(", "));
        }
        for state in &ready.read_states {
            let _ = writeln!(
                out,
                "  ReadState context={} index={}",
                state.context, state.index
            );
        }
        for context in &ready.dropped_reads {
            let _ = writeln!(out, "  DroppedRead context={context}");
        }
        // Persist at once (this harness's disk is instant), then release every message.
        let slot = self.node(node);
        slot.storage
            .persist(&ready.snapshot, &ready.entries, ready.hard_state);
        if let Some(meta) = &ready.snapshot {
            slot.applied = meta.last_index;
        }
        if let Some(last) = ready.committed_entries.last() {
            slot.applied = last.index;
        }
        let applied = slot.applied;
        let raw = slot.raw.as_mut().expect("node is up");
        raw.on_persisted(ready.persist_mark);
        if !ready.committed_entries.is_empty() {
            raw.on_applied(applied);
        }
        for message in ready.messages.into_iter().chain(ready.persisted_messages) {
            let _ = writeln!(out, "  {}", describe(&message));
            self.in_flight.push(message);
        }
        for load in ready.entries_to_load {
            let _ = writeln!(
                out,
                "  LoadEntries to={} {}..={}",
                load.to, load.low, load.high
            );
            let slot = self.node(node);
            let entries: Vec<Entry> = (slot.storage.entries.iter())
                .filter(|e| load.term(e.index) == Some(e.term))
                .cloned()
                .collect();
            let raw = slot.raw.as_mut().expect("node is up");
            raw.entries_loaded(load.to, load.low, entries);
        }
    }

    fn matching(&self, to: NodeId, args: &[&str]) -> Vec<usize> {
        let from = arg(args, "from").map(id);
        let kind = arg(args, "type");
        (0..self.in_flight.len())
            .filter(|&i| {
                let m = &self.in_flight[i];
                m.to == to
                    && from.is_none_or(|f| m.from == f)
                    && kind.is_none_or(|k| m.body.name() == k)
            })
            .collect()
    }

    fn take(&mut self, to: NodeId, args: &[&str]) -> Vec<Message> {
        let picked = self.matching(to, args);
        let mut taken = Vec::new();
        for index in picked.into_iter().rev() {
            taken.push(self.in_flight.remove(index));
        }
        taken.reverse();
        taken
    }

    fn deliver(&mut self, to: NodeId, args: &[&str], out: &mut String) {
        for message in self.take(to, args) {
            let cut = self.isolated.contains(&message.from) || self.isolated.contains(&message.to);
            if cut || self.node(to).raw.is_none() {
                let _ = writeln!(out, "  dropped {}", describe(&message));
                continue;
            }
            let _ = writeln!(out, "  {}", describe(&message));
            let snapshot_from = match &message.body {
                MessageBody::InstallSnapshot { .. } => Some(message.from),
                _ => None,
            };
            if let Err(error) = self.raw(to).step(message) {
                let _ = writeln!(out, "  error: {error}");
            }
            // The transport streamed the snapshot successfully.
            if let Some(leader) = snapshot_from {
                if let Some(raw) = self.node(leader).raw.as_mut() {
                    raw.report_snapshot(to, true);
                }
            }
        }
    }

    fn stabilize(&mut self, out: &mut String) {
        for _ in 0..100 {
            let ids: Vec<NodeId> = (1..=self.nodes.len() as u64).collect();
            let before = out.len();
            for &node in &ids {
                self.process_ready(node, out);
            }
            for &node in &ids {
                if !self.matching(node, &[]).is_empty() {
                    let _ = writeln!(out, "> {node} receiving messages");
                    self.deliver(node, &[], out);
                }
            }
            if out.len() == before {
                return;
            }
        }
        panic!("stabilize did not settle");
    }

    fn status(&mut self) -> String {
        let mut out = String::new();
        for node in 1..=self.nodes.len() as u64 {
            match &self.node(node).raw {
                None => {
                    let _ = writeln!(out, "{node}: down");
                }
                Some(raw) => {
                    let s = raw.status();
                    let _ = writeln!(
                        out,
                        "{node}: {:?} term={} vote={} lead={} commit={} last={}/{}",
                        s.role, s.term, s.vote, s.leader, s.commit_index, s.last_index, s.last_term
                    );
                }
            }
        }
        out
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (command, args) = words.split_first().expect("empty command");
        let mut out = String::new();
        match *command {
            "add-nodes" => out = self.add_nodes(args),
            "campaign" => self.raw(id(args[0])).campaign(),
            "tick" => {
                let count: u64 = args.get(1).map_or(1, |n| n.parse().expect("tick count"));
                for _ in 0..count {
                    self.raw(id(args[0])).tick();
                }
            }
            "tick-all" => {
                let count: u64 = args.first().map_or(1, |n| n.parse().expect("tick count"));
                for _ in 0..count {
                    for node in 1..=self.nodes.len() as u64 {
                        if let Some(raw) = self.node(node).raw.as_mut() {
                            raw.tick();
                        }
                    }
                }
            }
            "propose" => {
                let data = Bytes::from(args[1].to_string());
                out = match self.raw(id(args[0])).propose(data) {
                    Ok((index, term)) => format!("ok index={index} term={term}"),
                    Err(error) => format!("error: {error}"),
                };
            }
            "read-index" => {
                let context: u64 = args[1].parse().expect("context");
                out = match self.raw(id(args[0])).read_index(context) {
                    Ok(()) => "ok".to_string(),
                    Err(error) => format!("error: {error}"),
                };
            }
            "transfer-leader" => {
                let to = id(args[1]);
                out = match self.raw(id(args[0])).transfer_leader(to) {
                    Ok(()) => "ok".to_string(),
                    Err(error) => format!("error: {error}"),
                };
            }
            "process-ready" => {
                for node in args {
                    self.process_ready(id(node), &mut out);
                }
            }
            "deliver-msgs" => self.deliver(id(args[0]), &args[1..], &mut out),
            "drop-msgs" => {
                for message in self.take(id(args[0]), &args[1..]) {
                    let _ = writeln!(out, "  dropped {}", describe(&message));
                }
            }
            "stabilize" => self.stabilize(&mut out),
            "isolate" => {
                self.isolated.insert(id(args[0]));
            }
            "heal" => self.isolated.clear(),
            "crash" => {
                let node = id(args[0]);
                self.node(node).raw = None;
                self.in_flight.retain(|m| m.to != node);
            }
            "restart" => self.start(id(args[0])),
            "report-restarted" => {
                let peer = id(args[1]);
                self.raw(id(args[0])).report_restarted(peer);
            }
            "wipe" => {
                let node = id(args[0]);
                self.node(node).raw = None;
                self.node(node).storage = Storage::default();
                self.in_flight.retain(|m| m.to != node);
            }
            "compact" => {
                let node = id(args[0]);
                let index: u64 = args[1].parse().expect("index");
                let raw = self.raw(node);
                let meta = raw.snapshot_meta(index).expect("index in log");
                drop(raw.compact(meta.clone()));
                let storage = &mut self.node(node).storage;
                storage.entries.retain(|e| e.index > index);
                storage.snapshot = Some(meta);
            }
            "evict" => {
                let bytes: u64 = args[1].parse().expect("bytes");
                let evicted = self.raw(id(args[0])).evict_entries(bytes);
                let indexes: Vec<String> = evicted.iter().map(|e| e.index.to_string()).collect();
                out = format!("evicted [{}]", indexes.join(" "));
            }
            "status" => out = self.status(),
            "propose-conf-change" => {
                let mode = match arg(args, "mode") {
                    Some("simple") => ConfChangeMode::Simple,
                    _ => ConfChangeMode::Joint,
                };
                let ops = args[1..]
                    .iter()
                    .filter(|a| !a.contains('='))
                    .map(|op| {
                        let node = id(&op[1..]);
                        match &op[..1] {
                            "l" => ConfChangeOp::AddLearner(node),
                            "v" => ConfChangeOp::Promote(node),
                            "r" => ConfChangeOp::Remove(node),
                            other => panic!("unknown conf change op {other:?}"),
                        }
                    })
                    .collect();
                let change = ConfChange { ops, mode };
                out = match self.raw(id(args[0])).propose_conf_change(&change) {
                    Ok((index, term)) => format!("ok index={index} term={term}"),
                    Err(error) => format!("error: {error}"),
                };
            }
            "conf" => {
                for node in 1..=self.nodes.len() as u64 {
                    let line = match &self.node(node).raw {
                        None => format!("{node}: down"),
                        Some(raw) => format!(
                            "{node}: {} (index {})",
                            raw.membership(),
                            raw.membership_index()
                        ),
                    };
                    let _ = writeln!(out, "{line}");
                }
            }
            "raft-log" => {
                let raw = self.raw(id(args[0]));
                let entries: Vec<String> = raw.log_entries().map(describe_entry).collect();
                out = entries.join("\n");
            }
            other => panic!("unknown command {other:?}"),
        }
        if out.is_empty() {
            "ok".to_string()
        } else {
            out.trim_end().to_string()
        }
    }
}

enum Item {
    Comment(String),
    Block { command: String, expected: String },
}

fn parse(text: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            items.push(Item::Comment(line.to_string()));
            continue;
        }
        let command = line.to_string();
        assert_eq!(
            lines.next(),
            Some("----"),
            "expected ---- after {command:?}"
        );
        let mut expected = Vec::new();
        while let Some(&next) = lines.peek() {
            if next.is_empty() {
                break;
            }
            expected.push(next);
            lines.next();
        }
        items.push(Item::Block {
            command,
            expected: expected.join("\n"),
        });
    }
    items
}

fn run_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut env = Env::default();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    for item in parse(&text) {
        match item {
            Item::Comment(line) => {
                rewritten.push_str(&line);
                rewritten.push('\n');
            }
            Item::Block { command, expected } => {
                let actual = env.run(&command);
                if actual != expected {
                    failures.push(format!(
                        "{}: `{command}`\n--- expected\n{expected}\n--- actual\n{actual}",
                        path.display()
                    ));
                }
                let _ = write!(rewritten, "{command}\n----\n{actual}\n\n");
            }
        }
    }
    if std::env::var("REWRITE").is_ok() {
        return std::fs::write(path, rewritten).map_err(|e| e.to_string());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n\n"))
    }
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

#[test]
fn interaction_scripts() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the six corner-case scripts, found {}",
        files.len()
    );
    let failures: Vec<String> = files.iter().filter_map(|f| run_file(f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
