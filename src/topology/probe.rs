//! What one check of a node reports: its role and WAL positions, its WAL receiver when
//! it is a standby, and the primary's `pg_stat_replication` rows. The monitor fills
//! these in; [`super::advance`] reads them.

use std::time::{Duration, Instant};

use super::lsn::Lsn;

/// A standby as one row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replica {
    /// The standby's `application_name` (`walreceiver` unless its `primary_conninfo` or
    /// `cluster_name` names one).
    pub application_name: String,
    /// `streaming`, `catchup`, …
    pub state: Option<String>,
    /// Replay position the standby last reported.
    pub replay_lsn: Option<Lsn>,
    /// Time the primary measured for its WAL to be replayed there; NULL once idle.
    pub replay_lag: Option<Duration>,
    /// The standby's IP address as the primary sees it; None over a Unix socket.
    pub client_addr: Option<String>,
    /// The replication slot this walsender streams for, if any.
    pub slot_name: Option<String>,
}

/// A standby's WAL receiver, as its `pg_stat_wal_receiver` row says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receiver {
    /// `streaming`, `waiting`, `stopping`, …; None when the monitor role may not see it.
    pub status: Option<String>,
    /// Timeline of the last WAL received.
    pub timeline: Option<u32>,
    /// The upstream it streams from: `sender_host` (a host, an IP or a socket directory).
    pub sender_host: Option<String>,
    /// `sender_port`.
    pub sender_port: Option<u16>,
    /// `primary_slot_name`, if it streams through a slot.
    pub slot_name: Option<String>,
    /// The name it gives the upstream: `application_name` of its connection string, else
    /// `fallback_application_name` (`cluster_name`, else `walreceiver`).
    pub application_name: Option<String>,
}

impl Receiver {
    /// Whether WAL is arriving: status `streaming`, or a receiver whose status the
    /// monitor role may not see (it exists, which is all that is known).
    pub fn streaming(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "streaming")
    }
}

/// The answer of one successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Taken just before the query was sent: every position below was read at or after it.
    pub at: Instant,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_insert_lsn()` (primary only).
    pub current: Option<Lsn>,
    /// The timeline the primary writes on (primary only).
    pub timeline: Option<u32>,
    /// `pg_last_wal_receive_lsn()` (standby only).
    pub receive: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` (standby only).
    pub replay: Option<Lsn>,
    /// The standby's WAL receiver, when one is running (standby only).
    pub receiver: Option<Receiver>,
    /// `pg_stat_replication` (primary only).
    pub replicas: Vec<Replica>,
}
