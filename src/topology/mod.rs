//! The cluster as pgsplit sees it: each node's role, health and replication lag, as an
//! immutable snapshot that sessions read without locks. Pure: the monitor
//! (the `monitor` module, a service above this one) checks the nodes and publishes.
//!
//! After each poll, [`advance`] — a pure function of the previous snapshot and what each
//! node answered ([`probe`]) — decides roles, lag ([`lag`]), bans ([`health`]) and which
//! nodes may serve reads; operator overrides ([`control`]) go on top.

pub mod control;
pub mod health;
pub mod lag;
pub mod lsn;
pub mod probe;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{MonitorConfig, Node};

pub use control::Controls;
pub use health::{Backoff, Ban};
pub use lag::{Lag, LagBounds, LagStatus, Stall, WalHistory};
pub use lsn::Lsn;
use probe::Probe;

/// What a node currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes (`pg_is_in_recovery()` is false).
    Primary,
    /// A hot standby in recovery.
    Standby,
    /// Not reachable, so not known.
    Unknown,
}

/// WAL positions a node reported at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnSample {
    /// Taken just before the check query was sent, so every position below was read at
    /// or after it.
    pub at: Instant,
    /// `pg_current_wal_insert_lsn()`: only on the primary.
    pub current: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`: only on a standby that has streamed WAL.
    pub receive: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`: only on a standby.
    pub replay: Option<Lsn>,
}

/// One node in a snapshot.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// Configured node.
    pub node: Node,
    /// Role at the last check.
    pub role: Role,
    /// Why the last check failed, if it did.
    pub error: Option<String>,
    /// WAL positions from the last check; `None` when it failed or was skipped for a ban.
    pub lsn: Option<LsnSample>,
    /// WAL bytes this standby has yet to replay; `None` for the primary or when unknown.
    pub lag_bytes: Option<u64>,
    /// How far this standby's replay is behind; `None` for the primary or when unknown.
    pub lag_time: Option<Duration>,
    /// Why this standby cannot catch up, when it cannot.
    pub stall: Option<Stall>,
    /// Where this standby's WAL comes from, as it said at the last check: a configured
    /// node's name, an address, or "not streaming"; None for a primary or when unknown.
    pub upstream: Option<String>,
    /// Where this node stands against the lag bounds (kept between checks for hysteresis).
    pub lag_status: LagStatus,
    /// May serve reads: reachable, and for a standby within the lag bounds.
    pub eligible: bool,
    /// Set while the node is banned after failed checks.
    pub ban: Option<Ban>,
    /// Banned by an operator (`BAN`): no new reads until `UNBAN`.
    pub admin_ban: bool,
    /// Paused by an operator (`PAUSE`): new work for it waits until `RESUME`.
    pub paused: bool,
    /// No longer in the configuration (a reload removed it): kept so node indexes stay
    /// stable, never checked or chosen.
    pub removed: bool,
}

impl NodeState {
    /// A node that has not been checked yet: not eligible, nothing known.
    pub fn unknown(node: Node) -> NodeState {
        NodeState {
            node,
            role: Role::Unknown,
            error: Some("not checked yet".into()),
            lsn: None,
            lag_bytes: None,
            lag_time: None,
            stall: None,
            upstream: None,
            lag_status: LagStatus::Within,
            eligible: false,
            ban: None,
            admin_ban: false,
            paused: false,
            removed: false,
        }
    }

    /// Whether the monitor's last check lets this node serve reads: it answered, is not
    /// banned, and as a standby is within the lag bounds.
    fn checked_eligible(&self) -> bool {
        self.role != Role::Unknown && self.ban.is_none() && !self.lag_status.excluded()
    }
}

/// An immutable picture of the cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every configured node, in configuration order.
    pub nodes: Vec<NodeState>,
    /// The primary's WAL positions over the last checks, to time standbys' lag.
    pub wal: WalHistory,
}

impl Topology {
    /// A picture of `nodes` with no history of WAL positions yet.
    pub fn new(nodes: Vec<NodeState>) -> Topology {
        Topology {
            nodes,
            wal: WalHistory::default(),
        }
    }

    /// A picture where nothing is known yet.
    pub fn unknown(nodes: &[Node]) -> Topology {
        Topology::new(nodes.iter().cloned().map(NodeState::unknown).collect())
    }

    /// The node that accepts writes, if exactly one does.
    pub fn primary(&self) -> Option<&NodeState> {
        self.primary_index().map(|i| &self.nodes[i])
    }

    /// Index of the node that accepts writes, if exactly one does.
    pub fn primary_index(&self) -> Option<usize> {
        let mut primaries = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Primary);
        match (primaries.next(), primaries.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// The primary's current WAL position and the instant it was sampled at (the
    /// position is at least what the primary had written by then).
    pub fn primary_lsn(&self) -> Option<(Lsn, Instant)> {
        let sample = self.primary()?.lsn?;
        Some((sample.current?, sample.at))
    }

    /// Whether node `node` has replayed everything the primary had written by `since`:
    /// true iff this snapshot's primary position was sampled at or after `since` and the
    /// node's replay position has reached it. False for the primary itself (it replays
    /// nothing) and whenever either position is unknown.
    pub fn replayed_since(&self, node: usize, since: Instant) -> bool {
        let Some((primary, at)) = self.primary_lsn() else {
            return false;
        };
        let replay = self.nodes.get(node).and_then(|n| n.lsn?.replay);
        at >= since && replay.is_some_and(|r| r >= primary)
    }
}

/// The snapshot shared by the monitor (writer) and every session (readers).
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// What one poll learned about one node.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The node was checked: its answer, or why the check failed.
    Checked(Result<Probe, String>),
    /// The check's query got no answer within `query_timeout` on an open connection: the
    /// node is frozen, or only busy.
    TimedOut(String),
    /// The node is banned and its ban has not run out, so it was left alone.
    Skipped,
}

/// The rules [`advance`] applies, from `[monitor]`.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Lag bounds with hysteresis.
    pub lag: LagBounds,
    /// Ban lengths.
    pub backoff: Backoff,
}

impl Rules {
    /// The rules a validated `[monitor]` section asks for.
    pub fn from_config(monitor: &MonitorConfig) -> Rules {
        Rules {
            lag: LagBounds::from_config(monitor),
            backoff: Backoff {
                first: monitor.lag_check_interval,
                max: monitor.max_ban,
            },
        }
    }
}

/// A change worth a log line; [`advance`] reports them, the monitor logs them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node's role changed.
    RoleChanged {
        /// Node name.
        node: String,
        /// Role before.
        from: Role,
        /// Role now.
        to: Role,
    },
    /// A check failed: the node is banned (again) for `length`.
    Banned {
        /// Node name.
        node: String,
        /// The failure.
        reason: String,
        /// Consecutive failures.
        failures: u32,
        /// Ban length.
        length: Duration,
    },
    /// A banned node answered again.
    Lifted {
        /// Node name.
        node: String,
        /// Consecutive failures before it answered.
        failures: u32,
    },
    /// A standby went over a lag bound, or cannot catch up, and serves no more reads.
    Lagging {
        /// Node name.
        node: String,
        /// What was measured.
        lag: Lag,
    },
    /// A lagging standby caught up and serves reads again.
    Readmitted {
        /// Node name.
        node: String,
        /// What was measured.
        lag: Lag,
    },
    /// More than one node is out of recovery: writes are refused.
    SplitBrain {
        /// Names of the nodes out of recovery.
        primaries: Vec<String>,
    },
    /// At most one node is out of recovery again.
    SplitBrainOver,
}

/// The next snapshot, from the previous one and this poll's outcome for every node (in
/// node order), at `now`. Pure: all timing comes in through `now` and the probes.
pub fn advance(
    previous: &Topology,
    outcomes: Vec<Outcome>,
    now: Instant,
    rules: &Rules,
) -> (Topology, Vec<Event>) {
    let roles: Vec<Role> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Checked(Ok(p)) if p.in_recovery => Role::Standby,
            Outcome::Checked(Ok(_)) => Role::Primary,
            _ => Role::Unknown,
        })
        .collect();
    let mut primaries =
        roles
            .iter()
            .zip(&outcomes)
            .enumerate()
            .filter_map(|(i, (role, outcome))| match (role, outcome) {
                (Role::Primary, Outcome::Checked(Ok(p))) => Some((i, p)),
                _ => None,
            });
    // Lag is measured against the primary only when there is exactly one.
    let primary = match (primaries.next(), primaries.next()) {
        (Some(p), None) => Some(p),
        _ => None,
    };
    let window = rules.lag.history_window();
    let mut wal = previous.wal.clone();
    if let Some((
        i,
        Probe {
            at,
            current: Some(lsn),
            timeline,
            ..
        },
    )) = primary
    {
        wal.record(i, *timeline, *at, *lsn, window);
    }
    let primary_view = primary.and_then(|(_, p)| {
        Some(lag::PrimaryView {
            lsn: p.current?,
            timeline: p.timeline,
            history: &wal,
        })
    });
    let primary_node = primary
        .and_then(|(i, _)| previous.nodes.get(i))
        .map(|n| &n.node);
    let configured: Vec<&Node> = previous
        .nodes
        .iter()
        .filter(|n| !n.removed)
        .map(|n| &n.node)
        .collect();

    let mut events = Vec::new();
    let mut nodes = Vec::with_capacity(previous.nodes.len());
    for ((before, outcome), role) in previous.nodes.iter().zip(&outcomes).zip(&roles) {
        let name = &before.node.name;
        let state = match outcome {
            Outcome::Skipped => NodeState {
                role: Role::Unknown,
                lsn: None,
                lag_bytes: None,
                lag_time: None,
                stall: None,
                upstream: None,
                eligible: false,
                ..before.clone()
            },
            Outcome::Checked(Err(reason)) | Outcome::TimedOut(reason) => {
                // A primary that is only slow to answer one check keeps its role, so a
                // busy moment does not refuse writes; a second failure in a row (or any
                // other failure) takes it away, and new writes then fail fast.
                let slow_primary = matches!(outcome, Outcome::TimedOut(_))
                    && before.role == Role::Primary
                    && before.ban.is_none();
                let ban =
                    health::after_failure(before.ban.as_ref(), reason.clone(), now, &rules.backoff);
                events.push(Event::Banned {
                    node: name.clone(),
                    reason: reason.clone(),
                    failures: ban.failures,
                    length: ban.until.saturating_duration_since(now),
                });
                NodeState {
                    role: if slow_primary {
                        Role::Primary
                    } else {
                        Role::Unknown
                    },
                    error: Some(reason.clone()),
                    lsn: None,
                    lag_bytes: None,
                    lag_time: None,
                    stall: None,
                    upstream: None,
                    // Kept: a lagging standby that blips must still prove it caught up.
                    lag_status: before.lag_status,
                    eligible: false,
                    ban: Some(ban),
                    ..before.clone()
                }
            }
            Outcome::Checked(Ok(probe)) => {
                if let Some(ban) = &before.ban {
                    events.push(Event::Lifted {
                        node: name.clone(),
                        failures: ban.failures,
                    });
                }
                let (lag, lag_status, upstream) = if *role == Role::Standby {
                    let receiver = probe.receiver.as_ref();
                    let source = receiver.and_then(|r| upstream::upstream_of(r, &configured));
                    let from_primary = source.is_some() && source == primary_node;
                    // A row ahead of the standby's own replay is not its own.
                    let row = primary
                        .and_then(|(_, p)| {
                            upstream::row_for(
                                &before.node,
                                receiver,
                                from_primary,
                                &p.replicas,
                                &configured,
                            )
                        })
                        .filter(|r| {
                            r.replay_lsn.is_none_or(|theirs| {
                                probe.replay.is_some_and(|mine| theirs <= mine)
                            })
                        });
                    // The standby's own word: the primary keeps a broken link's row until
                    // wal_sender_timeout.
                    let streaming = receiver.is_some_and(|r| r.streaming());
                    let inputs = lag::LagInputs {
                        primary: primary_view,
                        replay_lsn: probe.replay,
                        at: probe.at,
                        replay_lag: row.and_then(|r| r.replay_lag),
                        streaming,
                        timeline: receiver.and_then(|r| r.timeline),
                    };
                    let lag = lag::measure(&inputs);
                    let status = lag::next_status(before.lag_status, &lag, &rules.lag);
                    match (before.lag_status.excluded(), status.excluded()) {
                        (false, true) => events.push(Event::Lagging {
                            node: name.clone(),
                            lag,
                        }),
                        (true, false) => events.push(Event::Readmitted {
                            node: name.clone(),
                            lag,
                        }),
                        _ => {}
                    }
                    let upstream = match (receiver, source) {
                        (Some(r), _) if !r.streaming() => Some(match &r.status {
                            Some(status) => format!("not streaming ({status})"),
                            None => "not streaming".to_owned(),
                        }),
                        (Some(_), Some(node)) => Some(node.name.clone()),
                        (Some(r), None) => match (&r.sender_host, r.sender_port) {
                            (Some(host), Some(port)) => Some(format!("{host}:{port}")),
                            _ => None,
                        },
                        (None, _) => Some("not streaming".to_owned()),
                    };
                    (lag, status, upstream)
                } else {
                    (Lag::default(), LagStatus::Within, None)
                };
                NodeState {
                    role: *role,
                    error: None,
                    lsn: Some(LsnSample {
                        at: probe.at,
                        current: probe.current,
                        receive: probe.receive,
                        replay: probe.replay,
                    }),
                    lag_bytes: lag.bytes,
                    lag_time: lag.time,
                    stall: lag.stall,
                    upstream,
                    lag_status,
                    eligible: !lag_status.excluded(),
                    ban: None,
                    ..before.clone()
                }
            }
        };
        if before.role != state.role {
            events.push(Event::RoleChanged {
                node: name.clone(),
                from: before.role,
                to: state.role,
            });
        }
        nodes.push(state);
    }

    let primaries_of = |nodes: &[NodeState]| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(|n| n.node.name.clone())
            .collect()
    };
    let (was, now_primaries) = (primaries_of(&previous.nodes), primaries_of(&nodes));
    if now_primaries.len() > 1 && was != now_primaries {
        events.push(Event::SplitBrain {
            primaries: now_primaries,
        });
    } else if was.len() > 1 && now_primaries.len() <= 1 {
        events.push(Event::SplitBrainOver);
    }
    (Topology { nodes, wal }, events)
}

#[cfg(test)]
mod tests;
