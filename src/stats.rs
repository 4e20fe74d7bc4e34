//! Counters sessions bump without locks: statements per node and per connection kind,
//! readers per node (for `least_outstanding`), the round-robin turn, routing decisions,
//! clients, and per node × route request statistics (count, transactions, bytes, time,
//! p99) for the admin console and `/metrics`.
//!
//! Node indexes are topology indexes and stay stable for the life of the process; a
//! configuration reload may append nodes, so the per-node storage grows
//! ([`Stats::ensure_nodes`]) and is never sized once for good.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;

use crate::route::{Conn, Decision};

/// Longest query time the p99 histogram tells apart (longer ones count as this long).
const LONGEST_RECORDED: Duration = Duration::from_secs(3600);

/// Whether a request was served as a read or a write: a write is a request the
/// classifier sent to the primary for what it does; everything else is a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Served {
    /// Nothing in it needed the primary.
    Read,
    /// Something in it needed the primary.
    Write,
}

impl Served {
    /// Both, in the order of [`StatsSnapshot::per_node`].
    pub const ALL: [Served; 2] = [Served::Read, Served::Write];

    /// The label value: `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Read => "read",
            Served::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A client request answered by its ReadyForQuery.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    /// From the request's first byte sent to the server to its ReadyForQuery.
    pub elapsed: Duration,
    /// Bytes the client sent for it.
    pub bytes_received: u64,
    /// Bytes of the answer sent to the client.
    pub bytes_sent: u64,
    /// Its ReadyForQuery ended a transaction or an autocommit statement.
    pub ends_transaction: bool,
}

/// Requests served by one node as one kind.
#[derive(Debug)]
struct RouteCounters {
    queries: AtomicU64,
    transactions: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    nanos: AtomicU64,
    /// Query times in microseconds; locked only to record or read one value. `None` if
    /// the histogram could not be made (it always can with these bounds).
    times: Mutex<Option<Histogram<u64>>>,
}

/// Microsecond latencies up to [`LONGEST_RECORDED`], two significant digits: p99 within
/// 1%, in about 26 KiB. `None` if it could not be made (it always can with these bounds).
fn latencies() -> Option<Histogram<u64>> {
    let longest = u64::try_from(LONGEST_RECORDED.as_micros()).unwrap_or(u64::MAX);
    Histogram::new_with_bounds(1, longest, 2).ok()
}

impl RouteCounters {
    fn new() -> RouteCounters {
        RouteCounters {
            queries: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            times: Mutex::new(latencies()),
        }
    }

    fn lock_times(&self) -> std::sync::MutexGuard<'_, Option<Histogram<u64>>> {
        // A poisoned lock only means a panic elsewhere mid-record: the counts stay usable.
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-node counters.
#[derive(Debug)]
struct NodeCounters {
    statements: AtomicU64,
    readers: AtomicUsize,
    served: [RouteCounters; 2],
    waits: AtomicU64,
    waits_missed: AtomicU64,
    wait_nanos: AtomicU64,
    /// Wait times in microseconds, as [`RouteCounters::times`].
    wait_times: Mutex<Option<Histogram<u64>>>,
    checked_reads: AtomicU64,
    own_write_reads: AtomicU64,
}

impl NodeCounters {
    fn new() -> NodeCounters {
        NodeCounters {
            statements: AtomicU64::new(0),
            readers: AtomicUsize::new(0),
            served: [RouteCounters::new(), RouteCounters::new()],
            waits: AtomicU64::new(0),
            waits_missed: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            wait_times: Mutex::new(latencies()),
            checked_reads: AtomicU64::new(0),
            own_write_reads: AtomicU64::new(0),
        }
    }
}

/// What read-your-writes did on one node, since the proxy started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FreshnessStats {
    /// Reads that waited for this standby to be seen past the client's write.
    pub waits: u64,
    /// Of those, the ones it was not seen past in time (the read went to the primary).
    pub waits_missed: u64,
    /// Time those reads spent waiting.
    pub wait_time: Duration,
    /// The 99th percentile of one read's wait.
    pub wait_p99: Duration,
    /// Reads this standby served after such a wait.
    pub checked_reads: u64,
    /// Reads this node (the primary) served because no standby had the client's write.
    pub own_write_reads: u64,
}

/// Routing counters for the whole proxy.
pub struct Stats {
    /// By topology index; replaced by a longer copy when nodes are appended.
    nodes: ArcSwap<Vec<Arc<NodeCounters>>>,
    /// Serializes growers, so two never drop each other's nodes.
    grow: Mutex<()>,
    to_primary: AtomicU64,
    to_standby: AtomicU64,
    turn: AtomicU64,
    pinned: AtomicU64,
    decisions: [AtomicU64; Decision::ALL.len()],
    clients: AtomicU64,
    active_clients: AtomicU64,
    /// `pgsplit_query_duration_seconds` by [`Served`]; no-ops when metrics are off.
    query_seconds: [metrics::Histogram; 2],
}

/// Requests one node served as one kind, since the proxy started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    /// Topology index of the node (configuration order).
    pub node_index: usize,
    /// Reads or writes.
    pub route: Served,
    /// Requests answered (a Query message, or an extended-protocol batch up to Sync).
    pub queries: u64,
    /// ReadyForQuery answers that ended a transaction or an autocommit statement.
    pub transactions: u64,
    /// Bytes clients sent for these requests.
    pub bytes_received: u64,
    /// Bytes of their answers sent to clients.
    pub bytes_sent: u64,
    /// Time from each request sent to its ReadyForQuery, added up.
    pub total_query_time: Duration,
    /// `total_query_time / queries`.
    pub avg_query_time: Duration,
    /// 99th percentile of the query time (within 1%).
    pub p99_query_time: Duration,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests sent to each node, in configuration order.
    pub statements_per_node: Vec<u64>,
    /// Requests sent over clients' primary connections.
    pub to_primary: u64,
    /// Requests sent over clients' standby connections.
    pub to_standby: u64,
    /// Clients holding a server connection for a pin (temp tables, LISTEN, session
    /// advisory locks, WITH HOLD cursors, SQL PREPARE) in transaction pooling.
    pub pinned_clients: u64,
    /// Per node and route: reads then writes of node 0, then of node 1, and so on.
    pub per_node: Vec<NodeStats>,
    /// Requests sent, by where they went and why, in [`Decision::ALL`] order.
    pub decisions: Vec<(Decision, u64)>,
    /// Clients logged in.
    pub clients: u64,
    /// Clients holding a server connection (for a request, a transaction or a pin).
    pub active_clients: u64,
    /// Read-your-writes, per node in configuration order.
    pub freshness: Vec<FreshnessStats>,
}

impl StatsSnapshot {
    /// Reads node `node` served.
    pub fn reads_served(&self, node: usize) -> u64 {
        self.served(node, Served::Read)
    }

    /// Writes node `node` served.
    pub fn writes_served(&self, node: usize) -> u64 {
        self.served(node, Served::Write)
    }

    fn served(&self, node: usize, route: Served) -> u64 {
        self.per_node
            .iter()
            .find(|s| s.node_index == node && s.route == route)
            .map_or(0, |s| s.queries)
    }

    /// How many requests were sent for `decision`.
    pub fn decided(&self, decision: Decision) -> u64 {
        self.decisions
            .iter()
            .find(|(d, _)| *d == decision)
            .map_or(0, |(_, n)| *n)
    }
}

impl Stats {
    /// Counters for `nodes` nodes; query times also go to `query_seconds` (read, write).
    pub fn new(nodes: usize, query_seconds: [metrics::Histogram; 2]) -> Stats {
        Stats {
            nodes: ArcSwap::from_pointee(
                (0..nodes).map(|_| Arc::new(NodeCounters::new())).collect(),
            ),
            grow: Mutex::new(()),
            to_primary: AtomicU64::new(0),
            to_standby: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            decisions: std::array::from_fn(|_| AtomicU64::new(0)),
            clients: AtomicU64::new(0),
            active_clients: AtomicU64::new(0),
            query_seconds,
        }
    }

    /// Makes room for at least `nodes` nodes (a reload appended some); counters of the
    /// nodes already known carry on.
    pub fn ensure_nodes(&self, nodes: usize) {
        let _growing = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.nodes.load();
        if current.len() >= nodes {
            return;
        }
        let mut grown = Vec::with_capacity(nodes);
        grown.extend(current.iter().cloned());
        grown.resize_with(nodes, || Arc::new(NodeCounters::new()));
        self.nodes.store(Arc::new(grown));
    }

    /// Runs `f` on node `node`'s counters, growing the storage for a node not seen yet.
    fn with_node(&self, node: usize, f: impl FnOnce(&NodeCounters)) {
        if let Some(n) = self.nodes.load().get(node) {
            return f(n);
        }
        self.ensure_nodes(node + 1);
        if let Some(n) = self.nodes.load().get(node) {
            f(n);
        }
    }

    /// Counts a request sent over `conn` to node `node`.
    pub fn record(&self, conn: Conn, node: usize) {
        match conn {
            Conn::Primary => &self.to_primary,
            Conn::Standby => &self.to_standby,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.with_node(node, |n| {
            n.statements.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Counts a request sent for `decision`.
    pub fn decided(&self, decision: Decision) {
        // Decision::ALL lists the variants in declaration order.
        if let Some(counter) = self.decisions.get(decision as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request node `node` served as `route` got its ReadyForQuery.
    pub fn answered(&self, node: usize, route: Served, answer: Answered) {
        let nanos = u64::try_from(answer.elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.with_node(node, |n| {
            let c = &n.served[route.index()];
            c.queries.fetch_add(1, Ordering::Relaxed);
            if answer.ends_transaction {
                c.transactions.fetch_add(1, Ordering::Relaxed);
            }
            c.bytes_received
                .fetch_add(answer.bytes_received, Ordering::Relaxed);
            c.bytes_sent.fetch_add(answer.bytes_sent, Ordering::Relaxed);
            c.nanos.fetch_add(nanos, Ordering::Relaxed);
            let micros = u64::try_from(answer.elapsed.as_micros()).unwrap_or(u64::MAX);
            if let Some(times) = c.lock_times().as_mut() {
                times.saturating_record(micros.max(1));
            }
        });
        self.query_seconds[route.index()].record(answer.elapsed.as_secs_f64());
    }

    /// A read waited `waited` for standby `node` to be seen past the client's write;
    /// `reached`: it was.
    pub fn read_your_writes_waited(&self, node: usize, waited: Duration, reached: bool) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.with_node(node, |n| {
            n.waits.fetch_add(1, Ordering::Relaxed);
            n.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
            let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            let mut times = n.wait_times.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(times) = times.as_mut() {
                times.saturating_record(micros.max(1));
            }
            if !reached {
                n.waits_missed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Standby `node` serves a read after it was seen past the client's write.
    pub fn read_your_writes_checked(&self, node: usize) {
        self.with_node(node, |n| {
            n.checked_reads.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// The primary, node `node`, serves a read because no standby had the client's write.
    pub fn read_your_writes_to_primary(&self, node: usize) {
        self.with_node(node, |n| {
            n.own_write_reads.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A client logged in (`true`) or left (`false`).
    pub fn set_connected(&self, connected: bool) {
        adjust(&self.clients, connected);
    }

    /// A client started or stopped holding a server connection.
    pub fn set_active(&self, active: bool) {
        adjust(&self.active_clients, active);
    }

    /// A client started reading from `node`.
    pub fn acquire(&self, node: usize) {
        self.with_node(node, |n| {
            n.readers.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A client stopped reading from `node`.
    pub fn release(&self, node: usize) {
        self.with_node(node, |n| {
            let _ = n
                .readers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        });
    }

    /// Clients reading from each node.
    pub fn outstanding(&self) -> Vec<usize> {
        self.nodes
            .load()
            .iter()
            .map(|n| n.readers.load(Ordering::Relaxed))
            .collect()
    }

    /// A client started or stopped holding a connection for a pin.
    pub fn set_pinned(&self, pinned: bool) {
        adjust(&self.pinned, pinned);
    }

    /// The next round-robin turn.
    pub fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let nodes = self.nodes.load_full();
        let mut per_node = Vec::with_capacity(nodes.len() * 2);
        for (node_index, n) in nodes.iter().enumerate() {
            for route in Served::ALL {
                let c = &n.served[route.index()];
                let queries = c.queries.load(Ordering::Relaxed);
                let nanos = c.nanos.load(Ordering::Relaxed);
                let p99 = c
                    .lock_times()
                    .as_ref()
                    .filter(|h| !h.is_empty())
                    .map_or(0, |h| h.value_at_quantile(0.99));
                per_node.push(NodeStats {
                    node_index,
                    route,
                    queries,
                    transactions: c.transactions.load(Ordering::Relaxed),
                    bytes_received: c.bytes_received.load(Ordering::Relaxed),
                    bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                    total_query_time: Duration::from_nanos(nanos),
                    avg_query_time: Duration::from_nanos(nanos / queries.max(1)),
                    p99_query_time: Duration::from_micros(p99),
                });
            }
        }
        StatsSnapshot {
            statements_per_node: nodes
                .iter()
                .map(|n| n.statements.load(Ordering::Relaxed))
                .collect(),
            to_primary: self.to_primary.load(Ordering::Relaxed),
            to_standby: self.to_standby.load(Ordering::Relaxed),
            pinned_clients: self.pinned.load(Ordering::Relaxed),
            per_node,
            decisions: Decision::ALL
                .iter()
                .zip(&self.decisions)
                .map(|(d, n)| (*d, n.load(Ordering::Relaxed)))
                .collect(),
            clients: self.clients.load(Ordering::Relaxed),
            active_clients: self.active_clients.load(Ordering::Relaxed),
            freshness: nodes
                .iter()
                .map(|n| FreshnessStats {
                    waits: n.waits.load(Ordering::Relaxed),
                    waits_missed: n.waits_missed.load(Ordering::Relaxed),
                    wait_time: Duration::from_nanos(n.wait_nanos.load(Ordering::Relaxed)),
                    wait_p99: Duration::from_micros(
                        n.wait_times
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .as_ref()
                            .filter(|h| !h.is_empty())
                            .map_or(0, |h| h.value_at_quantile(0.99)),
                    ),
                    checked_reads: n.checked_reads.load(Ordering::Relaxed),
                    own_write_reads: n.own_write_reads.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Counts one up, or one down without going below zero.
fn adjust(gauge: &AtomicU64, up: bool) {
    if up {
        gauge.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(nodes: usize) -> Stats {
        Stats::new(
            nodes,
            [metrics::Histogram::noop(), metrics::Histogram::noop()],
        )
    }

    fn answer(micros: u64, ends_transaction: bool) -> Answered {
        Answered {
            elapsed: Duration::from_micros(micros),
            bytes_received: 10,
            bytes_sent: 100,
            ends_transaction,
        }
    }

    fn node(snapshot: &StatsSnapshot, index: usize, route: Served) -> NodeStats {
        snapshot
            .per_node
            .iter()
            .find(|s| s.node_index == index && s.route == route)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for node {index} {route:?}: {snapshot:?}"))
    }

    #[test]
    fn p99_of_a_known_distribution() {
        let stats = stats(2);
        // 1 ms to 1000 ms, one each: p99 is 990 ms.
        for ms in 1..=1000u64 {
            stats.answered(1, Served::Read, answer(ms * 1000, true));
        }
        let s = node(&stats.snapshot(), 1, Served::Read);
        assert_eq!(s.queries, 1000);
        assert_eq!(s.transactions, 1000);
        assert_eq!((s.bytes_received, s.bytes_sent), (10_000, 100_000));
        assert_eq!(s.total_query_time, Duration::from_millis(500_500));
        assert_eq!(s.avg_query_time, Duration::from_micros(500_500));
        let p99 = s.p99_query_time.as_secs_f64();
        assert!(
            (0.990..=0.990 * 1.01).contains(&p99),
            "p99 of 1..=1000 ms should be 990 ms within 1%, got {p99} s"
        );
        assert_eq!(stats.snapshot().writes_served(1), 0);
        assert_eq!(stats.snapshot().reads_served(1), 1000);
    }

    #[test]
    fn p99_follows_a_slow_tail() {
        let stats = stats(1);
        // 98% at 1 ms, 2% at 200 ms: the 99th percentile is in the tail.
        for i in 0..1000 {
            let micros = if i % 50 == 0 || i % 50 == 1 {
                200_000
            } else {
                1000
            };
            stats.answered(0, Served::Write, answer(micros, i % 2 == 0));
        }
        let s = node(&stats.snapshot(), 0, Served::Write);
        assert_eq!(s.transactions, 500);
        let p99 = s.p99_query_time.as_secs_f64();
        assert!(
            (0.2..=0.202).contains(&p99),
            "p99 should be the 200 ms tail, got {p99} s"
        );
        let empty = node(&stats.snapshot(), 0, Served::Read);
        assert_eq!(
            (empty.queries, empty.avg_query_time, empty.p99_query_time),
            (0, Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn appended_nodes_get_counters_and_old_ones_keep_theirs() {
        let stats = stats(1);
        stats.record(Conn::Primary, 0);
        stats.acquire(0);
        stats.ensure_nodes(3);
        stats.record(Conn::Standby, 2);
        // A node nobody announced yet (a reload racing a session) still counts.
        stats.answered(4, Served::Read, answer(5, true));
        let s = stats.snapshot();
        assert_eq!(s.statements_per_node, vec![1, 0, 1, 0, 0]);
        assert_eq!(stats.outstanding(), vec![1, 0, 0, 0, 0]);
        assert_eq!(s.reads_served(4), 1);
        assert_eq!(s.per_node.len(), 10);
        stats.ensure_nodes(2);
        assert_eq!(stats.snapshot().statements_per_node.len(), 5);
    }

    #[test]
    fn decisions_and_clients_are_counted() {
        let stats = stats(1);
        stats.decided(Decision::Write);
        stats.decided(Decision::Write);
        stats.decided(Decision::LagExcluded);
        stats.set_connected(true);
        stats.set_connected(true);
        stats.set_connected(false);
        stats.set_active(false);
        let s = stats.snapshot();
        assert_eq!(s.decided(Decision::Write), 2);
        assert_eq!(s.decided(Decision::LagExcluded), 1);
        assert_eq!(s.decided(Decision::Read), 0);
        assert_eq!((s.clients, s.active_clients), (1, 0));
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "Decision::ALL out of declaration order");
        }
    }
}
