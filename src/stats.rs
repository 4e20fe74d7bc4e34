//! Counters sessions bump without locks: statements per node and per connection kind,
//! readers per node (for `least_outstanding`), and the round-robin turn.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::session::state::Conn;

/// Per-node counters.
#[derive(Debug, Default)]
struct NodeCounters {
    statements: AtomicU64,
    readers: AtomicUsize,
}

/// Routing counters for the whole proxy.
#[derive(Debug)]
pub struct Stats {
    nodes: Vec<NodeCounters>,
    to_primary: AtomicU64,
    to_standby: AtomicU64,
    turn: AtomicU64,
    pinned: AtomicU64,
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
}

impl Stats {
    /// Counters for `nodes` nodes.
    pub fn new(nodes: usize) -> Stats {
        Stats {
            nodes: (0..nodes).map(|_| NodeCounters::default()).collect(),
            to_primary: AtomicU64::new(0),
            to_standby: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
        }
    }

    /// Counts a request sent over `conn` to node `node`.
    pub fn record(&self, conn: Conn, node: usize) {
        match conn {
            Conn::Primary => &self.to_primary,
            Conn::Standby => &self.to_standby,
        }
        .fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.nodes.get(node) {
            n.statements.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client started reading from `node`.
    pub fn acquire(&self, node: usize) {
        if let Some(n) = self.nodes.get(node) {
            n.readers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client stopped reading from `node`.
    pub fn release(&self, node: usize) {
        if let Some(n) = self.nodes.get(node) {
            let _ = n
                .readers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// Clients reading from each node.
    pub fn outstanding(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| n.readers.load(Ordering::Relaxed))
            .collect()
    }

    /// A client started or stopped holding a connection for a pin.
    pub fn set_pinned(&self, pinned: bool) {
        if pinned {
            self.pinned.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self
                .pinned
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// The next round-robin turn.
    pub fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            statements_per_node: self
                .nodes
                .iter()
                .map(|n| n.statements.load(Ordering::Relaxed))
                .collect(),
            to_primary: self.to_primary.load(Ordering::Relaxed),
            to_standby: self.to_standby.load(Ordering::Relaxed),
            pinned_clients: self.pinned.load(Ordering::Relaxed),
        }
    }
}
