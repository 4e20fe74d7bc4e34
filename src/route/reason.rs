//! Why a request went where it did, as counted in `routing_decisions_total{reason}`.

use crate::classify::Reason;

/// Where a request went and why, as counted in `routing_decisions_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// A read sent to a standby (or to the primary as one more read node with
    /// `primary_reads = "always"`).
    Read,
    /// A write: data or schema changes, administration.
    Write,
    /// `FOR UPDATE` / `FOR SHARE`.
    LockingRead,
    /// A function that must run on the primary.
    VolatileFunction,
    /// A function the catalog does not know (yet).
    UnknownFunction,
    /// A statement of a shape a standby refused (`25006`): sent again to the primary,
    /// and sent there from then on.
    StandbyRefused,
    /// Sequence functions.
    Sequence,
    /// Statements that leave state on the connection (LISTEN, WITH HOLD, advisory locks).
    SessionState,
    /// A transaction a standby refuses (read-write, serializable), or a read that starts
    /// one.
    TransactionMode,
    /// A hint comment asked for the primary.
    Hint,
    /// The rule of doubt: not understood, or an extended-protocol chain (Flush without
    /// Sync) whose next statements are not seen yet.
    Unclassified,
    /// A statement that runs the same anywhere (SET, SAVEPOINT, PREPARE, EXECUTE) went
    /// to the connection already in use.
    Any,
    /// The statement followed its transaction's node.
    InTransaction,
    /// The client is pinned to its primary connection.
    Pinned,
    /// A read went to the primary because no standby within the lag bounds was eligible.
    LagExcluded,
    /// A read went to the primary because no standby has replayed the client's write yet.
    ReadYourWrites,
    /// A read went to the primary because no standby is up.
    FallbackPrimary,
}

impl Decision {
    /// Every decision, in the order of the statistics' `decisions`.
    pub const ALL: [Decision; 17] = [
        Decision::Read,
        Decision::Write,
        Decision::LockingRead,
        Decision::VolatileFunction,
        Decision::UnknownFunction,
        Decision::StandbyRefused,
        Decision::Sequence,
        Decision::SessionState,
        Decision::TransactionMode,
        Decision::Hint,
        Decision::Unclassified,
        Decision::Any,
        Decision::InTransaction,
        Decision::Pinned,
        Decision::LagExcluded,
        Decision::ReadYourWrites,
        Decision::FallbackPrimary,
    ];

    /// The label value, e.g. `locking_read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Read => "read",
            Decision::Write => "write",
            Decision::LockingRead => "locking_read",
            Decision::VolatileFunction => "volatile_function",
            Decision::UnknownFunction => "unknown_function",
            Decision::StandbyRefused => "standby_refused",
            Decision::Sequence => "sequence",
            Decision::SessionState => "session_state",
            Decision::TransactionMode => "transaction_mode",
            Decision::Hint => "hint",
            Decision::Unclassified => "unclassified",
            Decision::Any => "any",
            Decision::InTransaction => "in_transaction",
            Decision::Pinned => "pinned",
            Decision::LagExcluded => "lag_excluded",
            Decision::ReadYourWrites => "read_your_writes",
            Decision::FallbackPrimary => "fallback_primary",
        }
    }
}

impl From<Reason> for Decision {
    fn from(reason: Reason) -> Decision {
        match reason {
            Reason::Read => Decision::Read,
            Reason::Write => Decision::Write,
            Reason::LockingRead => Decision::LockingRead,
            Reason::VolatileFunction => Decision::VolatileFunction,
            Reason::UnknownFunction => Decision::UnknownFunction,
            Reason::StandbyRefused => Decision::StandbyRefused,
            Reason::Sequence => Decision::Sequence,
            Reason::SessionState => Decision::SessionState,
            Reason::TransactionMode => Decision::TransactionMode,
            Reason::Hint => Decision::Hint,
            Reason::Unclassified => Decision::Unclassified,
        }
    }
}
