//! The transaction dependency graph, its strongly connected components, and cycle search.

use std::collections::VecDeque;

use crate::fxhash::{FxHashMap, FxHashSet};
use crate::history::Outcome;
use crate::report::{AnomalySink, CycleStep};
use crate::value::Value;

use super::{anomaly, Analysis};

/// Kinds of edges, as bits so a search can allow a set of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Ww = 1,
    Wr = 2,
    Rw = 4,
    Realtime = 8,
    Process = 16,
}

const WW: u8 = EdgeKind::Ww as u8;
const WR: u8 = EdgeKind::Wr as u8;
const RW: u8 = EdgeKind::Rw as u8;
const ORDER: u8 = EdgeKind::Realtime as u8 | EdgeKind::Process as u8;
const NO_KEY: u32 = u32::MAX;
const UNVISITED: u32 = u32::MAX;
/// Start nodes tried per component when looking for a short cycle through one of them.
const CYCLE_SEARCH_STARTS_MAX: usize = 8;
/// rw edges tried per component when looking for a cycle with exactly one rw edge.
const SINGLE_RW_EDGES_MAX: usize = 64;

struct RawEdge {
    from: u32,
    to: u32,
    kind: u8,
    key: u32,
    /// Position in the key's version order that explains the edge (see `explain`).
    position: u32,
}

/// Adjacency in compressed rows: the edges of node `n` are `offsets[n]..offsets[n + 1]`.
pub struct Graph {
    offsets: Vec<u32>,
    sources: Vec<u32>,
    targets: Vec<u32>,
    kinds: Vec<u8>,
    keys: Vec<u32>,
    positions: Vec<u32>,
}

impl Graph {
    pub fn build(analysis: &Analysis<'_>) -> Graph {
        let mut edges = Vec::new();
        data_edges(analysis, &mut edges);
        realtime_edges(analysis, &mut edges);
        process_edges(analysis, &mut edges);
        Graph::from_edges(analysis.txns.len(), edges)
    }

    /// Counting sort by source node: linear, where a comparison sort of millions of edges
    /// was a visible share of the check.
    fn from_edges(node_count: usize, edges: Vec<RawEdge>) -> Graph {
        let mut offsets = vec![0u32; node_count + 1];
        for edge in &edges {
            offsets[edge.from as usize + 1] += 1;
        }
        for node in 0..node_count {
            offsets[node + 1] += offsets[node];
        }
        let mut cursor = offsets.clone();
        let count = edges.len();
        let mut graph = Graph {
            offsets,
            sources: vec![0; count],
            targets: vec![0; count],
            kinds: vec![0; count],
            keys: vec![0; count],
            positions: vec![0; count],
        };
        for edge in edges {
            let slot = cursor[edge.from as usize] as usize;
            cursor[edge.from as usize] += 1;
            graph.sources[slot] = edge.from;
            graph.targets[slot] = edge.to;
            graph.kinds[slot] = edge.kind;
            graph.keys[slot] = edge.key;
            graph.positions[slot] = edge.position;
        }
        graph
    }

    pub fn edge_count(&self) -> usize {
        self.targets.len()
    }

    fn edges_of(&self, node: u32) -> std::ops::Range<usize> {
        self.offsets[node as usize] as usize..self.offsets[node as usize + 1] as usize
    }
}

fn live(analysis: &Analysis<'_>, txn: u32) -> bool {
    analysis.txns[txn as usize].outcome != Outcome::Fail
}

/// ww, wr and rw edges of every key, from its version order and its compatible reads.
fn data_edges(analysis: &Analysis<'_>, edges: &mut Vec<RawEdge>) {
    let happened = observed_txns(analysis);
    for key in 0..analysis.orders.len() {
        let unread = unread_appenders(analysis, key, &happened);
        order_edges(analysis, key, &unread, edges);
        for &(reader, mop) in &analysis.reads[key] {
            if !analysis.incompatible.contains(&(reader, mop)) {
                read_edges(analysis, key, (reader, mop), &unread, edges);
            }
        }
    }
}

/// The live transaction that appended element `position` of `key`'s version order.
fn writer_at(analysis: &Analysis<'_>, key: usize, position: usize) -> Option<u32> {
    analysis.writers[key]
        .get(&analysis.orders[key][position])
        .map(|writer| writer.txn)
        .filter(|&txn| live(analysis, txn))
}

/// ww edges along the version order, and from its last appender to every unread appender.
fn order_edges(analysis: &Analysis<'_>, key: usize, unread: &[u32], edges: &mut Vec<RawEdge>) {
    let length = analysis.orders[key].len();
    let edge = |from, to, position: usize| RawEdge {
        from,
        to,
        kind: WW,
        key: key as u32,
        position: position as u32,
    };
    for position in 1..length {
        let from = writer_at(analysis, key, position - 1);
        let to = writer_at(analysis, key, position);
        if let (Some(from), Some(to)) = (from, to) {
            if from != to {
                edges.push(edge(from, to, position));
            }
        }
    }
    let last = length
        .checked_sub(1)
        .and_then(|at| writer_at(analysis, key, at));
    for &to in unread {
        if let Some(from) = last.filter(|&from| from != to) {
            edges.push(edge(from, to, length));
        }
    }
}

/// The wr edge into a compatible read and its rw edges: to the appender of the next element,
/// and to every unread appender.
fn read_edges(
    analysis: &Analysis<'_>,
    key: usize,
    (reader, mop): (u32, u32),
    unread: &[u32],
    edges: &mut Vec<RawEdge>,
) {
    let edge = |from, to, kind, position: usize| RawEdge {
        from,
        to,
        kind,
        key: key as u32,
        position: position as u32,
    };
    let order_length = analysis.orders[key].len();
    let length = analysis.read_elements(reader, mop).len();
    // A shorter read reaches the unread appenders through its rw edge to the next element's
    // appender and the ww edges along the order: only full-length reads need direct edges.
    if length == order_length {
        for &to in unread.iter().filter(|&&to| to != reader) {
            edges.push(edge(reader, to, RW, order_length));
        }
    }
    // wr from the last element the reader did not append itself.
    let observed = (0..length)
        .rev()
        .find(|&position| writer_at(analysis, key, position) != Some(reader));
    if let Some(position) = observed {
        if let Some(from) = writer_at(analysis, key, position) {
            edges.push(edge(from, reader, WR, position));
        }
    }
    if length < order_length {
        if let Some(to) = writer_at(analysis, key, length).filter(|&to| to != reader) {
            edges.push(edge(reader, to, RW, length));
        }
    }
}

/// Transactions some read shows an append of: they happened, even if their outcome is unknown.
fn observed_txns(analysis: &Analysis<'_>) -> FxHashSet<u32> {
    let mut observed = FxHashSet::default();
    for (key, order) in analysis.orders.iter().enumerate() {
        for element in order.iter() {
            if let Some(writer) = analysis.writers[key].get(element) {
                observed.insert(writer.txn);
            }
        }
    }
    observed
}

/// Transactions that happened (acknowledged, or `info` but seen by a read) none of whose
/// appends to `key` any read shows. (One with some appends shown and others not is a G1b or
/// torn read, reported as such.)
fn unread_appenders(analysis: &Analysis<'_>, key: usize, happened: &FxHashSet<u32>) -> Vec<u32> {
    let order: FxHashSet<&Value> = analysis.orders[key].iter().collect();
    let seen: FxHashSet<u32> = analysis.orders[key]
        .iter()
        .filter_map(|element| analysis.writers[key].get(element))
        .map(|writer| writer.txn)
        .collect();
    let mut unread: Vec<u32> = analysis.writers[key]
        .iter()
        .filter(|(element, writer)| {
            let outcome = analysis.txns[writer.txn as usize].outcome;
            !order.contains(*element)
                && !seen.contains(&writer.txn)
                && (outcome == Outcome::Ok
                    || (outcome == Outcome::Info && happened.contains(&writer.txn)))
        })
        .map(|(_, writer)| writer.txn)
        .collect();
    unread.sort_unstable();
    unread.dedup();
    unread
}

/// Realtime edges, transitively reduced as Elle does: a frontier holds the completed
/// transactions not yet followed by a completed successor; each invocation gets an edge from
/// every frontier member, and a completion replaces its own predecessors in the frontier.
fn realtime_edges(analysis: &Analysis<'_>, edges: &mut Vec<RawEdge>) {
    let mut events: Vec<(usize, u32)> = Vec::with_capacity(analysis.txns.len() * 2);
    for (index, txn) in analysis.txns.iter().enumerate() {
        if txn.outcome == Outcome::Fail {
            continue;
        }
        events.push((txn.invoke_event, index as u32 * 2));
        if txn.outcome == Outcome::Ok {
            events.push((txn.complete_event, index as u32 * 2 + 1));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<u32> = Vec::new();
    let mut in_frontier = vec![false; analysis.txns.len()];
    let mut incoming: Vec<(usize, usize)> = vec![(0, 0); analysis.txns.len()];
    for (_, code) in events {
        let txn = code / 2;
        if code.is_multiple_of(2) {
            let start = edges.len();
            for &from in &frontier {
                let (kind, key) = (EdgeKind::Realtime as u8, NO_KEY);
                edges.push(RawEdge {
                    from,
                    to: txn,
                    kind,
                    key,
                    position: 0,
                });
            }
            incoming[txn as usize] = (start, edges.len());
            continue;
        }
        let (start, end) = incoming[txn as usize];
        for edge in &edges[start..end] {
            in_frontier[edge.from as usize] = false;
        }
        frontier.retain(|&member| in_frontier[member as usize]);
        frontier.push(txn);
        in_frontier[txn as usize] = true;
    }
}

/// Each process's consecutive transactions, unless the first one's outcome is unknown (an
/// info transaction may still take effect later).
fn process_edges(analysis: &Analysis<'_>, edges: &mut Vec<RawEdge>) {
    let mut last: FxHashMap<u64, u32> = FxHashMap::default();
    for (index, txn) in analysis.txns.iter().enumerate() {
        if txn.outcome == Outcome::Fail {
            continue;
        }
        let index = index as u32;
        if let Some(previous) = last.insert(txn.process, index) {
            if analysis.txns[previous as usize].outcome == Outcome::Ok {
                let (kind, key) = (EdgeKind::Process as u8, NO_KEY);
                edges.push(RawEdge {
                    from: previous,
                    to: index,
                    kind,
                    key,
                    position: 0,
                });
            }
        }
    }
}

/// Node sets by generation stamp, so membership resets in O(1).
struct Marks {
    stamps: Vec<u32>,
    current: u32,
}

impl Marks {
    fn new(node_count: usize) -> Self {
        Marks {
            stamps: vec![0; node_count],
            current: 0,
        }
    }

    fn set(&mut self, nodes: &[u32]) {
        self.current += 1;
        for &node in nodes {
            self.stamps[node as usize] = self.current;
        }
    }

    fn has(&self, node: u32) -> bool {
        self.stamps[node as usize] == self.current
    }
}

/// Iterative Tarjan (no recursion: components can hold 100k+ transactions).
struct Tarjan {
    index: Vec<u32>,
    low: Vec<u32>,
    on_stack: Vec<bool>,
    stack: Vec<u32>,
    frames: Vec<(u32, usize)>,
    counter: u32,
}

impl Tarjan {
    fn new(node_count: usize) -> Self {
        Tarjan {
            index: vec![UNVISITED; node_count],
            low: vec![0; node_count],
            on_stack: vec![false; node_count],
            stack: Vec::new(),
            frames: Vec::new(),
            counter: 0,
        }
    }

    fn enter(&mut self, graph: &Graph, node: u32) {
        self.index[node as usize] = self.counter;
        self.low[node as usize] = self.counter;
        self.counter += 1;
        self.stack.push(node);
        self.on_stack[node as usize] = true;
        self.frames.push((node, graph.edges_of(node).start));
    }

    /// Components with more than one node among `nodes` (those `member` accepts), following
    /// only edges whose kind is in `mask`.
    fn components(
        &mut self,
        graph: &Graph,
        nodes: &[u32],
        member: &Marks,
        mask: u8,
    ) -> Vec<Vec<u32>> {
        let mut found = Vec::new();
        for &root in nodes {
            if self.index[root as usize] != UNVISITED {
                continue;
            }
            self.enter(graph, root);
            while let Some(&(node, cursor)) = self.frames.last() {
                if cursor < graph.edges_of(node).end {
                    if let Some(frame) = self.frames.last_mut() {
                        frame.1 += 1;
                    }
                    let target = graph.targets[cursor];
                    if graph.kinds[cursor] & mask == 0 || !member.has(target) {
                        continue;
                    }
                    if self.index[target as usize] == UNVISITED {
                        self.enter(graph, target);
                    } else if self.on_stack[target as usize] {
                        let low = self.low[node as usize].min(self.index[target as usize]);
                        self.low[node as usize] = low;
                    }
                    continue;
                }
                self.frames.pop();
                self.leave(node, &mut found);
            }
        }
        for &node in nodes {
            self.index[node as usize] = UNVISITED;
        }
        found
    }

    fn leave(&mut self, node: u32, found: &mut Vec<Vec<u32>>) {
        if let Some(&(parent, _)) = self.frames.last() {
            let low = self.low[parent as usize].min(self.low[node as usize]);
            self.low[parent as usize] = low;
        }
        if self.low[node as usize] != self.index[node as usize] {
            return;
        }
        let mut component = Vec::new();
        while let Some(member) = self.stack.pop() {
            self.on_stack[member as usize] = false;
            component.push(member);
            if member == node {
                break;
            }
        }
        if component.len() > 1 {
            found.push(component);
        }
    }
}

/// Breadth-first search for shortest paths, with reusable scratch space.
struct Bfs {
    seen: Marks,
    parent_edge: Vec<u32>,
    queue: VecDeque<u32>,
}

impl Bfs {
    fn new(node_count: usize) -> Self {
        Bfs {
            seen: Marks::new(node_count),
            parent_edge: vec![0; node_count],
            queue: VecDeque::new(),
        }
    }

    /// Edge indices of a shortest path from `source` to `target` (a cycle if they are equal)
    /// through nodes `member` accepts, along edges whose kind is in `mask`.
    fn path(
        &mut self,
        graph: &Graph,
        source: u32,
        target: u32,
        member: &Marks,
        mask: u8,
    ) -> Option<Vec<u32>> {
        self.seen.set(&[source]);
        self.queue.clear();
        self.queue.push_back(source);
        while let Some(node) = self.queue.pop_front() {
            for edge in graph.edges_of(node) {
                let next = graph.targets[edge];
                if graph.kinds[edge] & mask == 0 || !member.has(next) {
                    continue;
                }
                if next == target {
                    return Some(self.unwind(graph, source, node, edge as u32));
                }
                if !self.seen.has(next) {
                    self.seen.stamps[next as usize] = self.seen.current;
                    self.parent_edge[next as usize] = edge as u32;
                    self.queue.push_back(next);
                }
            }
        }
        None
    }

    fn unwind(&self, graph: &Graph, source: u32, last_node: u32, last_edge: u32) -> Vec<u32> {
        let mut path = vec![last_edge];
        let mut node = last_node;
        while node != source {
            let edge = self.parent_edge[node as usize];
            path.push(edge);
            node = graph.sources[edge as usize];
        }
        path.reverse();
        path
    }
}

/// Scratch state shared by all cycle searches.
struct Searcher<'g> {
    graph: &'g Graph,
    tarjan: Tarjan,
    bfs: Bfs,
    scc: Marks,
    sub: Marks,
}

fn shorter(best: Option<Vec<u32>>, candidate: Option<Vec<u32>>) -> Option<Vec<u32>> {
    match (best, candidate) {
        (Some(best), Some(candidate)) if candidate.len() < best.len() => Some(candidate),
        (None, candidate) => candidate,
        (best, _) => best,
    }
}

impl Searcher<'_> {
    /// A short cycle inside the component `nodes` using only `mask` edges.
    fn cycle(&mut self, nodes: &[u32], mask: u8) -> Option<Vec<u32>> {
        let mut parts = self.tarjan.components(self.graph, nodes, &self.scc, mask);
        parts.sort_by_key(Vec::len);
        let part = parts.first()?;
        self.sub.set(part);
        let mut best = None;
        for &start in part.iter().take(CYCLE_SEARCH_STARTS_MAX) {
            let found = self.bfs.path(self.graph, start, start, &self.sub, mask);
            best = shorter(best, found);
        }
        best
    }

    /// A short cycle with exactly one rw edge, the rest from `mask`.
    fn single_rw_cycle(&mut self, nodes: &[u32], mask: u8) -> Option<Vec<u32>> {
        let mut best: Option<Vec<u32>> = None;
        let mut tried = 0;
        for &node in nodes {
            for edge in self.graph.edges_of(node) {
                let target = self.graph.targets[edge];
                if self.graph.kinds[edge] != RW || !self.scc.has(target) {
                    continue;
                }
                if tried == SINGLE_RW_EDGES_MAX {
                    return best;
                }
                tried += 1;
                let back = self.bfs.path(self.graph, target, node, &self.scc, mask);
                let cycle = back.map(|path| {
                    let mut cycle = vec![edge as u32];
                    cycle.extend(path);
                    cycle
                });
                best = shorter(best, cycle);
            }
        }
        best
    }

    /// The most severe cycle of a strongly connected component: first without realtime and
    /// process edges, each time trying G0, G1c, G-single, then any cycle.
    fn worst_cycle(&mut self, nodes: &[u32]) -> Option<Vec<u32>> {
        self.scc.set(nodes);
        for order in [0, ORDER] {
            let found = self
                .cycle(nodes, WW | order)
                .or_else(|| self.cycle(nodes, WW | WR | order))
                .or_else(|| self.single_rw_cycle(nodes, WW | WR | order))
                .or_else(|| self.cycle(nodes, WW | WR | RW | order));
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Names a cycle by its edges, as Elle does.
fn classify(graph: &Graph, cycle: &[u32]) -> String {
    let kinds: Vec<u8> = cycle
        .iter()
        .map(|&edge| graph.kinds[edge as usize])
        .collect();
    let rw = kinds.iter().filter(|&&kind| kind == RW).count();
    let base = match rw {
        0 if kinds.iter().all(|&kind| kind & (WW | ORDER) != 0) => "G0",
        0 => "G1c",
        1 => "G-single",
        _ => "G2-item",
    };
    if kinds.contains(&(EdgeKind::Realtime as u8)) {
        format!("{base}-realtime")
    } else if kinds.contains(&(EdgeKind::Process as u8)) {
        format!("{base}-process")
    } else {
        base.to_string()
    }
}

fn explain(analysis: &Analysis<'_>, graph: &Graph, edge: usize) -> CycleStep {
    let from = analysis.txns[graph.sources[edge] as usize].call;
    let to = analysis.txns[graph.targets[edge] as usize].call;
    let key = graph.keys[edge];
    let position = graph.positions[edge] as usize;
    let element = |at: usize| analysis.orders[key as usize][at].to_string();
    let beyond = key != NO_KEY && position >= analysis.orders[key as usize].len();
    let k = if key == NO_KEY {
        String::new()
    } else {
        analysis.keys[key as usize].to_string()
    };
    let (name, explanation) = match graph.kinds[edge] {
        WW if beyond => (
            "ww",
            format!(
                "call {to} appended to key {k} an element no read shows, so after the last \
                 element read ({}), which call {from} appended",
                element(position - 1)
            ),
        ),
        RW if beyond => (
            "rw",
            format!(
                "call {from} read key {k} without the element call {to} appended (no read \
                 shows it, so it came after every element read)"
            ),
        ),
        WW => (
            "ww",
            format!(
                "call {to} appended {} to key {k} right after call {from} appended {}",
                element(position),
                element(position - 1)
            ),
        ),
        WR => (
            "wr",
            format!(
                "call {to} read key {k} up to {}, appended by call {from}",
                element(position)
            ),
        ),
        RW => (
            "rw",
            format!(
                "call {from} read key {k} without {}, which call {to} appended next",
                element(position)
            ),
        ),
        kind if kind == EdgeKind::Realtime as u8 => (
            "realtime",
            format!("call {from} completed before call {to} was invoked"),
        ),
        _ => (
            "process",
            format!("call {from} ran before call {to} on the same process"),
        ),
    };
    let key = (key != NO_KEY).then(|| analysis.keys[key as usize].clone());
    CycleStep {
        from,
        to,
        edge: name.to_string(),
        key,
        explanation,
    }
}

/// Finds the strongly connected components and reports the worst cycle of each.
pub fn cycles(analysis: &Analysis<'_>, graph: &Graph, sink: &mut AnomalySink) {
    let node_count = analysis.txns.len();
    let all: Vec<u32> = (0..node_count as u32).collect();
    let mut everything = Marks::new(node_count);
    everything.set(&all);
    let mut tarjan = Tarjan::new(node_count);
    let components = tarjan.components(graph, &all, &everything, WW | WR | RW | ORDER);
    let mut searcher = Searcher {
        graph,
        tarjan,
        bfs: Bfs::new(node_count),
        scc: Marks::new(node_count),
        sub: Marks::new(node_count),
    };
    for component in components {
        let Some(cycle) = searcher.worst_cycle(&component) else {
            continue;
        };
        let kind = classify(graph, &cycle);
        if !sink.wants(&kind) {
            continue;
        }
        let steps: Vec<CycleStep> = cycle
            .iter()
            .map(|&edge| explain(analysis, graph, edge as usize))
            .collect();
        let txns: Vec<u32> = cycle
            .iter()
            .map(|&edge| graph.sources[edge as usize])
            .collect();
        let explanation = format!(
            "{kind} cycle of {} transactions: {}",
            txns.len(),
            steps
                .iter()
                .map(|step| step.explanation.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let mut found = anomaly(analysis, &kind, None, explanation, &txns);
        found.cycle = steps;
        sink.push(found);
    }
}
